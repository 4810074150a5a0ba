"""Dtype names: the supported column dtypes, their Polars types, and column names.

Private to ``server.ops``; :mod:`server.ops.dtypes` is the public face.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from protocol import ErrorCode

from .state import RID, OpError

__all__ = [
    "DTYPE_NAMES",
    "MAX_NAME_LEN",
    "INT_RANGE",
    "polars_dtype",
    "dtype_name",
    "dtype_family",
    "time_zone",
    "check_name",
]

MAX_NAME_LEN = 128

_SIMPLE: dict[str, pl.DataType] = {
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
DTYPE_NAMES: tuple[str, ...] = (*_SIMPLE, "Datetime[<tz>]")

INT_RANGE: dict[str, tuple[int, int]] = {
    **{f"Int{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
    **{f"UInt{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)},
}
_TZ_RE = re.compile(r"Datetime\[([A-Za-z0-9_+\-/:]{1,64})\]")


def polars_dtype(name: str) -> pl.DataType:
    """The Polars dtype for a dtype name (see :data:`DTYPE_NAMES`).

    Raises:
        OpError: ``bad_dtype``, listing the valid names.
    """
    if isinstance(name, str):
        if name in _SIMPLE:
            return _SIMPLE[name]
        m = _TZ_RE.fullmatch(name)
        if m:
            dtype = pl.Datetime("us", m.group(1))
            try:
                pl.Series([], dtype=dtype)  # Polars validates the zone against its tz database
            except pl.exceptions.PolarsError:
                raise OpError(
                    ErrorCode.BAD_DTYPE,
                    f"unknown time zone {m.group(1)!r} in dtype {name!r};"
                    " use an IANA zone such as 'Datetime[UTC]' or 'Datetime[Europe/Paris]'",
                    dtype=name,
                ) from None
            return dtype
    hint = ""
    if isinstance(name, str):
        near = [n for n in _SIMPLE if n.lower() == name.lower()]
        hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise OpError(
        ErrorCode.BAD_DTYPE,
        f"unknown dtype {name!r}{hint}; use one of {', '.join(DTYPE_NAMES)}",
        dtype=name if isinstance(name, str) else repr(name),
        valid=list(DTYPE_NAMES),
    )


def dtype_name(dtype: pl.DataType) -> str:
    """The dtype name of a supported Polars dtype (inverse of :func:`polars_dtype`).

    Raises:
        OpError: ``bad_dtype`` for a dtype coframe does not store.
    """
    if isinstance(dtype, pl.Datetime):
        if dtype.time_unit == "us":
            return "Datetime" if dtype.time_zone is None else f"Datetime[{dtype.time_zone}]"
    else:
        for n, d in _SIMPLE.items():
            if dtype == d:
                return n
    raise OpError(
        ErrorCode.BAD_DTYPE,
        f"dtype {dtype} is not supported; use one of {', '.join(DTYPE_NAMES)}",
        dtype=str(dtype),
    )


def dtype_family(name: str) -> str:
    """``int``, ``float``, ``bool``, ``str``, ``date`` or ``datetime`` for a dtype name."""
    if name in INT_RANGE:
        return "int"
    if name in ("Float32", "Float64"):
        return "float"
    return {"Boolean": "bool", "String": "str", "Date": "date"}.get(name, "datetime")


def check_name(name: Any, *, what: str = "column name") -> str:
    """Validate a column name (PROTOCOL.md "Ops": names are 1-128 chars, ``_rid`` is reserved).

    Raises:
        OpError: ``bad_op`` for an empty or over-long name, ``reserved_name`` for ``_rid``.
    """
    if not isinstance(name, str) or not name:
        raise OpError(ErrorCode.BAD_OP, f"{what} must be a non-empty string", name=str(name))
    if len(name) > MAX_NAME_LEN:
        raise OpError(
            ErrorCode.BAD_OP,
            f"{what} is {len(name)} characters long; use at most {MAX_NAME_LEN}",
            name=name[:MAX_NAME_LEN] + "…",
        )
    if name == RID:
        raise OpError(
            ErrorCode.RESERVED_NAME,
            f"the name '{RID}' is reserved for row ids; choose another name",
            name=name,
        )
    return name


def time_zone(dtype: pl.DataType) -> str | None:
    """The zone of a Datetime dtype (None for zone-less and non-Datetime dtypes)."""
    return dtype.time_zone if isinstance(dtype, pl.Datetime) else None
