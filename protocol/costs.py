"""What a client request costs, seen before the expensive work (PROTOCOL.md section 10).

Two checks, both pure:

- :func:`check_request` looks at a decoded frame map before its message is
  built: the rows of every op (an insert's table rows as its Arrow IPC
  metadata declares them, a set's or a delete's rows) against the per-op and
  per-message limits, and the bytes its tables will take once decompressed
  (:mod:`protocol.ipcmeta`), so that nothing is decompressed or applied for
  a request over a limit. It also says whether building the message is worth
  a worker thread (:attr:`Cost.heavy`).
- :func:`check_tables` looks at the tables of a built message: a
  dictionary-encoded or string-view column can share one big value among
  many rows, so its size once every value is written out (which is what
  storing or re-sending it costs) is counted against the same byte limit.
  Run-end-encoded and list-view columns are refused.

Both raise :class:`ProtocolError` with ``too_large`` (or ``bad_field``).

:func:`expressions_of` lists the expressions a message carries, for the
per-user cap on their length (``server.auth.limits``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pt

from .errors import ErrorCode, ProtocolError
from .ipcmeta import ipc_info
from .ops import Insert, Op, RestoreColumn, RestoreRows

__all__ = [
    "Cost",
    "check_request",
    "check_tables",
    "expressions_of",
    "materialized_bytes",
    "INLINE_TABLE_BYTES",
    "INLINE_JSON_ROWS",
    "presence_json",
    "utf8_len",
]

# Messages whose tables are bigger than this (decompressed Arrow bytes; rows of
# JSON tables, or the bytes of a frame that carries them) are built in a worker
# thread, not on the event loop.
INLINE_TABLE_BYTES = 256 * 1024
INLINE_JSON_ROWS = 2_000
_BYTES = (bytes, bytearray, memoryview)


@dataclass(frozen=True, slots=True)
class Cost:
    """What :func:`check_request` saw: rows over all ops, tables' decompressed bytes,
    rows of JSON tables and the size of the frame that carried them."""

    rows: int = 0
    table_bytes: int = 0
    json_rows: int = 0
    frame_bytes: int = 0

    @property
    def heavy(self) -> bool:
        """Building the message (decompressing, validating, converting rows) is worth a worker thread."""
        if self.table_bytes > INLINE_TABLE_BYTES:
            return True
        return self.json_rows > INLINE_JSON_ROWS or (
            self.json_rows > 0 and self.frame_bytes > INLINE_TABLE_BYTES
        )


def _too_large(message: str, **details: Any) -> ProtocolError:
    return ProtocolError(ErrorCode.TOO_LARGE, message, **details)


def check_request(
    d: dict[str, Any], *, max_rows_per_op: int, max_rows_per_message: int, max_bytes: int, size: int = 0
) -> Cost:
    """The cost of the frame map ``d`` (a frame of ``size`` bytes), checked against the limits
    before it is decoded further.

    Only ``op`` messages carry rows and tables; anything else costs nothing
    here. Malformed ops are left to the decoder, which names the bad field.

    Raises:
        ProtocolError: ``too_large`` (an op over ``max_rows_per_op``, all ops
            over ``max_rows_per_message``, tables over ``max_bytes`` once
            decompressed); ``bad_field`` for a table that is not an Arrow IPC
            stream.
    """
    ops = d.get("ops")
    if d.get("type") != "op" or not isinstance(ops, list):
        return Cost()
    rows = table_bytes = json_rows = 0
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            continue
        n, table = 0, op.get("rows")
        if isinstance(table, _BYTES):
            info = ipc_info(bytes(table), f"ops[{i}].rows")
            n, table_bytes = info.rows, table_bytes + info.bytes
        elif isinstance(table, list):
            n = len(table)
            if op.get("op") == "insert":
                json_rows += n
        if n > max_rows_per_op:
            raise _too_large(
                f"ops[{i}]: {n} rows is over the limit of {max_rows_per_op} rows per op;"
                " split it into several ops, in several messages",
                field=f"ops[{i}].rows", op_index=i, limit=max_rows_per_op, rows=n,
            )  # fmt: skip
        rows += n
    if rows > max_rows_per_message:
        raise _too_large(
            f"the ops of this message touch {rows} rows, over the limit of {max_rows_per_message}"
            " rows per message; send them in several messages",
            field="ops", limit=max_rows_per_message, rows=rows,
        )  # fmt: skip
    if table_bytes > max_bytes:
        raise _too_large(
            f"the tables of this message take {table_bytes} bytes once decompressed, over the limit of"
            f" {max_bytes}; send fewer rows per message",
            field="ops", limit=max_bytes, size=table_bytes,
        )  # fmt: skip
    return Cost(rows, table_bytes, json_rows, size)


def _tables(op: Op) -> list[pa.Table]:
    if isinstance(op, (Insert, RestoreRows)):
        return [op.rows]
    if isinstance(op, RestoreColumn):
        return [op.values]
    return []


def check_tables(ops: tuple[Op, ...], max_bytes: int) -> None:
    """Refuse tables whose values, written out, take more than ``max_bytes`` in all.

    Raises:
        ProtocolError: ``too_large``; ``bad_field`` for a run-end-encoded or
            list-view column.
    """
    total = 0
    for i, op in enumerate(ops):
        for table in _tables(op):
            total += materialized_bytes(table, f"ops[{i}].rows")
    if total > max_bytes:
        raise _too_large(
            f"the tables of this message take {total} bytes with every value written out, over the"
            f" limit of {max_bytes}; send fewer rows per message",
            field="ops", limit=max_bytes, size=total,
        )  # fmt: skip


def _shares_values(t: pa.DataType) -> bool:
    """A layout where rows may point at the same bytes (run ends, list views)."""
    if pt.is_run_end_encoded(t) or pt.is_list_view(t) or pt.is_large_list_view(t):
        return True
    if pt.is_dictionary(t):
        return _shares_values(t.value_type)
    return any(_shares_values(t.field(i).type) for i in range(t.num_fields))


def _lengths(a: pa.Array) -> np.ndarray | None:
    """Each value's length in bytes for string and binary arrays (views too), else None."""
    t = a.type
    if pt.is_string_view(t) or pt.is_binary_view(t):
        views = a.buffers()[1]
        if views is None or len(a) == 0:
            return np.zeros(len(a), dtype=np.int64)
        # Each view is 16 bytes and starts with its length (int32, little-endian).
        raw = np.frombuffer(views, dtype="<i4").reshape(-1, 4)[a.offset : a.offset + len(a), 0]
        return np.maximum(raw, 0).astype(np.int64)
    if pt.is_string(t) or pt.is_large_string(t) or pt.is_binary(t) or pt.is_large_binary(t):
        return pc.binary_length(a).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return None


