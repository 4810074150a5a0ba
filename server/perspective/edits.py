"""Grid edits from a dashboard, sans-I/O: a Perspective ``table_update_req`` read as coframe ``set`` ops.

In EDIT mode the 5.5.1 datagrid turns a cell edit into
``table.update([{__INDEX__: id, column: value}], {port_id})``; the JS client
sends it as (field numbers of ``perspective.proto`` 5.5.1)::

    Request{msg_id = 1, entity_id = 2, table_update_req = 33: TableUpdateReq{
        data = 1: MakeTableData{from_rows = 4: '[{"__INDEX__":1,"qty":42}]'},
        port_id = 2}}

``__INDEX__`` is the row's index value, and the room's table is indexed on
``_rid``, so it is the rid. :func:`decode_update` reads that (and the other
JSON forms a script may send: columns, ndjson) into :class:`RowEdit` s,
bounded in rows and bytes; :func:`to_ops` makes one ``set`` op per column;
:func:`update_response` and :func:`edit_error` build the replies the
browser's promise resolves or rejects with. The endpoint submits the ops to
the room (:mod:`.editor`), so a grid edit goes through the same pipeline as
any other edit: validation, conflicts, the WAL, undo and the delta.

Values are converted only where the datagrid's encoding differs from the
protocol's: a date or datetime cell comes as milliseconds since the epoch
(``Date.parse`` of the typed text) and becomes ISO text. Everything else
(an int column given 1.5, a string into a number column) is left to the
room, whose ``bad_value`` message the user then sees.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol import CoframeError, ErrorCode, SetCells
from protocol.dtypes import RID

from .readonly import (
    _LEN,
    _MSG_ID,
    _VARINT,
    TABLE_UPDATE,
    Decision,
    _encode_varint,
    _fields,
    _key,
    _len_field,
    error_response,
)

__all__ = [
    "TABLE_UPDATE",
    "EDIT_REFUSED",
    "MAX_EDIT_ROWS",
    "MAX_EDIT_BYTES",
    "INDEX",
    "EditError",
    "RowEdit",
    "TableUpdate",
    "decode_update",
    "to_ops",
    "update_response",
    "edit_error",
    "refusal",
    "wants_edit",
]

_ENTITY_ID = 2
_DATA, _PORT_ID = 1, 2  # TableUpdateReq
# MakeTableData's oneof: the forms a Perspective client may send.
FROM_SCHEMA, FROM_CSV, FROM_ARROW, FROM_ROWS, FROM_COLS, FROM_VIEW, FROM_NDJSON = 1, 2, 3, 4, 5, 6, 7
_FORMS = {
    FROM_SCHEMA: "a schema",
    FROM_CSV: "CSV",
    FROM_ARROW: "Arrow",
    FROM_ROWS: "JSON rows",
    FROM_COLS: "JSON columns",
    FROM_VIEW: "a view",
    FROM_NDJSON: "NDJSON",
}

#: The key the datagrid puts the row's index value under.
INDEX = "__INDEX__"
#: Rows one dashboard update may change (the datagrid sends one); more → ``too_large``.
MAX_EDIT_ROWS = 10_000
#: Bytes of one update's payload; more → ``too_large``.
MAX_EDIT_BYTES = 1024 * 1024
#: Every refusal the browser sees starts with this, so the page can tell edit errors from others.
EDIT_REFUSED = "coframe edit refused"

_DAY_MS = 86_400_000
_EPOCH = dt.datetime(1970, 1, 1)
_MAX_RID = 2**53


def wants_edit(query: Mapping[str, str]) -> bool:
    """Whether a dashboard page's or socket's query asks for editing (``edit=1``)."""
    return query.get("edit") == "1"


class EditError(CoframeError):
    """A dashboard update that cannot become ops (``code`` says why; bad_field by default)."""

    code = ErrorCode.BAD_FIELD
    status = 400


@dataclass(frozen=True, slots=True)
class RowEdit:
    """New values for some cells of one row: ``rid`` and {column name: value}."""

    rid: int
    values: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TableUpdate:
    """A decoded ``table_update_req``: its rows and the Perspective port it was tagged with."""

    rows: tuple[RowEdit, ...]
    port_id: int = 0


def decode_update(
    body: bytes, *, max_rows: int = MAX_EDIT_ROWS, max_bytes: int = MAX_EDIT_BYTES
) -> TableUpdate:
    """Read a ``TableUpdateReq`` (the request's own bytes, :attr:`.Decision.body`).

    Raises:
        WireError: not protobuf (the caller closes the socket, as for any request).
        EditError: a form other than JSON rows, columns or NDJSON (``bad_op``); over ``max_rows``
            or ``max_bytes`` (``too_large``); not JSON, or a row without its ``__INDEX__``
            (``bad_field``, ``bad_op``); an edit of ``_rid`` (``reserved_name``).
    """
    data, port_id = b"", 0
    for f, wire, value in _fields(body):
        if f == _DATA and wire == _LEN:
            data = bytes(value)  # type: ignore[arg-type]
        elif f == _PORT_ID and wire == _VARINT:
            port_id = int(value)  # type: ignore[arg-type]
    forms = [(f, bytes(v)) for f, wire, v in _fields(data) if wire == _LEN]  # type: ignore[arg-type]
    if not forms:
        raise EditError("table_update_req without data: send the rows to change", code=ErrorCode.BAD_OP)
    form, payload = forms[-1]  # a oneof: the last one wins
    if form not in (FROM_ROWS, FROM_COLS, FROM_NDJSON):
        what = _FORMS.get(form, f"data field {form}")
        raise EditError(
            f"a dashboard takes edits as JSON rows (what the datagrid sends), not {what};"
            " load files or Arrow tables through the coframe protocol or the HTTP API",
            code=ErrorCode.BAD_OP,
        )
    if len(payload) > max_bytes:
        raise EditError(
            f"the update is {len(payload)} bytes, over the {max_bytes} bytes a dashboard edit may be;"
            " change fewer cells at a time",
            code=ErrorCode.TOO_LARGE,
            details={"limit": "max_edit_bytes", "max": max_bytes},
        )
    rows = _json_rows(form, payload)
    if len(rows) > max_rows:
        raise EditError(
            f"the update changes {len(rows)} rows, over the {max_rows} a dashboard edit may change;"
            " change fewer rows at a time",
            code=ErrorCode.TOO_LARGE,
            details={"limit": "max_edit_rows", "max": max_rows},
        )
    return TableUpdate(tuple(_row(i, r) for i, r in enumerate(rows)), port_id)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a value a cell can hold")


def _json(text: bytes) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise EditError(f"the update is not valid JSON: {e}") from None


def _json_rows(form: int, payload: bytes) -> list[Any]:
    if form == FROM_NDJSON:
        return [_json(line) for line in payload.splitlines() if line.strip()]
    value = _json(payload)
    if form == FROM_ROWS:
        if not isinstance(value, list):
            raise EditError(f"JSON rows must be a list of objects, not {type(value).__name__}")
        return value
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise EditError("JSON columns must be an object of lists")
    lengths = {len(v) for v in value.values()}
    if len(lengths) > 1:
        raise EditError(f"JSON columns have different lengths: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    return [{name: col[i] for name, col in value.items()} for i in range(n)]


def _row(i: int, row: Any) -> RowEdit:
    if not isinstance(row, dict):
        raise EditError(f"row {i} is {type(row).__name__}, not an object of column: value")
    values = dict(row)
    key = values.pop(INDEX, None)
    if key is None:
        key = values.pop(RID, None)
        if key is None:
            raise EditError(
                f"row {i} has no {INDEX} (its _rid): a dashboard edits existing rows; insert rows"
                " through the coframe protocol",
                code=ErrorCode.BAD_OP,
            )
    elif RID in values:
        raise EditError(
            f"row {i} sets {RID}: it is the row's id and cannot be edited", code=ErrorCode.RESERVED_NAME
        )
    whole = isinstance(key, (int, float)) and not isinstance(key, bool) and 0 <= key < _MAX_RID
    if not whole or key != int(key):
        raise EditError(f"row {i}: {INDEX} must be a row id (a whole number >= 0), got {key!r}")
    for name, value in values.items():
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise EditError(
                f"row {i}, column '{name}': {type(value).__name__} is not a cell value"
                " (send null, a boolean, a number or a string)",
                code=ErrorCode.BAD_VALUE,
            )
    return RowEdit(int(key), values)


def to_ops(update: TableUpdate, dtypes: Mapping[str, str]) -> tuple[SetCells, ...]:
    """One ``set`` per column, in the order the columns first appear.

    ``dtypes`` maps the room's column names to dtype names; a date or
    datetime column's number (ms since the epoch, what the datagrid sends)
    becomes ISO text. A column ``dtypes`` does not name is passed on for the
    room to refuse (``no_such_column``). A rid given twice for one column
    keeps its last value, as Perspective's update would.

    Raises:
        EditError: a date or datetime out of range (``bad_value``).
    """
    columns: dict[str, dict[int, Any]] = {}
    for row in update.rows:
        for name, value in row.values.items():
            columns.setdefault(name, {})[row.rid] = _convert(name, dtypes.get(name), value)
    return tuple(SetCells(tuple(cells), name, tuple(cells.values())) for name, cells in columns.items())


def _convert(name: str, dtype: str | None, value: Any) -> Any:
    if dtype is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    try:
        if dtype == "Date":
            # Date.parse of a typed date is local midnight: the nearest UTC midnight is that day
            # for any zone within 12 hours of UTC.
            return (_EPOCH + dt.timedelta(days=round(value / _DAY_MS))).date().isoformat()
        if dtype.startswith("Datetime"):  # naive, or zoned: coframe reads text without an offset as UTC
            return (_EPOCH + dt.timedelta(milliseconds=value)).isoformat()
    except (OverflowError, ValueError):
        raise EditError(
            f"column '{name}': {value!r} ms since 1970 is not a {dtype}", code=ErrorCode.BAD_VALUE
        ) from None
    return value


def update_response(decision: Decision) -> bytes:
    """The ``Response`` resolving the browser's ``table.update`` promise: an empty ``TableUpdateResp``."""
    out = bytearray()
    if decision.msg_id:
        out += _key(_MSG_ID, _VARINT) + _encode_varint(decision.msg_id)
    if decision.entity_id:
        out += _len_field(_ENTITY_ID, decision.entity_id.encode())
    out += _len_field(TABLE_UPDATE, b"")
    return bytes(out)


def refusal(code: str, message: str) -> str:
    """The text the browser's promise rejects with: :data:`EDIT_REFUSED`, the code, the message."""
    return f"{EDIT_REFUSED} ({code}): {message}"


def edit_error(decision: Decision, code: str, message: str) -> bytes:
    """The ``Response`` that rejects the browser's ``table.update`` promise with :func:`refusal`."""
    return error_response(decision, refusal(code, message))
