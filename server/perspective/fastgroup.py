"""Grouped views with ``mean``, ``count`` and integer ``sum`` aggregates, equal to Perspective's.

A grouped view sends its whole result (or its viewport, when it has one).
:func:`plan_grouped` serves the configs :mod:`.fast` routes here; the
result equals :func:`.payload.read_view` of a Perspective view opened with
the same config (``group_rollup_mode`` ``flat``, as coframe opens grouped
views: leaf groups only, no total row).

What Perspective 5.5.1 computes, measured on this machine and checked by
tests/test_fast_views.py after random edits:

- One row per distinct combination of the group columns' values as
  Perspective holds them (so datetimes group by millisecond, strings by
  their text up to a NUL), ordered by the group columns ascending, nulls
  first: the plain sort order, with null a group of its own.
- Columns: the group columns under their own names, then ``columns`` in
  order. A group column also listed in ``columns`` comes out twice under
  one name: not served.
- ``mean``: the sum of the group's non-null values, added one by one in
  index (``_rid``) order as doubles, over their count; null when there
  are none. This holds after removes, inserts and regrouping updates (the
  group is recomputed). NaN and infinities propagate as in IEEE sums.
  Integers are converted to double before adding (a mean of ``2**62``,
  ``2**62``, 1, 3 is the double sum over 4, not the exact one).
- ``count``: the group's rows, nulls included (int64).
- ``sum`` of integers: int64, wrapping on overflow. ``sum`` of floats is
  not added in index order, insertion order or any order tried (the last
  bits differ): not served.

Not served: ``_rid`` anywhere, float group columns (NaN and ``-0.0``
group and order inconsistently), a ``columns`` entry without an explicit
aggregate, aggregates of columns not shown, any other aggregate, sorts,
``split_by``, expressions, other rollup modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from protocol.dtypes import RID

from .fastbase import Clause, check_schema, filter_mask, nul_columns, parse_clause, view_arrow
from .fastexpr import column_expr, ptype

__all__ = ["GroupedPlan", "plan_grouped"]

_KEYS = {"group_by", "columns", "aggregates", "filter", "group_rollup_mode"}
_EMPTY_KEYS = {"split_by", "sort", "expressions"}  # served only when empty
_NUMBERS = ("int32", "int64", "float")
_GROUPABLE = ("int32", "int64", "bool", "str", "date", "datetime")  # and UInt64, a float without NaN


@dataclass(frozen=True, slots=True)
class GroupedPlan:
    """A grouped view this engine serves: group columns, (column, aggregate) pairs, filters."""

    group_by: tuple[tuple[str, str], ...]  # (column, dtype)
    aggregates: tuple[tuple[str, str, str], ...]  # (column, dtype, aggregate)
    filters: tuple[Clause, ...]
    viewport: tuple[int, int] | None
    dtypes: tuple[tuple[str, str], ...]  # (column, dtype) the plan was made for

    def read(self, frame: pl.DataFrame) -> tuple[pa.Table, int]:
        """The view's payload over ``frame`` (a room frame: ``_rid`` first, ascending).

        Raises:
            NotServable: the frame no longer has the columns this plan was made for.
        """
        check_schema(frame, self.dtypes)
        strings = [n for n, d in self.group_by if d == "String"]
        nul = nul_columns(frame, strings + [c.column for c in self.filters if c.dtype == "String"])
        lf = frame.lazy()
        if self.filters:
            lf = lf.filter(filter_mask(self.filters, nul))
        keys = [_key(n, d, nul=n in nul).alias(n) for n, d in self.group_by]
        aggs = [_aggregate(n, d, agg).alias(n) for n, d, agg in self.aggregates]
        names = [n for n, _ in self.group_by]
        out = lf.group_by(keys).agg(aggs).sort(names, nulls_last=False).collect()
        rows = out.height
        if self.viewport is not None:
            start, end = self.viewport
            out = out.slice(start, max(end - start, 0))
        return view_arrow(out, [*names, *(n for n, _, _ in self.aggregates)]), rows


def _key(name: str, dtype: str, *, nul: bool) -> pl.Expr:
    """Group column ``name`` as Perspective holds it, in a type :func:`.fastbase.view_arrow` maps back."""
    x = column_expr(name, dtype, nul=nul)
    if ptype(dtype) == "datetime":
        utc = pl.from_epoch(x * 1000, "us")  # the truncated milliseconds, as naive UTC
        tz = dtype[len("Datetime[") : -1] if dtype.startswith("Datetime[") else None
        return utc if tz is None else utc.dt.replace_time_zone("UTC").dt.convert_time_zone(tz)
    return x


def _aggregate(name: str, dtype: str, agg: str) -> pl.Expr:
    col = pl.col(name)
    if agg == "count":
        return pl.len().cast(pl.Int64)
    if agg == "sum":
        return col.cast(pl.Int64).sum()
    # mean: a running sum in row (_rid) order, which cum_sum is; Polars' sum adds in another order.
    x = col.cast(pl.Float64).drop_nulls()
    return x.cum_sum().last() / x.len().cast(pl.Float64)


def plan_grouped(
    config: dict[str, Any], viewport: tuple[int, int] | None, dtypes: dict[str, str]
) -> GroupedPlan | None:
    """A :class:`GroupedPlan` for a config with ``group_by``, or None (see the module doc).

    ``dtypes`` maps every column of the room (and ``_rid``) to its dtype name.
    """
    if set(config) - _KEYS - _EMPTY_KEYS or any(config.get(k) for k in _EMPTY_KEYS):
        return None
    if config.get("group_rollup_mode", "flat") != "flat":
        return None
    if viewport is not None and (viewport[0] < 0 or viewport[1] <= viewport[0]):
        return None
    group_by, columns = config.get("group_by") or [], config.get("columns")
    aggregates = config.get("aggregates") or {}
    if not group_by or columns is None or set(aggregates) != set(columns):
        return None
    if len(set(group_by)) != len(group_by) or len(set(columns)) != len(columns):
        return None
    used: dict[str, str] = {}
    keys: list[tuple[str, str]] = []
    for name in group_by:
        dtype = dtypes.get(name) if isinstance(name, str) and name != RID else None
        pt = ptype(dtype) if dtype else None
        if dtype is None or name in columns or not (pt in _GROUPABLE or dtype == "UInt64"):
            return None
        keys.append((name, dtype))
        used[name] = dtype
    aggs: list[tuple[str, str, str]] = []
    for name in columns:
        dtype = dtypes.get(name) if isinstance(name, str) and name != RID else None
        agg = aggregates[name]
        pt = ptype(dtype) if dtype else None
        if dtype is None or not (
            agg == "count"
            or (agg == "mean" and pt in _NUMBERS)
            or (agg == "sum" and pt in ("int32", "int64"))
        ):
            return None
        aggs.append((name, dtype, agg))
        used[name] = dtype
    filters: list[Clause] = []
    for clause in config.get("filter", ()):
        c = parse_clause(clause, dtypes)
        if c is None:
            return None
        filters.append(c)
        used[c.column] = c.dtype
    return GroupedPlan(tuple(keys), tuple(aggs), tuple(filters), viewport, tuple(used.items()))
