"""Grouped views of ``count``, ``sum``, ``mean``, ``max`` and ``min``, equal to Perspective's.

A grouped view sends its whole result (or its viewport, when it has one).
:func:`plan_grouped` serves the configs :mod:`.fast` routes here; the
result equals :func:`.payload.read_view` of a Perspective view opened with
the same config (``group_rollup_mode`` ``flat``, as coframe opens grouped
views: leaf groups only, no total row), float sums and means to within
Perspective's own rounding (below). The aggregates are kept per group by a
:class:`.fasttally.Tally`, updated from the rows that changed between reads.

What Perspective 5.5.1 computes, measured on this machine and checked by
tests/test_fast_views.py after random edits:

- One row per distinct combination of the group columns' values as
  Perspective holds them (so datetimes group by millisecond, strings by
  their text up to a NUL), ordered by the group columns ascending, nulls
  first: the plain sort order, with null a group of its own.
- Columns: the group columns under their own names, then ``columns`` in
  order. A group column also listed in ``columns`` comes out twice under
  one name: not served.
- ``count``: the group's rows, nulls included (int64).
- ``sum`` of integers: int64, wrapping on overflow.
- ``sum`` of floats (and of UInt64, which Perspective holds as doubles):
  0.0 for a group without values; NaN and infinities propagate as in IEEE
  sums. Perspective adds in an order of its own (a fresh view matches no
  index or insertion order; a live one adds ``new - old`` to the old sum
  per update, drifting from a fresh view), so no engine can match its last
  bits. The tally's sum is exact, rounded once; both are within the
  recursive-summation bound ``n * 2**-53 * sum(|x|)`` of the true sum.
- ``mean``: the sum of the group's non-null values over their count (the
  exact quotient rounded once here; Perspective divides its double sum),
  null when there are none. Integers are converted to double first, as
  Perspective does (a mean of ``2**62 + 1`` is that of ``2**62``).

- ``max`` and ``min`` of the values as Perspective holds them (datetimes
  as milliseconds, strings cut at a NUL), in the column's type; null is
  below every value, so a ``max`` is null only when every value of the
  group is, a ``min`` as soon as one is. A float column holding NaN, or
  both ``-0.0`` and ``0.0``, in the rows the filters keep is not served
  (Perspective's result then depends on its order). The tally keeps the
  extreme and how many rows hold it; when the last of them leaves, the
  view is grouped again.
- ``split_by`` one column (an integer, boolean, string or date column not
  grouped by or shown): columns per split value, :mod:`.fastrender`.

Not served: ``_rid`` anywhere, float group columns (NaN and ``-0.0``
group and order inconsistently), a ``columns`` entry without an explicit
aggregate, aggregates of columns not shown, any other aggregate, sorts,
``split_by`` without ``group_by`` or of more than one column (or another
type), expressions, other rollup modes, more than :data:`MAX_GROUPS`
groups.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from protocol.dtypes import RID

from ..ops.state import State
from .fastbase import Clause, NotServable, check_schema, filter_mask, nul_columns, parse_clause
from .fastexpr import column_expr, ptype, py_values, unsortable
from .fastrender import cells, render
from .fasttally import Tally
from .fasttop import FOLLOW_ROWS, NeedsRead, changed_positions, gather

__all__ = ["GroupedPlan", "Touched", "plan_grouped"]

_KEYS = {"group_by", "split_by", "columns", "aggregates", "filter", "group_rollup_mode"}
_EMPTY_KEYS = {"sort", "expressions"}  # served only when empty
_SPLITTABLE = ("int32", "int64", "bool", "str", "date")  # printed in split column names as measured
_NUMBERS = ("int32", "int64", "float")
_GROUPABLE = ("int32", "int64", "bool", "str", "date", "datetime")  # and UInt64, a float without NaN

#: The rows each delta touched: (seq_from, seq_to, the rids it upserted or deleted), or None as
#: rids when it changed the schema; oldest first (:func:`.fastviews.touched_rids`).
Touched = Sequence[tuple[int, int, np.ndarray | None]]

#: A view with more groups is served by Perspective (the tally holds a Python object per group).
MAX_GROUPS = 100_000
#: More changed rows than this since the last read: group the whole frame again.
MAX_UPDATE_ROWS = 20_000
#: A view with more groups is only read in a worker thread (:meth:`GroupedPlan.follow` refuses it).
FOLLOW_GROUPS = 2_000
#: ... and one whose payload has more cells (rows × columns, split columns counted).
FOLLOW_CELLS = 20_000


@dataclass(frozen=True, slots=True)
class GroupedPlan:
    """A grouped view this engine serves: group columns, (column, aggregate) pairs, filters."""

    group_by: tuple[tuple[str, str], ...]  # (column, dtype)
    aggregates: tuple[tuple[str, str, str], ...]  # (column, dtype, Tally kind: count, mean, isum, fsum)
    filters: tuple[Clause, ...]
    viewport: tuple[int, int] | None
    dtypes: tuple[tuple[str, str], ...]  # (column, dtype) the plan was made for
    split: tuple[tuple[str, str], ...] = ()  # the split_by column and dtype, if any

    cache: _Cache = field(default_factory=lambda: _Cache(), compare=False, repr=False)

    @property
    def keys(self) -> tuple[tuple[str, str], ...]:
        """The tally's key columns: the group columns, then the split column."""
        return self.group_by + self.split

    def read(
        self, frame: pl.DataFrame, seq: int | None = None, touched: Touched = (), state: State | None = None
    ) -> tuple[pa.Table, int]:
        """The view's payload over ``frame`` (a room frame: ``_rid`` first, ascending).

        The first read groups the whole frame; later ones update the
        :class:`.fasttally.Tally` from the rows that changed since the read
        before, unless rows were added or removed (or too many changed), when
        it groups the whole frame again. The changed rows are those the
        deltas in ``touched`` upserted, when ``frame`` is the state at ``seq``
        and ``touched`` covers every delta since the last read; else the rows
        whose used columns differ (about 2 ms per column at 1M rows).

        Raises:
            NotServable: the frame no longer has the columns this plan was made for,
                or it has more than :data:`MAX_GROUPS` groups.
        """
        check_schema(frame, self.dtypes)
        floats = [(n, d) for n, d, agg in self.aggregates if agg in ("max", "min") and ptype(d) == "float"]
        if floats:  # over the rows the filters keep, as Perspective aggregates them
            lf = frame.lazy()
            if self.filters:
                strings = [c.column for c in self.filters if c.dtype == "String"]
                lf = lf.filter(filter_mask(self.filters, nul_columns(frame, strings)))
            bad = lf.select(unsortable(column_expr(n, d)).alias(n) for n, d in floats).collect().row(0)
            for (name, _), hit in zip(floats, bad, strict=True):
                if hit:
                    raise NotServable(
                        f"column '{name}' holds NaN or both -0.0 and 0.0, whose max and min Perspective"
                        " finds inconsistently",
                        column=name,
                    )
        used = [RID, *(n for n, _ in self.dtypes if n != RID)]
        cur = frame.select(used)
        c = self.cache
        with c.lock:
            nkeys = len(self.keys)
            if c.tally is None:
                c.tally = Tally([kind for _, _, kind in self.aggregates])
            prev, prev_seq, c.prev, c.seq = c.prev, c.seq, None, None
            changed = _noted(prev, prev_seq, cur, seq, touched)
            c.from_deltas += changed is not None
            if changed is None:
                changed = _changed(prev, cur, used[1:])
            if changed is None or len(changed) > MAX_UPDATE_ROWS:
                c.tally.build(self._rows(cur), nkeys)
            elif len(changed):
                c.tally.update(self._rows(prev[changed]), self._rows(cur[changed]), nkeys)  # type: ignore[index]
                if c.tally.lost:  # a max or min lost its last row: the next one is somewhere else
                    c.tally.build(self._rows(cur), nkeys)
            c.prev, c.seq = cur, seq
            c.ids = state.rids() if state is not None else cur.get_column(RID).to_numpy()
            return self._render(c.tally)

    def follow(self, state: State, seq: int, touched: Touched) -> tuple[pa.Table, int] | None:
        """The view at ``seq`` (the room's ``state``) from the rows the deltas in ``touched``
        changed since the last read or follow, or None when none changed: cheap enough for the
        event loop.

        Raises:
            NeedsRead: the schema changed, the deltas have a gap, too many
                rows changed, the view has too many groups, or a read is in progress.
        """
        c = self.cache
        if not c.lock.acquire(blocking=False):
            raise NeedsRead("a read is in progress")
        try:
            if c.tally is None or c.prev is None or c.seq is None:
                raise NeedsRead("no read to follow yet")
            if seq <= c.seq:
                return None
            if len(c.tally.groups) > FOLLOW_GROUPS:
                raise NeedsRead(f"more than {FOLLOW_GROUPS:,} groups")
            if cells(c.tally, len(self.group_by), len(self.aggregates), bool(self.split)) > FOLLOW_CELLS:
                raise NeedsRead(f"more than {FOLLOW_CELLS:,} cells to render")
            try:
                check_schema(state.frame, self.dtypes)
            except NotServable as e:
                raise NeedsRead(str(e)) from None
            ids = state.rids()
            moves = changed_positions(c.ids, c.seq, ids, seq, touched)
            if moves is None or len(moves) > FOLLOW_ROWS:
                raise NeedsRead("the schema changed, the deltas have a gap, or many rows changed")
            if len(moves):
                nkeys = len(self.keys)
                old_pos = pl.Series(moves.old, dtype=pl.UInt32)
                new_pos = pl.Series(moves.new, dtype=pl.UInt32)
                old, new = self._py_rows(c.prev, old_pos), self._py_rows(state.frame, new_pos)
                if old is None or new is None:
                    used = [n for n, _ in self.dtypes]
                    both = gather(c.prev, used, moves.old).vstack(gather(state.frame, used, moves.new))
                    rows = self._rows(both, cut=True)
                    old, new = rows.head(len(moves.old)).rows(), rows.tail(len(moves.new)).rows()
                self._check_floats(new, nkeys)
                c.tally.update_rows(old, new, nkeys)
                if c.tally.lost:  # a max or min lost its last row: the next one is somewhere else
                    c.tally, c.prev, c.seq = None, None, None
                    raise NeedsRead("a max or min lost its last row")
            c.prev, c.ids, c.seq = state.frame, ids, seq
            return self._render(c.tally) if len(moves) else None
        finally:
            c.lock.release()

    def _check_floats(self, rows: list[tuple[Any, ...]], nkeys: int) -> None:
        """Raise NeedsRead when a new value of a float max or min is NaN or a zero (the full read
        checks the whole column for values Perspective orders inconsistently)."""
        for i, (_, dtype, agg) in enumerate(self.aggregates):
            if agg in ("max", "min") and ptype(dtype) == "float":
                for row in rows:
                    x = row[nkeys + i]
                    if x is not None and (x != x or x == 0.0):
                        raise NeedsRead("a new value of a float max or min is NaN or zero")

    def _py_rows(self, frame: pl.DataFrame, pos: pl.Series) -> list[tuple[Any, ...]] | None:
        """``frame``'s rows at ``pos`` as :meth:`_rows` gives them, read in Python (a few rows: no
        query); None for a view with filters or a datetime group column (left to :meth:`_rows`)."""
        if self.filters:
            return None
        cols: list[list[Any]] = []
        for name, dtype in self.keys:
            values = py_values(frame, name, dtype, pos)
            if values is None:
                return None
            cols.append(values)
        for name, dtype, agg in self.aggregates:
            if agg == "count":
                cols.append([0] * len(pos))
                continue
            values = py_values(frame, name, dtype, pos)  # a max or min: as a key's values
            if values is None:
                return None
            if agg not in ("max", "min"):
                f = int if agg == "isum" else float  # as _value casts: Int64, or Float64
                values = [v if v is None else f(v) for v in values]
            cols.append(values)
        cols.append([True] * len(pos))
        return list(zip(*cols, strict=True))

    def _render(self, tally: Tally) -> tuple[pa.Table, int]:
        """The view's payload from ``tally`` (:func:`.fastrender.render`)."""
        if len(tally.groups) > MAX_GROUPS:
            raise NotServable(
                f"more than {MAX_GROUPS:,} groups: served by Perspective", column=self.group_by[0][0]
            )
        return render(
            tally,
            [n for n, _ in self.group_by],
            self.split[0][0] if self.split else None,
            [(n, agg) for n, _, agg in self.aggregates],
            self.viewport,
        )

    def _rows(self, frame: pl.DataFrame, *, cut: bool = False) -> pl.DataFrame:
        """``frame``'s rows as :class:`.fasttally.Tally` takes them: keys, values, ``keep``.

        ``cut``: cut every string at a NUL without looking for one first (the
        same values either way; cheaper on a few rows).
        """
        strings = [n for n, d in self.keys if d == "String"]
        strings += [c.column for c in self.filters if c.dtype == "String"]
        strings += [n for n, d, agg in self.aggregates if d == "String" and agg in ("max", "min")]
        nul = set(strings) if cut else nul_columns(frame, strings)
        keep = filter_mask(self.filters, nul) if self.filters else pl.lit(True)
        keys = [_key(n, d, nul=n in nul).alias(f"k{i}") for i, (n, d) in enumerate(self.keys)]
        values = [
            (_key(n, d, nul=n in nul) if agg in ("max", "min") else _value(n, agg)).alias(f"v{i}")
            for i, (n, d, agg) in enumerate(self.aggregates)
        ]
        return frame.lazy().select(*keys, *values, keep.alias("keep")).collect()


