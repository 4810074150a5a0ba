"""Temporal parsing: ISO 8601 text and date/datetime objects into Date and Datetime columns.

:func:`parse_temporal` parses a Series of strings (vectorized for the common
layout, one by one for the rest) and reports the positions that failed;
:func:`coerce_temporal_objects` takes a mix of strings and date/datetime
objects and raises ``bad_value``. The rules (PROTOCOL.md "Values"): Date
takes no datetime; a zone-less Datetime takes no offset; a zoned Datetime
reads a time without offset as UTC. :mod:`.coerce` uses both and re-exports
:func:`parse_temporal`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl

from protocol.dtypes import dtype_family, time_zone

from ._names import polars_dtype
from .bad_value import bad_value_error

__all__ = ["parse_temporal", "coerce_temporal_objects"]

_BAD: Any = object()  # sentinel for a value that did not parse


def _parse_one(v: str, fam: str, tz: str | None) -> Any:
    try:
        if fam == "date":
            return dt.date.fromisoformat(v)
        d = dt.datetime.fromisoformat(v)
    except ValueError:
        return _BAD
    if tz is None:
        return _BAD if d.tzinfo is not None else d
    return d if d.tzinfo is not None else d.replace(tzinfo=dt.UTC)


def parse_temporal(strs: pl.Series, dtype: str) -> tuple[pl.Series, np.ndarray]:
    """Parse ISO 8601 strings into a Date/Datetime dtype: (values, positions that failed).

    A vectorized ``str.strptime`` takes the common layout; the rest go through
    ``date.fromisoformat``/``datetime.fromisoformat``. A string with an offset
    fails for a zone-less Datetime; a string without one, for a zoned
    Datetime, is read as UTC. Failed positions hold null.
    """
    target = polars_dtype(dtype)
    fam = dtype_family(dtype)
    tz = time_zone(target)
    strs = strs.cast(pl.String)
    if fam == "date":
        out = strs.str.strptime(pl.Date, "%Y-%m-%d", strict=False)
    else:
        out = strs.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S%.f", strict=False)
        if tz is not None:
            out = out.dt.replace_time_zone("UTC").dt.convert_time_zone(tz)
    left = np.flatnonzero((out.is_null() & strs.is_not_null()).to_numpy())
    if not len(left):
        return out.rename(""), np.empty(0, dtype=np.int64)
    parsed = [_parse_one(v, fam, tz) for v in strs.gather(left).to_list()]
    ok = np.array([p is not _BAD for p in parsed], dtype=bool)
    if ok.any():
        good = pl.Series([p for p in parsed if p is not _BAD], dtype=target)
        out = out.clone()
        out.scatter(left[ok], good)
    return out.rename(""), left[~ok]


def coerce_temporal_objects(vals: list[Any], dtype: str, target: pl.DataType, what: str) -> pl.Series:
    """Date/Datetime objects and ISO strings (mixed) as a Series of ``target``.

    Raises:
        OpError: ``bad_value`` for what does not fit the dtype.
    """
    fam = dtype_family(dtype)
    tz = time_zone(target)

    def conv(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, str):
            return _parse_one(v, fam, tz)
        if fam == "date":
            return _BAD if isinstance(v, dt.datetime) else v
        d = v if isinstance(v, dt.datetime) else dt.datetime(v.year, v.month, v.day)
        if tz is None:
            return _BAD if d.tzinfo is not None else d
        return d if d.tzinfo is not None else d.replace(tzinfo=dt.UTC)

    objs = [conv(v) for v in vals]
    bad = [i for i, o in enumerate(objs) if o is _BAD]
    if bad:
        raise bad_value_error(what, dtype, bad, vals.__getitem__)
    return pl.Series("", objs, dtype=target)
