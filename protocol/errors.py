"""Error codes, close codes and the base of coframe's one error tree.

PROTOCOL.md section 11 ("Error codes" and "Close codes") lists every member
of :class:`ErrorCode` and :class:`CloseCode`; tests/test_error_codes.py keeps
the two in step.

Every error a user can see is a :class:`CoframeError`: a stable ``code``, a
``message`` that says what was wrong and what to do, JSON-friendly
``details``, and the HTTP ``status`` it maps to. The WebSocket sends it as an
``error`` message, the HTTP API as ``{"error": {...}}`` with that status,
and the CLI prints the message and exits with code 2. Subclasses live where
the errors are raised (server/errors.py lists them).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["ErrorCode", "CloseCode", "CoframeError", "ProtocolError", "PROTOCOL_VIOLATIONS"]


class ErrorCode(enum.StrEnum):
    """Stable error codes (PROTOCOL.md section 11).

    A ``StrEnum``: members compare equal to their strings and are sent as
    plain strings in msgpack and JSON. ``ErrorCode.ALL`` is the set of values.
    """

    # Envelope and message shape: the message is ignored, the socket stays up.
    BAD_FRAME = "bad_frame"  # undecodable bytes or text
    UNKNOWN_TYPE = "unknown_type"  # "type" names no message we know
    BAD_FIELD = "bad_field"  # a field is missing or has the wrong type
    TOO_LARGE = "too_large"  # message, op or upload over a configured limit
    RATE_LIMITED = "rate_limited"  # too many op messages per second, or upload bytes per hour (429)
    TOO_MANY = "too_many"  # over a per-connection count: open views, queries in flight
    OVERLOADED = "overloaded"  # over a node-wide cap: connections, unhelloed sockets, bytes queued
    # Lifecycle violations: the socket is closed with CloseCode.POLICY.
    NOT_JOINED = "not_joined"
    ALREADY_JOINED = "already_joined"
    BAD_VERSION = "bad_version"
    # Op rejections: the batch is not applied, the socket stays up.
    BAD_OP = "bad_op"
    NO_SUCH_ROW = "no_such_row"
    NO_SUCH_COLUMN = "no_such_column"
    BAD_VALUE = "bad_value"
    BAD_DTYPE = "bad_dtype"
    BAD_EXPR = "bad_expr"
    TOO_EXPENSIVE = "too_expensive"  # an expression over its output-size, memory or time limit
    COLUMN_EXISTS = "column_exists"
    RESERVED_NAME = "reserved_name"
    CAST_FAILED = "cast_failed"
    CONFLICT = "conflict"  # also: a branch moved under a compare-and-set (HTTP 409)
    READ_ONLY = "read_only"
    NOTHING_TO_UNDO = "nothing_to_undo"
    NOTHING_TO_REDO = "nothing_to_redo"
    DUPLICATE_EXPIRED = "duplicate_expired"
    NOT_FOUND = "not_found"  # a dataset, version, branch or tag that does not exist
    BAD_VIEW = "bad_view"  # a view config Perspective rejects (aggregate, filter operator, expression)
    VIEW_EXISTS = "view_exists"  # subscribe with a view name already open on this connection
    NO_SUCH_VIEW = "no_such_view"  # unsubscribe of a view that is not open
    INTERNAL = "internal"
    STORAGE_CORRUPT = "storage_corrupt"  # a chunk is missing or fails its content hash
    # HTTP API and CLI.
    BAD_REQUEST = "bad_request"  # a missing or malformed parameter or JSON body
    NO_ROUTE = "no_route"  # HTTP: no such path under /api
    METHOD_NOT_ALLOWED = "method_not_allowed"  # HTTP: the path exists, not with this method
    BAD_NAME = "bad_name"  # a dataset, branch or tag name that breaks the naming rule
    BAD_FORMAT = "bad_format"  # an unknown file format, or one that cannot be told
    UNREADABLE = "unreadable"  # a file that cannot be read as its format
    ALREADY_EXISTS = "already_exists"  # a branch or tag name in use
    DATASET_EXISTS = "dataset_exists"  # a dataset name in use
    UNAUTHENTICATED = "unauthenticated"  # no token, or a bad, expired or revoked one (HTTP 401)
    FORBIDDEN = "forbidden"  # the user's role does not allow this (HTTP 403)

    ALL: ClassVar[frozenset[str]]


ErrorCode.ALL = frozenset(code.value for code in ErrorCode)

# Codes after which the server closes the connection.
PROTOCOL_VIOLATIONS = frozenset({ErrorCode.NOT_JOINED, ErrorCode.ALREADY_JOINED, ErrorCode.BAD_VERSION})


class CloseCode(enum.IntEnum):
    """WebSocket close codes coframe uses (PROTOCOL.md section 11 "Close codes")."""

    NORMAL = 1000  # the client leaves
    GOING_AWAY = 1001  # server shutting down, or the room unloading
    UNSUPPORTED_DATA = 1003  # a text frame on the dashboard socket, which takes binary only
    POLICY = 1008  # lifecycle violation (op before hello, second hello, ...)
    TOO_BIG = 1009  # frame over the transport limit
    INTERNAL = 1011
    RELOADING = 1012  # the room reloaded (revert) or its Perspective table was rebuilt: reconnect
    TRY_AGAIN_LATER = 1013  # the server is at a node-wide cap (connections, bytes queued)
    REPLACED = 4001  # a newer connection with the same client id took over
    NO_SUCH_DATASET = 4004  # also: a dataset this user may not read (it does not exist for them)
    UNAUTHENTICATED = 4401  # no token, or a bad, expired or revoked one: sign in again
    FORBIDDEN = 4403  # the user's grant on this dataset was revoked, or a cross-site upgrade
    SLOW_CONSUMER = 4008  # fell behind and stayed behind
    STORAGE_CORRUPT = 4009  # the room's storage is corrupt (a chunk missing or failing its hash)
    TOO_EXPENSIVE = 4010  # a dashboard's request ran over the views budget (its view was closed)


class CoframeError(Exception):
    """The base of every error a user can see.

    ``code`` is an :class:`ErrorCode`, ``message`` says what was wrong and
    what to do, ``details`` is a JSON-friendly dict, and ``status`` is the
    HTTP status the error maps to. Subclasses set ``code`` and ``status`` as
    class defaults; an instance may override both.
    """

    code: str = ErrorCode.INTERNAL
    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details: dict[str, Any] = dict(details or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.code)!r}, {self.message!r})"


class ProtocolError(CoframeError):
    """A message could not be decoded or is invalid.

    ``code`` is one of :class:`ErrorCode`; ``field`` names the offending field
    when there is one, so the message can say exactly what to fix.
    """

    code = ErrorCode.BAD_FIELD
    status = 400

    def __init__(self, code: str, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message, code=code, details=details)
        self.field = field
        self.request_id: int | str | None = None  # the frame's "id", when it had one
        if field is not None:
            self.details.setdefault("field", field)
