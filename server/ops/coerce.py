"""Strict coercion of user values into column dtypes, and back out to scalars.

``coerce`` turns user values (JSON scalars, or date/datetime objects) into a
Series of the column dtype and rejects what does not fit instead of
guessing (PROTOCOL.md "Values"); ``coerce_series`` does the same for typed
(Arrow) input; ``to_scalars`` turns a Series back into JSON-friendly scalars
that ``coerce`` reads back exactly.

Temporal parsing (ISO 8601 text and date/datetime objects) lives in
:mod:`.temporal`, and the ``bad_value`` error every coercion raises in
:mod:`.bad_value`; :func:`parse_temporal`, :func:`bad_value_error`,
:func:`jsonable` and :func:`sample_value` are re-exported here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from protocol import ErrorCode
from protocol.dtypes import INT_RANGE, dtype_family, time_zone

from ._names import polars_dtype
from .bad_value import bad_value_error, jsonable, sample_value
from .state import OpError
from .temporal import coerce_temporal_objects, parse_temporal

__all__ = [
    "coerce",
    "coerce_series",
    "arrow_column",
    "parse_temporal",
    "to_scalars",
    "json_values",
    "jsonable",
    "sample_value",
    "bad_value_error",
    "null_series",
]

# Python value kinds each dtype family accepts (besides None).
_ACCEPTS = {
    "int": {"int", "float"},
    "float": {"int", "float"},
    "bool": {"bool"},
    "str": {"str"},
    "date": {"str", "date"},
    "datetime": {"str", "date", "datetime"},
}


def _kind(t: type) -> str:
    if t is type(None):
        return "null"
    if issubclass(t, (bool, np.bool_)):
        return "bool"
    if issubclass(t, (int, np.integer)):
        return "int"
    if issubclass(t, (float, np.floating)):
        return "float"
    if issubclass(t, str):
        return "str"
    if issubclass(t, dt.datetime):
        return "datetime"
    if issubclass(t, dt.date):
        return "date"
    return "other"


def _bad_positions(vals: list[Any], pred: Callable[[Any], bool]) -> list[int]:
    return [i for i, v in enumerate(vals) if v is not None and pred(v)]


def coerce(values: Sequence[Any], dtype_name: str, *, what: str) -> pl.Series:
    """Strictly convert user values to a Series of ``dtype_name`` (PROTOCOL.md "Values").

    ``what`` names the target in messages, e.g. ``"column 'price'"``. None is
    always allowed. Ints go into int columns (range-checked; integral floats
    too); ints and floats into float columns; bools only into Boolean; only
    strings into String; ISO strings or date/datetime objects into Date and
    Datetime (Date takes no datetime; a zone-less Datetime takes no offset;
    a zoned Datetime reads a time without offset as UTC).

    Raises:
        OpError: ``bad_value`` naming the first bad value and its position,
            with up to 5 ``samples``; ``bad_dtype`` for an unknown dtype.
    """
    target = polars_dtype(dtype_name)
    fam = dtype_family(dtype_name)
    vals = values if isinstance(values, list) else list(values)
    kinds = {_kind(t) for t in set(map(type, vals))} - {"null"}
    accepts = _ACCEPTS[fam]
    if not kinds <= accepts:
        bad = _bad_positions(vals, lambda v: _kind(type(v)) not in accepts)
        raise bad_value_error(what, dtype_name, bad, vals.__getitem__)
    if not kinds:
        return null_series(target, len(vals))
    if fam == "int":
        return _coerce_ints(vals, kinds, dtype_name, target, what)
    if fam == "float":
        return _coerce_floats(vals, dtype_name, target, what)
    if fam in ("bool", "str"):
        return pl.Series("", vals, dtype=target, strict=True)
    if kinds == {"str"}:
        out, bad_pos = parse_temporal(pl.Series("", vals, dtype=pl.String), dtype_name)
        if len(bad_pos):
            raise bad_value_error(what, dtype_name, bad_pos, vals.__getitem__)
        return out
    return coerce_temporal_objects(vals, dtype_name, target, what)


def _coerce_ints(vals: list[Any], kinds: set[str], dtype: str, target: pl.DataType, what: str) -> pl.Series:
    if "float" in kinds:
        f = pl.Series("", vals, dtype=pl.Float64, strict=False)
        whole = f.is_finite() & (f == f.floor())
        bad = np.flatnonzero((f.is_not_null() & ~whole).fill_null(False).to_numpy())
        if len(bad):
            raise bad_value_error(what, dtype, bad, vals.__getitem__)
        if kinds == {"float"}:
            out = f.cast(target, strict=False)
            if out.null_count() != f.null_count():
                bad = np.flatnonzero((out.is_null() & f.is_not_null()).to_numpy())
                raise bad_value_error(what, dtype, bad, vals.__getitem__)
            return out
        vals = [int(v) if isinstance(v, (float, np.floating)) else v for v in vals]
    try:
        return pl.Series("", vals, dtype=target, strict=True)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        lo, hi = INT_RANGE[dtype]
        bad = _bad_positions(vals, lambda v: not lo <= int(v) <= hi)
        if not bad:  # pragma: no cover - construction failed for another reason
            raise
        raise bad_value_error(what, dtype, bad, vals.__getitem__) from None


def _coerce_floats(vals: list[Any], dtype: str, target: pl.DataType, what: str) -> pl.Series:
    s = pl.Series("", vals, dtype=pl.Float64, strict=False)  # ints too big for a float become null
    if s.null_count() != vals.count(None):
        bad = np.flatnonzero(s.is_null().to_numpy() & np.array([v is not None for v in vals]))
        raise bad_value_error(what, dtype, bad, vals.__getitem__)
    return _to_float32(s, what, vals.__getitem__) if dtype == "Float32" else s


def _to_float32(s: pl.Series, what: str, value_at: Callable[[int], Any]) -> pl.Series:
    """Cast Float64 to Float32, rejecting finite values that overflow to infinity."""
    out = s.cast(pl.Float32)
    bad = np.flatnonzero((s.is_finite() & ~out.is_finite()).fill_null(False).to_numpy())
    if len(bad):
        raise bad_value_error(what, "Float32", bad, value_at)
    return out


# --------------------------------------------------------------------------- typed input


def arrow_column(table: pa.Table, name: str) -> pl.Series:
    """One column of an Arrow table as a Polars Series.

    Raises:
        OpError: ``bad_value`` for an Arrow type Polars cannot read.
    """
    try:
        s = pl.from_arrow(table.column(name))
    except Exception as e:  # noqa: BLE001 - any Arrow type Polars cannot read
        raise OpError(
            ErrorCode.BAD_VALUE,
            f"column '{name}' has Arrow type {table.schema.field(name).type}, which cannot be read"
            f" ({str(e).strip().splitlines()[0][:200]})",
            column=name,
        ) from None
    if not isinstance(s, pl.Series):  # pragma: no cover - from_arrow of one column is a Series
        raise OpError(ErrorCode.BAD_VALUE, f"column '{name}' could not be read as one column")
    return s.rename(name)


def _series_family(dtype: pl.DataType) -> str:
    if dtype == pl.Null:
        return "null"
    if dtype.is_integer():
        return "int"
    if dtype.is_float() or isinstance(dtype, pl.Decimal):
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "str"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    return "other"


def _raise_new_nulls(src: pl.Series, out: pl.Series, what: str, dtype: str) -> None:
    bad = np.flatnonzero((out.is_null() & src.is_not_null()).to_numpy())
    if len(bad):
        raise bad_value_error(what, dtype, bad, lambda i: src[i])


def coerce_series(s: pl.Series, dtype_name: str, *, what: str) -> pl.Series:
    """Strictly convert a typed Series (e.g. an Arrow column) to ``dtype_name``.

    The same rules as :func:`coerce`, by source dtype: integers into int
    columns (range-checked) and floats only when integral; numbers into float
    columns; Boolean only into Boolean; text only into String, or parsed as
    ISO 8601 into Date/Datetime; Date into Date or Datetime; a Datetime of any
    unit into Datetime (a zone-less source into a zoned column is read as
    UTC; a zoned source cannot go into a zone-less column). Null goes anywhere.

    Raises:
        OpError: ``bad_value`` with up to 5 samples.
    """
    target = polars_dtype(dtype_name)
    fam = dtype_family(dtype_name)
    src = _series_family(s.dtype)
    s = s.rename("")
    if s.dtype == target:
        return s
    if src == "null":
        return null_series(target, len(s))
    ok = (
        src == fam
        or (fam == "int" and src == "float")
        or (fam == "float" and src == "int")
        or (fam in ("date", "datetime") and src == "str")
        or (fam == "datetime" and src == "date")
    )
    if fam == "datetime" and src == "datetime" and time_zone(target) is None and time_zone(s.dtype):
        ok = False
    if not ok:
        bad = np.flatnonzero(s.is_not_null().to_numpy())
        if not len(bad):
            return null_series(target, len(s))
        raise bad_value_error(f"{what} ({s.dtype} given)", dtype_name, bad, lambda i: s[i])
    if src == "str" and fam in ("date", "datetime"):
        out, bad = parse_temporal(s, dtype_name)
        if len(bad):
            raise bad_value_error(what, dtype_name, bad, lambda i: s[i])
        return out
    if src == "str":
        return s.cast(pl.String)
    if fam == "int" and src == "float":
        f = s.cast(pl.Float64)
        whole = f.is_finite() & (f == f.floor())
        frac = np.flatnonzero((f.is_not_null() & ~whole).fill_null(False).to_numpy())
        if len(frac):
            raise bad_value_error(what, dtype_name, frac, lambda i: s[i])
        s = f
    if src == "datetime" and time_zone(s.dtype) is None and time_zone(target) is not None:
        s = s.dt.replace_time_zone("UTC")  # a zone-less time into a zoned column is UTC
    if dtype_name == "Float32":
        return _to_float32(s.cast(pl.Float64), what, lambda i: s[i])
    out = s.cast(target, strict=False)
    _raise_new_nulls(s, out, what, dtype_name)
    return out


# --------------------------------------------------------------------------- output


def null_series(dtype: str | pl.DataType, n: int) -> pl.Series:
    """``n`` nulls of a dtype (name or Polars dtype), cheaply for small and large ``n``."""
    target = polars_dtype(dtype) if isinstance(dtype, str) else dtype
    if n < 10_000:
        return pl.Series("", [None] * n, dtype=target)
    return pl.Series("", dtype=target).extend_constant(None, n)


def to_scalars(s: pl.Series) -> list[Any]:
    """JSON-friendly Python values of a Series; :func:`coerce` reads them back exactly.

    Dates become ``'YYYY-MM-DD'`` and datetimes ISO 8601 strings (with the
    UTC offset for a zoned column); other values stay Python scalars.
    """
    return json_values(s.to_list(), s.dtype)


def json_values(vals: list[Any], dtype: pl.DataType) -> list[Any]:
    """Python values of a column of ``dtype`` made JSON-friendly (dates as ISO text)."""
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        return [None if v is None else v.isoformat() for v in vals]
    return vals