class _Cache:
    """What a plan keeps between reads: the tally and the used columns it was last updated to."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.prev: pl.DataFrame | None = None
        self.ids: np.ndarray = np.empty(0, dtype=np.uint64)  # the rids of ``prev``
        self.seq: int | None = None  # the room's seq of ``prev``, when the reader gave it
        self.from_deltas = 0  # reads that took the changed rows from the deltas' upserted rids
        self.tally: Tally | None = None


def _noted(
    prev: pl.DataFrame | None, prev_seq: int | None, cur: pl.DataFrame, seq: int | None, touched: Touched
) -> pl.Series | None:
    """Positions of the rows the deltas of ``touched`` upserted after ``prev_seq`` up to ``seq``, or
    None when they cannot tell (a gap, deleted rows, a schema change, rows differ)."""
    if prev is None or prev_seq is None or seq is None or seq < prev_seq:
        return None
    rids = []
    covered = prev_seq
    for seq_from, seq_to, upserted in touched:
        if seq_to <= prev_seq or seq_from > seq:
            continue
        if seq_from > covered + 1 or seq_to > seq or upserted is None:
            return None
        covered = seq_to
        rids.append(upserted)
    if covered != seq or not cur.height or prev.height != cur.height:
        return None
    all_rids = cur.get_column(RID).to_numpy()
    if not _same_rids(prev.get_column(RID).to_numpy(), all_rids):
        return None
    if not rids:
        return pl.Series([], dtype=pl.UInt32)
    wanted = np.unique(np.concatenate(rids))
    at = np.minimum(np.searchsorted(all_rids, wanted), len(all_rids) - 1)
    return pl.Series(at[all_rids[at] == wanted], dtype=pl.UInt32)


def _same_rids(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two frames' ``_rid`` columns (zero-copy NumPy views) are equal: states that only
    changed cells share the column's buffer, which answers without comparing 1M values."""
    if len(a) != len(b):
        return False
    return bool(a.ctypes.data == b.ctypes.data or np.array_equal(a, b))


