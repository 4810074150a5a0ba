"""The ``bad_value`` error: how a value a column rejects is named, shown and hinted at.

:func:`bad_value_error` builds the :class:`OpError` every coercion raises
(:mod:`.coerce` and :mod:`.temporal`): the target, its dtype, a hint of what
to send, the first bad value and its position, and up to 5 samples.
:func:`jsonable` and :func:`sample_value` make values fit for error details
and inverse ops. Re-exported by :mod:`.coerce` and :mod:`.dtypes`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from protocol import ErrorCode
from protocol.dtypes import INT_RANGE, dtype_family

from .state import OpError

__all__ = ["jsonable", "sample_value", "bad_value_error"]

_HINTS = {
    "int": "send whole numbers from {lo} to {hi}",
    "float": "send numbers",
    "bool": "send true or false",
    "str": "send text",
    "date": "send dates as 'YYYY-MM-DD'",
    "datetime": "send ISO 8601 times without an offset, like '2024-05-01T12:30:00'",
    "datetime_tz": "send ISO 8601 times, like '2024-05-01T12:30:00+02:00' (no offset means UTC)",
}


def jsonable(v: Any) -> Any:
    """A JSON- and msgpack-friendly form of one value (for error details and inverse ops)."""
    if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
        return str(v)  # msgpack carries at most 64-bit integers
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    if isinstance(v, np.generic):
        return v.item()
    return repr(v)


def sample_value(v: Any) -> Any:
    """:func:`jsonable`, with long text cut to 100 characters (for error samples)."""
    j = jsonable(v)
    return j[:100] + "…" if isinstance(j, str) and len(j) > 100 else j


def _show(v: Any) -> str:
    text = repr(jsonable(v))
    return text if len(text) <= 60 else text[:57] + "..."


def _hint(dtype: str) -> str:
    fam = dtype_family(dtype)
    if dtype in ("Int64", "UInt64"):
        return "send whole numbers" if dtype == "Int64" else "send whole numbers from 0 up"
    if fam == "int":
        lo, hi = INT_RANGE[dtype]
        return _HINTS["int"].format(lo=lo, hi=hi)
    if fam == "datetime" and dtype != "Datetime":
        return _HINTS["datetime_tz"]
    return _HINTS[fam]


def bad_value_error(
    what: str, dtype: str, positions: Sequence[int], value_at: Callable[[int], Any]
) -> OpError:
    """The ``bad_value`` error for the given bad positions (up to 5 samples)."""
    n = len(positions)
    first = int(positions[0])
    more = f" and {n - 1} more bad value{'s' if n > 2 else ''}" if n > 1 else ""
    samples = [{"position": int(p), "value": sample_value(value_at(int(p)))} for p in positions[:5]]
    return OpError(
        ErrorCode.BAD_VALUE,
        f"{what} is {dtype}; {_hint(dtype)}: got {_show(value_at(first))} at position {first}{more}",
        dtype=dtype,
        count=n,
        samples=samples,
    )
