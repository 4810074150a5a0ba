"""coframe's one error tree, server side (PROTOCOL.md section 11).

Every error a user can see is a :class:`protocol.CoframeError`: a stable
``code`` (an :class:`protocol.ErrorCode`), a ``message`` that says what to do,
``details`` and the HTTP ``status`` it maps to::

    CoframeError                      internal, 500
    ├── ProtocolError (protocol)      the frame's code, 400
    ├── OpError (server.ops.state)    the op's code, 400
    ├── ViewConfigError (server.perspective.config)  bad_view / no_such_column, 400
    ├── WireError (server.perspective.readonly)      bad_frame (dashboard socket closed 1008)
    ├── ReadError (server.io)         bad_format / unreadable 400, too_large 413
    ├── StorageError (server.storage.types)          internal, 500
    │   ├── NotFound                  not_found, 404
    │   ├── AlreadyExists             already_exists, 409
    │   │   └── DatasetExists         dataset_exists, 409
    │   └── RefMoved                  conflict, 409
    ├── ApiError (here; server.api)   bad_request and the other HTTP codes, status given
    └── CliError (here; server.cli_data)  bad_request, exit code 2

The WebSocket sends these as ``error`` messages, the HTTP API maps them with
the Starlette exception handlers in :mod:`server.api`, and the CLI with
:func:`server.cli.fail`. No code reads an error's message to decide what to
do: branch on ``code`` and ``details``.

This module is for the top layers (HTTP, CLI) and tests. Rooms, ops and
storage import their errors from where they are defined, so that importing
an error does not pull in the layers above them.
"""

from __future__ import annotations

from protocol import CloseCode, CoframeError, ErrorCode, ProtocolError

from .io import ReadError
from .ops.state import OpError
from .perspective.config import ViewConfigError
from .perspective.readonly import WireError
from .storage.types import AlreadyExists, DatasetExists, NotFound, RefMoved, StorageError

__all__ = [
    "CoframeError",
    "ErrorCode",
    "CloseCode",
    "ProtocolError",
    "OpError",
    "ViewConfigError",
    "WireError",
    "ReadError",
    "StorageError",
    "NotFound",
    "AlreadyExists",
    "DatasetExists",
    "RefMoved",
    "ApiError",
    "CliError",
]


class ApiError(CoframeError):
    """An HTTP error reply: ``status``, a stable ``code`` and a message that says what to do.

    The constructor takes the status first, as the HTTP handlers think of it.
    """

    code = ErrorCode.BAD_REQUEST
    status = 400

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code, status=status)


class CliError(CoframeError):
    """A user error on the command line: printed as one line, exit code 2."""

    code = ErrorCode.BAD_REQUEST
    status = 400