def _changed(prev: pl.DataFrame | None, cur: pl.DataFrame, columns: list[str]) -> pl.Series | None:
    """Positions of the rows whose ``columns`` differ, or None when the rows themselves differ."""
    if prev is None or not _same_rids(prev.get_column(RID).to_numpy(), cur.get_column(RID).to_numpy()):
        return None
    mask = None
    for name in columns:
        m = prev.get_column(name).ne_missing(cur.get_column(name))
        mask = m if mask is None else mask | m
    return mask.arg_true() if mask is not None else pl.Series([], dtype=pl.UInt32)


def _key(name: str, dtype: str, *, nul: bool) -> pl.Expr:
    """Group column ``name`` as Perspective holds it, in a type :func:`.fastbase.view_arrow` maps back."""
    x = column_expr(name, dtype, nul=nul)
    if ptype(dtype) == "datetime":
        utc = pl.from_epoch(x * 1000, "us")  # the truncated milliseconds, as naive UTC
        tz = dtype[len("Datetime[") : -1] if dtype.startswith("Datetime[") else None
        return utc if tz is None else utc.dt.replace_time_zone("UTC").dt.convert_time_zone(tz)
    return x


def _value(name: str, agg: str) -> pl.Expr:
    """The value a :class:`.fasttally.Tally` adds up for ``agg`` (Perspective means add doubles)."""
    if agg == "count":
        return pl.lit(0, dtype=pl.Int8)
    if agg == "isum":
        return pl.col(name).cast(pl.Int64)
    return pl.col(name).cast(pl.Float64)


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
        extreme = agg in ("max", "min") and (pt in _GROUPABLE or pt == "float")
        if dtype is None or not (agg == "count" or extreme or (agg in ("mean", "sum") and pt in _NUMBERS)):
            return None
        kind = ("isum" if pt in ("int32", "int64") else "fsum") if agg == "sum" else agg
        aggs.append((name, dtype, kind))
        used[name] = dtype
    split: list[tuple[str, str]] = []
    for name in config.get("split_by") or []:
        dtype = dtypes.get(name) if isinstance(name, str) and name != RID else None
        if dtype is None or split or name in group_by or name in columns or ptype(dtype) not in _SPLITTABLE:
            return None  # one split column, of a type whose printed values were measured
        split.append((name, dtype))
        used[name] = dtype
    filters: list[Clause] = []
    for clause in config.get("filter", ()):
        c = parse_clause(clause, dtypes)
        if c is None:
            return None
        filters.append(c)
        used[c.column] = c.dtype
    return GroupedPlan(tuple(keys), tuple(aggs), tuple(filters), viewport, tuple(used.items()), tuple(split))
