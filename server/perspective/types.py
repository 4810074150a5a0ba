"""Explicit Arrow type mapping before Perspective sees any data (PROTOCOL.md §14, "Types").

Perspective 5.5.1 (measured on this machine) rejects ``string_view``
("Could not load arrow column of type `utf8_view`"), durations, time64 and
Int128; it cannot remove rows from a ``uint64`` index ("JSON field not yet
implemented"); on an ``int64`` index ``table.remove`` silently ignores keys
>= 2**31 (removes go through a JSON path that parses them as int32), so the
index is float64; it rejects a bool index; it stores timestamps as naive
milliseconds; and a string sent into a float column silently becomes 0.0.
So every table and every update goes through :func:`to_perspective`, which
reads each column's Arrow type as a dtype of the vocabulary
(:mod:`protocol.dtypes`) and maps that dtype to one fixed Perspective-safe
Arrow type (:data:`PERSPECTIVE_TYPES`):

=====================================  =====================================
room dtype (Arrow type)                Perspective Arrow type
=====================================  =====================================
``_rid`` (uint64)                      float64 (exact: rids < 2**53, checked)
Int8 / Int16 / Int32                   int32
Int64                                  int64
UInt8 / UInt16                         int32
UInt32                                 int64
UInt64                                 float64 (exact below 2**53; rounded above)
Float32 / Float64 (and float16)        float64
Boolean                                bool (never usable as an index)
String (string, large_string,          large_string (64-bit offsets: no 2 GB
string_view, dictionary<string>)       limit per column)
Date (date32 / date64)                 date32
Datetime (naive, any unit)             timestamp[ms] (sub-ms precision lost)
Datetime[tz]                           timestamp[ms], naive, in UTC
=====================================  =====================================

Time zones: Perspective has no zone on its timestamps, so a zoned column is
shown as its UTC wall time. The zone stays in coframe's own payloads
(snapshots, deltas and the schema carry ``Datetime[<tz>]``); Perspective
views are for aggregation and display only.

UInt64 values go up to 2**64 - 1, past Int64's range, so no Perspective
integer type holds them all. As float64 they are rounded to the nearest double
above 2**53 (``pc.cast(..., safe=False)``; a safe cast would refuse the first
such value and break every view of the room), and Perspective sorts, filters,
groups and sums them as numbers. As strings they would be exact but sort as
text ("10" before "9"), and Perspective refuses ``sum`` on them, a numeric
filter, and arithmetic in expressions (measured on 5.5.1;
docs/decisions.md). The exact values stay in coframe's own payloads.

Anything else (null, durations, time, decimal, list, struct, binary, ...)
raises :class:`ValueError` naming the column.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from protocol.dtypes import RID, arrow_dtype_name, dtype_family

__all__ = ["RID", "MAX_RID", "PERSPECTIVE_TYPES", "to_perspective", "perspective_type"]

#: Rids must stay below this to be exact as int64/float64 in every client.
MAX_RID = 2**53

_MS = pa.timestamp("ms")

#: The Perspective type of each dtype of the vocabulary (``Datetime[<tz>]`` as ``Datetime``).
PERSPECTIVE_TYPES: dict[str, pa.DataType] = {
    "Int8": pa.int32(),
    "Int16": pa.int32(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "UInt8": pa.int32(),
    "UInt16": pa.int32(),
    "UInt32": pa.int64(),
    "UInt64": pa.float64(),
    "Float32": pa.float64(),
    "Float64": pa.float64(),
    "Boolean": pa.bool_(),
    "String": pa.large_string(),
    "Date": pa.date32(),
    "Datetime": _MS,
}


def perspective_type(name: str, typ: pa.DataType) -> pa.DataType:
    """The Arrow type column ``name`` of Arrow type ``typ`` is given to Perspective.

    ``typ`` is read as a dtype of the vocabulary (:func:`protocol.dtypes.arrow_dtype_name`,
    so string_view, dictionary strings, date64 and any timestamp unit are accepted),
    then mapped by :data:`PERSPECTIVE_TYPES`.

    Raises:
        ValueError: the type has no Perspective mapping, naming the column.
    """
    if name == RID:
        if pa.types.is_integer(typ):
            return pa.float64()
        raise ValueError(f"column '{RID}' must be an integer column to index on, got {typ}")
    dtype = arrow_dtype_name(typ)
    if dtype is None:
        raise ValueError(
            f"column '{name}' has Arrow type {typ}, which coframe does not send to Perspective"
            " (supported: integers, floats, bool, strings, date, timestamp)"
        )
    return PERSPECTIVE_TYPES["Datetime" if dtype_family(dtype) == "datetime" else dtype]


def _convert(name: str, col: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    typ = col.type
    if name == RID:
        if len(col) and pc.max(col).as_py() >= MAX_RID:
            raise ValueError(f"column '{RID}' holds a rid >= 2**53, which Perspective cannot index exactly")
        return col.cast(pa.float64())
    if pa.types.is_timestamp(typ):
        if typ.tz is not None:
            # Same instants, truncated to ms, then the zone dropped: UTC wall time.
            col = pc.cast(col, pa.timestamp("ms", typ.tz), safe=False)
        return pc.cast(col, _MS, safe=False)
    if pa.types.is_dictionary(typ):
        return pc.cast(col, target)
    if pa.types.is_uint64(typ):
        return pc.cast(col, target, safe=False)  # rounded above 2**53 (module doc)
    return col if typ == target else col.cast(target)


def to_perspective(table: pa.Table) -> pa.Table:
    """``table`` with every column mapped to its Perspective type (see module doc).

    Column names and order are kept. Mapping is deterministic per Arrow type,
    so a table and every later update of it agree on types.

    Raises:
        ValueError: a column of an unsupported type (named in the message), or
            a ``_rid`` that is not an integer below 2**53.
    """
    arrays: list[pa.ChunkedArray] = []
    fields: list[pa.Field] = []
    for field, col in zip(table.schema, table.columns, strict=True):
        target = perspective_type(field.name, field.type)
        arrays.append(_convert(field.name, col, target))
        fields.append(pa.field(field.name, target))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
