"""A read-only gate for Perspective's WebSocket protocol, sans-I/O.

A browser dashboard speaks Perspective's own protocol: each binary frame is
one protobuf ``perspective.proto.Request``::

    message Request {
        uint32 msg_id = 1;
        string entity_id = 2;       // the table or view the request is about
        oneof client_req { GetHostedTablesReq get_hosted_tables_req = 4; ... }
    }

:func:`check_request` reads just that envelope with a tiny wire-format
reader (varints and length-delimited fields, no protobuf dependency) and
finds which ``client_req`` field the frame carries. Only the field numbers
in :data:`ALLOWED` (reads, views, subscriptions) may reach the Perspective
server; anything else (``table.update``, ``remove``, ``replace``/``clear``,
``delete``, making a table), and any field number we do not know, is
refused with a ``ServerError`` response built by :func:`error_response`, so
the caller's promise rejects with our message.

:class:`Gate` adds, per connection, that table requests name the room's
table and view requests name a view this connection made, so a dashboard
cannot reach another client's views, and that the expressions of a
``table_make_view_req`` or ``table_validate_expr_req`` pass
:func:`.config.check_expression` (not too long to parse), as a ``subscribe``'s do,
and the signed-in user's ``max_expression_chars`` (docs/security.md "Per-user limits").
On a connection opened for editing (``edit=1``) it lets one more request
through, differently: a ``table_update_req`` on the room's table is not
forwarded either, but becomes coframe ops (:mod:`.edits`).

Field numbers are those of perspective-python / @perspective-dev 5.5.1
(``rust/perspective-client/perspective.proto``), checked against the
requests the 5.5.1 clients actually send (tests/test_perspective_ws.py,
tests/test_browser.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import CoframeError, ErrorCode

from .config import ViewConfigError, check_expression

__all__ = [
    "ALLOWED",
    "DENIED",
    "READ_ONLY_MESSAGE",
    "Decision",
    "Gate",
    "WireError",
    "check_request",
    "error_response",
]

# Request.client_req field number → name, for the requests a dashboard may send.
SERVER_REQUESTS = {
    3: "get_features_req",
    4: "get_hosted_tables_req",
    17: "server_system_info_req",
    37: "remove_hosted_tables_update_req",
}
TABLE_REQUESTS = {  # entity_id is the table's name
    5: "table_make_port_req",  # the viewer asks for one on load; a port only tags updates, which are refused
    6: "table_make_view_req",
    7: "table_schema_req",
    8: "table_size_req",
    9: "table_validate_expr_req",
    29: "table_on_delete_req",
    30: "table_remove_delete_req",
}
VIEW_REQUESTS = {  # entity_id is the view's id, chosen by the client in table_make_view_req
    10: "view_column_paths_req",
    11: "view_delete_req",
    12: "view_dimensions_req",
    13: "view_expression_schema_req",
    14: "view_get_config_req",
    15: "view_schema_req",
    16: "view_to_arrow_req",
    18: "view_collapse_req",
    19: "view_expand_req",
    20: "view_get_min_max_req",
    21: "view_on_update_req",
    22: "view_remove_on_update_req",
    23: "view_set_depth_req",
    24: "view_to_columns_string_req",
    25: "view_to_csv_req",
    26: "view_to_rows_string_req",
    34: "view_on_delete_req",
    35: "view_remove_delete_req",
    36: "view_to_ndjson_string_req",
}
ALLOWED: dict[int, str] = {**SERVER_REQUESTS, **TABLE_REQUESTS, **VIEW_REQUESTS}

# The requests that change data or the set of tables; named in the refusal.
DENIED: dict[int, str] = {
    27: "make_table_req",
    28: "table_delete_req",
    31: "table_remove_req",
    32: "table_replace_req",
    33: "table_update_req",
}

MAKE_VIEW, VALIDATE_EXPR, VIEW_DELETE, TABLE_UPDATE = 6, 9, 11, 33

READ_ONLY_MESSAGE = (
    "this dashboard connection is read-only: '{what}' is refused. "
    "Edit the data through the coframe protocol (the /ws/{{dataset}} WebSocket or the Python client)"
)

_MSG_ID, _ENTITY_ID, _SERVER_ERROR = 1, 2, 50
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(CoframeError, ValueError):
    """The bytes are not a well-formed protobuf message (``bad_frame``; the socket is closed 1008)."""

    code = ErrorCode.BAD_FRAME
    status = 400


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request frame.

    ``allowed`` is False for a refused request; ``field`` is its
    ``client_req`` field number (0 if it had none), ``name`` its proto name,
    ``body`` the request message's own bytes, and ``reason`` (refusals only)
    what the caller is told. ``edit`` is True for a ``table_update_req`` on
    a connection opened for editing (:attr:`Gate.editable`): it is not
    forwarded to Perspective either (``allowed`` is False) but becomes
    coframe ops (:mod:`.edits`).
    """

    allowed: bool
    msg_id: int
    entity_id: str
    field: int
    name: str
    body: bytes = b""
    reason: str = ""
    edit: bool = False


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``buf[i]``; return (value, next index)."""
    shift = value = 0
    while True:
        if i >= len(buf):
            raise WireError("truncated varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift >= 64:
            raise WireError("varint longer than 10 bytes")


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Top-level (field number, wire type, value) triples; values of nested messages stay raw bytes."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireError("field number 0")
        value: int | bytes
        if wire == _VARINT:
            value, i = _varint(buf, i)
        elif wire == _LEN:
            size, i = _varint(buf, i)
            if i + size > len(buf):
                raise WireError(f"field {field} runs past the end of the message")
            value, i = buf[i : i + size], i + size
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if i + size > len(buf):
                raise WireError(f"field {field} runs past the end of the message")
            value, i = buf[i : i + size], i + size
        else:
            raise WireError(f"unsupported wire type {wire} (field {field})")
        out.append((field, wire, value))
    return out


def _string(buf: bytes, number: int) -> str:
    """The last string field ``number`` of a message ('' when absent)."""
    out = ""
    for f, wire, value in _fields(buf):
        if f == number and wire == _LEN:
            out = bytes(value).decode("utf-8", errors="replace")  # type: ignore[arg-type]
    return out


def check_request(frame: bytes) -> Decision:
    """Decide whether a ``Request`` frame is read-only.

    A frame with no ``client_req`` field, more than one, or one not in
    :data:`ALLOWED` is refused.

    Raises:
        WireError: the frame is not a protobuf message (the caller closes the socket).
    """
    msg_id, entity_id = 0, ""
    reqs: list[tuple[int, bytes]] = []
    for f, wire, value in _fields(frame):
        if f == _MSG_ID and wire == _VARINT:
            msg_id = int(value)  # type: ignore[arg-type]
        elif f == _ENTITY_ID and wire == _LEN:
            entity_id = bytes(value).decode("utf-8", errors="replace")  # type: ignore[arg-type]
        else:
            reqs.append((f, value if isinstance(value, bytes) else b""))
    if len(reqs) != 1:
        what = "no request" if not reqs else f"several requests (fields {[f for f, _ in reqs]})"
        return Decision(False, msg_id, entity_id, 0, what, reason=READ_ONLY_MESSAGE.format(what=what))
    f, body = reqs[0]
    if f in ALLOWED:
        return Decision(True, msg_id, entity_id, f, ALLOWED[f], body)
    name = DENIED.get(f, f"unknown request field {f}")
    return Decision(False, msg_id, entity_id, f, name, body, READ_ONLY_MESSAGE.format(what=name))


@dataclass(slots=True)
class Gate:
    """One dashboard connection's gate: read-only requests, on this table and this connection's views.

    Call :meth:`check` on each frame; forward it only if the decision is
    allowed; submit it as an edit if the decision is an ``edit`` (only when
    ``editable``: the connection was opened with ``edit=1``); else answer
    with :func:`error_response`.
    """

    table: str  # the room's table name, e.g. "sales/main"
    views: set[str] = field(default_factory=set)  # view ids this connection made
    editable: bool = False  # table_update_req on this table becomes an edit instead of a refusal
    # The signed-in user's cap on one expression (user_max_expression_chars); None under --auth none.
    max_expression_chars: int | None = None

    def check(self, frame: bytes) -> Decision:
        """The decision for ``frame`` (see :func:`check_request`), scoped to this connection.

        Raises:
            WireError: the frame (or a make-view body) is not protobuf.
        """
        d = check_request(frame)
        if not d.allowed:
            if d.field == TABLE_UPDATE and self.editable:
                if d.entity_id != self.table:
                    return _refuse(d, f"no table '{d.entity_id}' here; this dashboard edits '{self.table}'")
                return Decision(False, d.msg_id, d.entity_id, d.field, d.name, d.body, edit=True)
            return d
        if d.field in TABLE_REQUESTS and d.entity_id != self.table:
            return _refuse(d, f"no table '{d.entity_id}' here; this dashboard shows '{self.table}'")
        if d.field in VIEW_REQUESTS and d.entity_id not in self.views:
            return _refuse(d, f"no view '{d.entity_id}' was opened on this connection")
        if d.field in (MAKE_VIEW, VALIDATE_EXPR):
            try:
                for name, text in _expressions(d.field, d.body):
                    check_expression(name, text)
                    cap = self.max_expression_chars
                    if cap is not None and len(text) > cap:
                        return _refuse(
                            d,
                            f"too_large: view expression '{name}' is {len(text):,} characters long, over"
                            f" your per-user limit of {cap:,} (user_max_expression_chars); shorten it",
                        )
            except ViewConfigError as e:
                return _refuse(d, e.message)
        if d.field == MAKE_VIEW:
            view_id = _string(d.body, 1)  # TableMakeViewReq.view_id
            if not view_id:
                return _refuse(d, "table_make_view_req without a view_id")
            self.views.add(view_id)
        elif d.field == VIEW_DELETE:
            self.views.discard(d.entity_id)
        return d


def _entries(buf: bytes, number: int) -> list[bytes]:
    """Every length-delimited field ``number`` of a message (repeated, or embedded and merged)."""
    return [bytes(v) for f, wire, v in _fields(buf) if f == number and wire == _LEN]  # type: ignore[arg-type]


def _expressions(field: int, body: bytes) -> list[tuple[str, str]]:
    """The (name, expression) pairs of a make-view or validate-expressions request.

    ``TableMakeViewReq{config = 2: ViewConfigUpdate{expressions = 6: map<string, string>}}`` and
    ``TableValidateExprReq{column_to_expr = 1: map<string, string>}`` (5.5.1); a map entry is
    ``{key = 1, value = 2}``. Every occurrence is read (protobuf merges repeated embedded
    messages, and the last value of an entry wins), so none can hide from the check.
    """
    if field == VALIDATE_EXPR:
        entries = _entries(body, 1)
    else:
        entries = [e for config in _entries(body, 2) for e in _entries(config, 6)]
    return [
        (_string(entry, 1), value.decode("utf-8", errors="replace"))
        for entry in entries
        for value in _entries(entry, 2)
    ]


def _refuse(d: Decision, reason: str) -> Decision:
    return Decision(False, d.msg_id, d.entity_id, d.field, d.name, d.body, reason)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _len_field(number: int, data: bytes) -> bytes:
    return _key(number, _LEN) + _encode_varint(len(data)) + data


def error_response(decision: Decision, message: str | None = None) -> bytes:
    """A ``Response`` frame answering ``decision``'s request with ``ServerError{message}``.

    ``message`` defaults to the decision's reason. The status code is left
    at its default, ``SERVER_ERROR`` (0).
    """
    text = message if message is not None else decision.reason or READ_ONLY_MESSAGE.format(what=decision.name)
    out = bytearray()
    if decision.msg_id:
        out += _key(_MSG_ID, _VARINT) + _encode_varint(decision.msg_id)
    if decision.entity_id:
        out += _len_field(_ENTITY_ID, decision.entity_id.encode())
    out += _len_field(_SERVER_ERROR, _len_field(1, text.encode()))
    return bytes(out)
