"""The dtype vocabulary: column dtype names and their Polars and Arrow types (PROTOCOL.md "Ops").

Every part of coframe that names, builds or reads a column type uses this
module, so a dtype means the same thing to the ops, the client's mirror, the
chunk store and the Perspective mapping:

=================  ======================  ====================================
dtype name         Polars type             Arrow type (chunks and the wire)
=================  ======================  ====================================
Int8 .. Int64      Int8 .. Int64           int8 .. int64
UInt8 .. UInt64    UInt8 .. UInt64         uint8 .. uint64
Float32, Float64   Float32, Float64        float, double
Boolean            Boolean                 bool
String             String                  large_string (never string_view)
Date               Date                    date32
Datetime           Datetime("us")          timestamp[us]
Datetime[<tz>]     Datetime("us", tz)      timestamp[us, tz]
=================  ======================  ====================================

``<tz>`` is an IANA zone (``Datetime[UTC]``, ``Datetime[Europe/Paris]``),
checked against Polars' zone database. Row ids live in the column
:data:`RID` (``_rid``), dtype :data:`RID_DTYPE` (UInt64); the name is
reserved. Arrow leaving a process (wire payloads, Arrow files) uses
:data:`WIRE_COMPAT`, so strings are ``large_string``: Perspective and older
Arrow readers reject ``string_view``.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl
import pyarrow as pa

from .errors import ErrorCode

__all__ = [
    "RID",
    "RID_DTYPE",
    "RID_POLARS",
    "RID_ARROW",
    "DTYPE_NAMES",
    "INT_RANGE",
    "WIRE_COMPAT",
    "DtypeError",
    "parse_dtype",
    "polars_dtype",
    "dtype_name",
    "storable_dtype",
    "arrow_type",
    "arrow_dtype_name",
    "dtype_family",
    "time_zone",
    "is_arrow_string",
    "frame_to_arrow",
]

#: The row-id column: first in every frame, reserved as a column name.
RID = "_rid"
RID_DTYPE = "UInt64"
RID_POLARS: pl.DataType = pl.UInt64()
RID_ARROW: pa.DataType = pa.uint64()

_POLARS: dict[str, pl.DataType] = {
    "Int8": pl.Int8(),
    "Int16": pl.Int16(),
    "Int32": pl.Int32(),
    "Int64": pl.Int64(),
    "UInt8": pl.UInt8(),
    "UInt16": pl.UInt16(),
    "UInt32": pl.UInt32(),
    "UInt64": pl.UInt64(),
    "Float32": pl.Float32(),
    "Float64": pl.Float64(),
    "Boolean": pl.Boolean(),
    "String": pl.String(),
    "Date": pl.Date(),
    "Datetime": pl.Datetime("us"),
}
_ARROW: dict[str, pa.DataType] = {
    "Int8": pa.int8(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "Boolean": pa.bool_(),
    "String": pa.large_string(),
    "Date": pa.date32(),
    "Datetime": pa.timestamp("us"),
}
_FROM_ARROW: dict[pa.DataType, str] = {t: n for n, t in _ARROW.items() if n != "Datetime"}
_FROM_ARROW[pa.float16()] = "Float32"
_FROM_ARROW[pa.date64()] = "Date"

#: Every dtype name; ``Datetime[<tz>]`` stands for any zoned Datetime.
DTYPE_NAMES: tuple[str, ...] = (*_POLARS, "Datetime[<tz>]")

#: Inclusive value range of each integer dtype.
INT_RANGE: dict[str, tuple[int, int]] = {
    **{f"Int{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
    **{f"UInt{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)},
}

#: Polars' Arrow export level for anything leaving the process: large_string, not string_view.
WIRE_COMPAT = pl.CompatLevel.oldest()

_TZ_RE = re.compile(r"Datetime\[([A-Za-z0-9_+\-/:]{1,64})\]")


class DtypeError(ValueError):
    """A dtype name, or a Polars type, outside the vocabulary.

    ``code`` is ``bad_dtype``; ``message`` says what to use instead and
    ``details`` is JSON-friendly (``dtype``, and ``valid`` for an unknown name).
    The server turns it into an op rejection with the same code and details.
    """

    code = ErrorCode.BAD_DTYPE

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details


def _unknown(name: Any) -> DtypeError:
    hint = ""
    if isinstance(name, str):
        near = [n for n in _POLARS if n.lower() == name.lower()]
        hint = f" (did you mean {near[0]!r}?)" if near else ""
    return DtypeError(
        f"unknown dtype {name!r}{hint}; use one of {', '.join(DTYPE_NAMES)}",
        dtype=name if isinstance(name, str) else repr(name),
        valid=list(DTYPE_NAMES),
    )


def parse_dtype(name: Any) -> tuple[str, str | None]:
    """Split a dtype name into its base name and zone: ``("Datetime", "UTC")`` for ``Datetime[UTC]``.

    Only the spelling is checked here, not whether the zone exists (see
    :func:`polars_dtype`).

    Raises:
        DtypeError: ``name`` is not a dtype name, listing the valid names.
    """
    if isinstance(name, str):
        if name in _POLARS:
            return name, None
        m = _TZ_RE.fullmatch(name)
        if m:
            return "Datetime", m.group(1)
    raise _unknown(name)


def polars_dtype(name: Any) -> pl.DataType:
    """The Polars type of dtype ``name`` (see :data:`DTYPE_NAMES`).

    Raises:
        DtypeError: an unknown name (listing the valid ones) or an unknown time zone.
    """
    simple = _POLARS.get(name) if isinstance(name, str) else None
    if simple is not None:
        return simple
    _, tz = parse_dtype(name)
    dtype = pl.Datetime("us", tz)
    try:
        pl.Series([], dtype=dtype)  # Polars validates the zone against its tz database
    except pl.exceptions.PolarsError:
        raise DtypeError(
            f"unknown time zone {tz!r} in dtype {name!r};"
            " use an IANA zone such as 'Datetime[UTC]' or 'Datetime[Europe/Paris]'",
            dtype=name,
        ) from None
    return dtype


def dtype_name(dtype: pl.DataType) -> str:
    """The dtype name of a Polars type in the vocabulary (inverse of :func:`polars_dtype`).

    Raises:
        DtypeError: a type coframe does not store (see :func:`storable_dtype` to convert first).
    """
    if isinstance(dtype, pl.Datetime):
        if dtype.time_unit == "us":
            return "Datetime" if dtype.time_zone is None else f"Datetime[{dtype.time_zone}]"
    else:
        for n, d in _POLARS.items():
            if dtype == d:
                return n
    raise DtypeError(f"dtype {dtype} is not supported; use one of {', '.join(DTYPE_NAMES)}", dtype=str(dtype))


def storable_dtype(dtype: pl.DataType) -> str | None:
    """The dtype name a Polars type is stored as (lossless where possible), or None.

    Supported types map to themselves; Categorical/Enum and Null become
    String, Datetime of any unit becomes microseconds (keeping its zone),
    Decimal becomes Float64 and Float16 Float32. List, Struct, Binary,
    Duration, Time, Int128 and the like give None.
    """
    if isinstance(dtype, pl.Datetime):
        return "Datetime" if dtype.time_zone is None else f"Datetime[{dtype.time_zone}]"
    if isinstance(dtype, (pl.Categorical, pl.Enum)) or dtype == pl.Null:
        return "String"
    if isinstance(dtype, pl.Decimal):
        return "Float64"
    if dtype == pl.Float16:
        return "Float32"
    try:
        return dtype_name(dtype)
    except DtypeError:
        return None


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type a column of dtype ``name`` has in a chunk and on the wire.

    Raises:
        DtypeError: an unknown name or time zone.
    """
    simple = _ARROW.get(name)
    if simple is not None:
        return simple
    tz = time_zone(polars_dtype(name))  # validates the name; only Datetime[<tz>] gets here
    return pa.timestamp("us", tz)