def _array_bytes(a: pa.Array) -> int:
    t = a.type
    if pt.is_dictionary(t):
        values, indices = a.dictionary, a.indices
        lengths = _lengths(values)
        index = indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if lengths is not None and len(lengths):
            written = int(lengths[np.clip(index, 0, len(lengths) - 1)].sum(dtype=np.int64))
        else:
            written = len(a) * (values.nbytes // max(1, len(values)) + 1)
        return written + indices.nbytes + 8 * len(a)
    if pt.is_string_view(t) or pt.is_binary_view(t):
        lengths = _lengths(a)
        return (0 if lengths is None else int(lengths.sum(dtype=np.int64))) + 8 * len(a)
    if any(_contains_shared(t.field(i).type) for i in range(t.num_fields)):
        # Dictionaries or views nested in lists or structs: no column of coframe holds them.
        raise _nested(t)
    return int(a.nbytes)


def _contains_shared(t: pa.DataType) -> bool:
    if pt.is_dictionary(t) or pt.is_string_view(t) or pt.is_binary_view(t):
        return True
    return any(_contains_shared(t.field(i).type) for i in range(t.num_fields))


def _nested(t: pa.DataType) -> ProtocolError:
    return ProtocolError(
        ErrorCode.BAD_FIELD,
        f"a column of type {t} nests dictionary or view arrays; send plain arrays",
    )


def materialized_bytes(table: pa.Table, path: str = "table") -> int:
    """Bytes ``table`` takes with every value written out (dictionaries and views expanded).

    Raises:
        ProtocolError: ``bad_field`` naming ``path`` for run-end-encoded or list-view columns.
    """
    total = 0
    for field, column in zip(table.schema, table.columns, strict=True):
        if _shares_values(field.type):
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"field '{path}' has column '{field.name}' of type {field.type} (run-end or list-view"
                " encoded); send plain arrays",
                field=path,
            )
        try:
            total += sum(_array_bytes(chunk) for chunk in column.chunks)
        except ProtocolError as e:
            raise ProtocolError(
                ErrorCode.BAD_FIELD, f"field '{path}' column '{field.name}': {e.message}", field=path
            ) from None
    return total


def presence_json(state: dict[str, Any] | None) -> str:
    """A presence state as the awareness update carries it: compact JSON, as ``JSON.stringify`` writes it.

    Its UTF-8 length (:func:`utf8_len`) is what ``max_presence_bytes`` counts.
    """
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False)


def utf8_len(s: str) -> int:
    """The length of ``s`` in UTF-8, without encoding it (which is slow for big non-ASCII text).

    Counted on its UTF-16 code units: one byte each, one more from U+0080 and
    another from U+0800; a surrogate pair (4 bytes) is two units of 2.
    """
    if s.isascii():
        return len(s)
    units = np.frombuffer(s.encode("utf-16-le", "surrogatepass"), dtype="<u2")
    wide = int(np.count_nonzero(units >= 0x80)) + int(np.count_nonzero(units >= 0x800))
    surrogates = int(np.count_nonzero((units >= 0xD800) & (units < 0xE000)))
    return len(units) + wide - surrogates


def expressions_of(msg: Any) -> list[tuple[str, str]]:
    """The ``(field path, text)`` of every expression a client message carries.

    An ``op`` message's ``add_column`` ``expr`` and ``delete`` ``where``
    (``ops[i].expr``, ``ops[i].where``), and a ``subscribe``'s view
    expressions (``config.expressions.NAME``). A view ``filter``'s values
    are literals compared as they are, not expressions, and are not listed.
    """
    out: list[tuple[str, str]] = []
    for i, op in enumerate(getattr(msg, "ops", None) or ()):
        for key in ("expr", "where"):
            text = getattr(op, key, None)
            if isinstance(text, str):
                out.append((f"ops[{i}].{key}", text))
    config = getattr(msg, "config", None)
    if getattr(msg, "type", None) == "subscribe" and isinstance(config, dict):
        for name, text in (config.get("expressions") or {}).items():
            out.append((f"config.expressions.{name}", text))
    return out
