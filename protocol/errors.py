"""Error codes and close codes shared by server and client.

PROTOCOL.md section "Errors" lists every code; keep the two in step.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ErrorCode", "CloseCode", "ProtocolError", "PROTOCOL_VIOLATIONS"]


class ErrorCode:
    """Stable error codes carried by ``error`` messages (PROTOCOL.md "Errors")."""

    # Envelope and message shape: the message is ignored, the socket stays up.
    BAD_FRAME = "bad_frame"  # undecodable bytes or text
    UNKNOWN_TYPE = "unknown_type"  # "type" names no message we know
    BAD_FIELD = "bad_field"  # a field is missing or has the wrong type
    TOO_LARGE = "too_large"  # message or op over a configured limit
    RATE_LIMITED = "rate_limited"  # too many op messages per second
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
    COLUMN_EXISTS = "column_exists"
    RESERVED_NAME = "reserved_name"
    CAST_FAILED = "cast_failed"
    CONFLICT = "conflict"
    READ_ONLY = "read_only"
    NOTHING_TO_UNDO = "nothing_to_undo"
    NOTHING_TO_REDO = "nothing_to_redo"
    DUPLICATE_EXPIRED = "duplicate_expired"
    NOT_FOUND = "not_found"  # a version, branch or tag that does not exist
    BAD_VIEW = "bad_view"  # a view config Perspective rejects (aggregate, filter operator, expression)
    VIEW_EXISTS = "view_exists"  # subscribe with a view name already open on this connection
    NO_SUCH_VIEW = "no_such_view"  # unsubscribe of a view that is not open
    INTERNAL = "internal"

    ALL: frozenset[str] = frozenset()


ErrorCode.ALL = frozenset(v for k, v in vars(ErrorCode).items() if k.isupper() and isinstance(v, str))

# Codes after which the server closes the connection.
PROTOCOL_VIOLATIONS = frozenset({ErrorCode.NOT_JOINED, ErrorCode.ALREADY_JOINED, ErrorCode.BAD_VERSION})


class CloseCode:
    """WebSocket close codes the server uses (PROTOCOL.md "Close codes")."""

    GOING_AWAY = 1001  # server shutting down
    POLICY = 1008  # lifecycle violation (op before hello, second hello, ...)
    TOO_BIG = 1009  # frame over the transport limit
    INTERNAL = 1011
    RELOADING = 1012  # the room reloaded (revert) or its Perspective table was rebuilt: reconnect
    REPLACED = 4001  # a newer connection of the same client replaced this one
    NO_SUCH_DATASET = 4004
    SLOW_CONSUMER = 4008  # fell behind and stayed behind


class ProtocolError(Exception):
    """A message could not be decoded or is invalid.

    ``code`` is one of :class:`ErrorCode`; ``field`` names the offending field
    when there is one, so the message can say exactly what to fix.
    """

    def __init__(self, code: str, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.details: dict[str, Any] = dict(details)
        self.request_id: int | str | None = None  # the frame's "id", when it had one
        if field is not None:
            self.details.setdefault("field", field)

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r})"