def is_arrow_string(typ: pa.DataType) -> bool:
    """Whether ``typ`` holds text: string, large_string or string_view."""
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def arrow_dtype_name(typ: pa.DataType) -> str | None:
    """The dtype name whose values an Arrow type holds, or None for types outside the vocabulary.

    The inverse of :func:`arrow_type`, also taking the other encodings of the
    same values that peers and Polars produce: string, string_view and
    dictionary-of-string for String, date64 for Date, any timestamp unit for
    Datetime (keeping its zone), float16 for Float32.
    """
    if pa.types.is_timestamp(typ):
        return "Datetime" if typ.tz is None else f"Datetime[{typ.tz}]"
    if is_arrow_string(typ) or (pa.types.is_dictionary(typ) and is_arrow_string(typ.value_type)):
        return "String"
    return _FROM_ARROW.get(typ)


def dtype_family(name: str) -> str:
    """``int``, ``float``, ``bool``, ``str``, ``date`` or ``datetime`` for a dtype name."""
    if name in INT_RANGE:
        return "int"
    if name in ("Float32", "Float64"):
        return "float"
    return {"Boolean": "bool", "String": "str", "Date": "date"}.get(name, "datetime")


def time_zone(dtype: pl.DataType) -> str | None:
    """The zone of a Polars Datetime type (None for zone-less and non-Datetime types)."""
    return dtype.time_zone if isinstance(dtype, pl.Datetime) else None


def frame_to_arrow(df: pl.DataFrame) -> pa.Table:
    """``df`` as Arrow for the wire: strings as large_string, never string_view."""
    return df.to_arrow(compat_level=WIRE_COMPAT)
