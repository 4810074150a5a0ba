"""Perspective 5.5.1's sort and filter semantics as Polars expressions, for :mod:`.fast`.

Every expression here reads a room frame column as Perspective holds it
(:mod:`.types`): small integers widened, UInt64 and Float32 as float64,
timestamps truncated to milliseconds, strings cut at their first NUL. The
facts each one reproduces were measured on 5.5.1 and are listed in
:mod:`.fast`; a value whose Perspective order is not a total order (NaN,
``-0.0`` beside ``0.0``) is not reproduced but detected
(:func:`unsortable`), and the read is refused.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

import polars as pl

__all__ = [
    "PTYPES",
    "FILTER_OPS",
    "ptype",
    "check_value",
    "operand",
    "column_expr",
    "filter_expr",
    "unsortable",
    "has_nul",
    "py_values",
]

#: The Perspective type each served dtype is held as (the zone of a Datetime is ignored).
PTYPES: dict[str, str] = {
    **dict.fromkeys(("Int8", "Int16", "Int32", "UInt8", "UInt16"), "int32"),
    **dict.fromkeys(("Int64", "UInt32"), "int64"),
    **dict.fromkeys(("UInt64", "Float32", "Float64"), "float"),
    "Boolean": "bool",
    "String": "str",
    "Date": "date",
    "Datetime": "datetime",
}

#: Filter operators served, per Perspective type, besides ``is null`` / ``is not null``.
_ORDERED = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
FILTER_OPS: dict[str, tuple[str, ...]] = {
    "int32": _ORDERED,
    "int64": _ORDERED,
    "float": _ORDERED,
    "str": _ORDERED,
    "bool": ("==", "!=", "in", "not in"),
    "date": _ORDERED,
    "datetime": _ORDERED,
}

# Text Perspective reads as a date, or as a UTC datetime (whatever the process's TZ);
# anything looser (other separators, zones, more digits) is not served.
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,3}))?")
_EPOCH = dt.datetime(1970, 1, 1)
_MS = dt.timedelta(milliseconds=1)
_EXACT = 2**53  # Perspective reads a filter number as a double, then casts it to the column type
_INT32 = (-(2**31), 2**31 - 1)  # an int32 column wraps values outside this range


def ptype(dtype: str) -> str | None:
    """The Perspective type of dtype name ``dtype`` (``Datetime[<tz>]`` too), or None if not served."""
    return PTYPES.get("Datetime" if dtype.startswith("Datetime") else dtype)


def check_value(pt: str, value: Any) -> bool:
    """Whether ``value`` is a filter operand whose Perspective meaning on a ``pt`` column is proven."""
    if pt in ("int32", "int64"):
        if type(value) is not int:  # bools are ints in Python: refused
            return False
        lo, hi = _INT32 if pt == "int32" else (-_EXACT, _EXACT)
        return lo <= value <= hi
    if pt == "float":
        if type(value) is int:
            return -_EXACT <= value <= _EXACT
        return type(value) is float and value - value == 0.0  # finite
    if pt == "str":
        return type(value) is str and "\x00" not in value
    if pt == "bool":
        return type(value) is bool
    if pt in ("date", "datetime") and type(value) is str:
        try:
            operand(pt, value)
        except ValueError:
            return False
        return True
    return False


def operand(pt: str, value: Any) -> Any:
    """A checked filter operand as the value :func:`column_expr` holds: a date, or UTC milliseconds.

    Raises:
        ValueError: text that is not a date (``YYYY-MM-DD``) or datetime
            (``YYYY-MM-DD[T ]HH:MM:SS[.fff]``) Perspective reads as this one.
    """
    if pt == "date":
        if not _DATE.fullmatch(value):
            raise ValueError(f"not a YYYY-MM-DD date: {value!r}")
        return dt.date.fromisoformat(value)
    if pt == "datetime":
        m = _DATETIME.fullmatch(value)
        if m is None:
            raise ValueError(f"not a YYYY-MM-DD HH:MM:SS[.fff] datetime: {value!r}")
        day, time, frac = m.groups()
        ms = int((frac or "").ljust(3, "0"))
        return (dt.datetime.fromisoformat(f"{day}T{time}") - _EPOCH) // _MS + ms
    return value


def _trunc_div(x: pl.Expr, d: int) -> pl.Expr:
    """``x / d`` rounded toward zero (Arrow's unsafe timestamp cast), where Polars' ``//`` floors."""
    return x // d + ((x % d != 0) & (x < 0)).cast(pl.Int64)


def column_expr(name: str, dtype: str, *, nul: bool = False) -> pl.Expr:
    """Column ``name`` (dtype ``dtype``) with the values Perspective compares.

    ``nul``: the string column holds a NUL, which Perspective cuts the string at.
    """
    col = pl.col(name)
    pt = ptype(dtype)
    if dtype in ("UInt64", "Float32"):
        return col.cast(pl.Float64)  # UInt64 rounds above 2**53, as to_perspective does
    if pt == "datetime":
        return _trunc_div(col.dt.epoch("us"), 1000)  # UTC instants for zoned ones, as ms
    if pt == "str" and nul:
        return col.str.split("\x00").list.first()
    return col


def _neg_zero(x: pl.Expr) -> pl.Expr:
    """``x`` is ``-0.0`` (``1 / -0.0`` is ``-inf``)."""
    return (x == 0.0) & ((1.0 / x) < 0.0)


def _same(x: pl.Expr, pt: str, v: Any) -> pl.Expr:
    """Perspective's ``==`` on one value: exact, and for floats bitwise on zeros (``0.0 != -0.0``)."""
    if pt == "float" and v == 0:
        neg = math.copysign(1.0, v) < 0
        return (x == 0.0) & (_neg_zero(x) if neg else ~_neg_zero(x))
    return x == v


def filter_expr(x: pl.Expr, pt: str, op: str, value: Any) -> pl.Expr:
    """The rows Perspective keeps for the clause ``[column, op, value]``; never null.

    ``x`` is :func:`column_expr`. Null cells pass ``!=`` and ``not in`` only;
    NaN fails every comparison but ``!=`` and ``not in`` (Polars orders NaN
    above every number, so it is excluded by hand); ``<=`` is ``<`` or
    Perspective's ``==``, so ``0.0 <= -0.0`` is false.
    """
    if op == "is null":
        return x.is_null()
    if op == "is not null":
        return x.is_not_null()
    if op in ("in", "not in"):
        hit = pl.lit(False)
        for v in (operand(pt, v) for v in value):
            hit = hit | _same(x, pt, v)
    elif op in ("==", "!="):
        hit = _same(x, pt, operand(pt, value))
    else:
        value = operand(pt, value)
        strict = x < value if op[0] == "<" else x > value
        hit = strict | _same(x, pt, value) if op.endswith("=") else strict
        if pt == "float":
            hit = hit & ~x.is_nan()
    hit = hit.fill_null(False)
    return ~hit if op in ("!=", "not in") else hit


def unsortable(x: pl.Expr) -> pl.Expr:
    """True when float ``x`` holds a value Perspective cannot order consistently.

    NaN compares neither below nor above a number, and ``-0.0`` and ``0.0``
    are neither equal (bitwise) nor ordered; with either, Perspective's
    comparator is not a strict weak order and its result depends on its sort
    algorithm and update history.
    """
    zero = x == 0.0
    neg = _neg_zero(x)
    return x.is_nan().any() | ((zero & neg).any() & (zero & ~neg).any())


def has_nul(name: str) -> pl.Expr:
    """String column ``name`` holds a NUL somewhere."""
    return pl.col(name).cast(pl.Binary).bin.contains(b"\x00").any()  # faster than str.contains


def _cut(v: str) -> str:
    return v.split("\x00", 1)[0]


def py_values(frame: pl.DataFrame, name: str, dtype: str, rows: pl.Series) -> list[Any] | None:
    """Column ``name`` (dtype ``dtype``) of ``frame`` at positions ``rows``, as the values
    :func:`column_expr` holds, read in Python (a few rows: no query); None for a datetime
    (milliseconds as Perspective truncates them: left to Polars)."""
    if dtype.startswith("Datetime"):
        return None
    values = frame.get_column(name).gather(rows).to_list()
    f = float if dtype in ("UInt64", "Float32") else _cut if dtype == "String" else None
    return values if f is None else [v if v is None else f(v) for v in values]
