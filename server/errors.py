"""coframe's one error tree, server side (PROTOCOL.md section 11).

Every error a user can see is a :class:`protocol.CoframeError`: a stable
``code`` (an :class:`protocol.ErrorCode`), a ``message`` that says what to do,
``details`` and the HTTP ``status`` it maps to::

    CoframeError                      internal, 500
    ├── ProtocolError (protocol)      the frame's code, 400
    ├── OpError (server.ops.state)    the op's code, 400
    ├── ViewConfigError (server.perspective.config)  bad_view / no_such_column, 400
    ├── WireError (server.perspective.readonly)      bad_frame (dashboard socket closed 1008)
    ├── EditError (server.perspective.edits)         a dashboard grid edit refused before the room, 400
    ├── ReadError (server.io)         bad_format / unreadable 400, too_large 413
    ├── PolicyBroken (server.rooms.policy)  forbidden, 403: a grant's row predicate no longer compiles
    ├── UploadLimited (server.auth.limits)  rate_limited, 429 with Retry-After: a user's upload budget
    ├── StorageError (server.storage.types)          internal, 500
    │   ├── NotFound                  not_found, 404
    │   ├── AlreadyExists             already_exists, 409
    │   │   └── DatasetExists         dataset_exists, 409
    │   ├── RefMoved                  conflict, 409
    │   └── StorageCorrupt            storage_corrupt, 500 (its message, not "internal")
    ├── ApiError (here; server.api)   bad_request and the other HTTP codes, status given
    └── CliError (here; server.cli_data)  bad_request, exit code 2

The WebSocket sends these as ``error`` messages, the HTTP API maps them with
the Starlette :data:`exception_handlers` here, and the CLI with
:func:`server.cli.fail`. No code reads an error's message to decide what to
do: branch on ``code`` and ``details``.

This module is for the top layers (HTTP, CLI) and tests. Rooms, ops and
storage import their errors from where they are defined, so that importing
an error does not pull in the layers above them.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, Response
from starlette.types import ExceptionHandler

from protocol import CloseCode, CoframeError, ErrorCode, ProtocolError
from protocol.codec import encode_map

from .auth.limits import UploadLimited
from .io import ReadError
from .ops.state import OpError
from .perspective.config import ViewConfigError
from .perspective.edits import EditError
from .perspective.readonly import WireError
from .rooms.policy import PolicyBroken
from .storage.types import AlreadyExists, DatasetExists, NotFound, RefMoved, StorageCorrupt, StorageError

__all__ = [
    "CoframeError",
    "ErrorCode",
    "CloseCode",
    "ProtocolError",
    "OpError",
    "ViewConfigError",
    "WireError",
    "EditError",
    "ReadError",
    "PolicyBroken",
    "UploadLimited",
    "StorageError",
    "NotFound",
    "AlreadyExists",
    "DatasetExists",
    "RefMoved",
    "StorageCorrupt",
    "ApiError",
    "CliError",
    "error_response",
    "exception_handlers",
]

log = logging.getLogger("coframe.api")

_INTERNAL_MESSAGE = "internal error (see the server log); retry or report it"


class ApiError(CoframeError):
    """An HTTP error reply: ``status``, a stable ``code`` and a message that says what to do.

    The constructor takes the status first, as the HTTP handlers think of it.
    """

    code = ErrorCode.BAD_REQUEST
    status = 400

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code, status=status, details=details)


class CliError(CoframeError):
    """A user error on the command line: printed as one line, exit code 2."""

    code = ErrorCode.BAD_REQUEST
    status = 400


# ---------------------------------------------------------------- HTTP: errors to replies


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """``{"error": {"code", "message"[, "details"]}}`` with ``status``.

    Encoded like a JSON text frame, so details holding NaN or numpy values
    still encode.
    """
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return Response(
        encode_map({"error": body}, binary=False),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _coframe_error(conn: HTTPConnection, exc: Exception) -> Response:
    """Any :class:`CoframeError`: its status, code, message and details.

    A status of 500 or more is a server fault: logged with its traceback, and
    the reply says only ``internal``. A 429 whose details hold ``retry_after`` (seconds)
    carries it as ``Retry-After``. A WebSocket route's error is not ours to
    answer: it is raised again for the server to log, as before.
    """
    if conn.scope["type"] != "http" or not isinstance(exc, CoframeError):
        raise exc
    if isinstance(exc, StorageCorrupt):  # the operator's to repair: say what, one log line
        log.error("%s %s: %s", conn.scope.get("method"), conn.url.path, exc.message)
        return error_response(exc.status, exc.code, exc.message, exc.details)
    if exc.status >= 500:
        log.error("%s %s failed", conn.scope.get("method"), conn.url.path, exc_info=exc)
        return error_response(500, ErrorCode.INTERNAL, _INTERNAL_MESSAGE)
    retry = exc.details.get("retry_after") if exc.status == 429 else None
    headers = {"Retry-After": str(int(retry))} if isinstance(retry, (int, float)) else None
    return error_response(exc.status, exc.code, exc.message, exc.details, headers)


async def _unexpected(conn: HTTPConnection, exc: Exception) -> Response:
    """Any other exception: a bug. The reply says ``internal``; Starlette then raises
    the exception again and the server logs its traceback."""
    return error_response(500, ErrorCode.INTERNAL, _INTERNAL_MESSAGE)


async def _http_exception(conn: HTTPConnection, exc: Exception) -> Response:
    """Starlette's own 404 and 405: JSON errors with codes under ``/api``, plain text elsewhere."""
    assert isinstance(exc, HTTPException)
    path, method = conn.url.path, conn.scope.get("method", "GET")
    if not path.startswith("/api/"):
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{method} is not allowed on {path}; use {allowed or 'another method'}"
        return error_response(405, ErrorCode.METHOD_NOT_ALLOWED, message, headers=exc.headers)
    if exc.status_code == 404:
        message = f"no route {method} {path}; the HTTP API is listed in the README"
        return error_response(404, ErrorCode.NO_ROUTE, message)
    return error_response(exc.status_code, ErrorCode.BAD_REQUEST, str(exc.detail), headers=exc.headers)


exception_handlers: dict[Any, ExceptionHandler] = {
    HTTPException: _http_exception,
    CoframeError: _coframe_error,
    Exception: _unexpected,
}
"""Starlette exception handlers: every error of the HTTP API becomes a JSON reply."""
