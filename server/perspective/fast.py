"""Plain (ungrouped) views read straight from the room's Polars frame, equal to Perspective's.

A plain view sends a viewport (PROTOCOL.md §14). Perspective 5.5.1 keeps a
sorted view sorted by re-sorting every row on each update (about 740 ms at
1M rows), while a lazy Polars sort + slice over the frame (a top-k)
finds a 100-row viewport in about 10 ms (one key) to 40 ms (a string key
then a float key). :func:`plan_fast` says whether a view config is one
this engine serves; :meth:`FastPlan.read` then returns exactly what
:func:`.payload.read_view` returns for a Perspective view with that config
opened over a table holding the same rows: the same Arrow table (column
names, order and types, row order, values) and the same total row count.

What Perspective 5.5.1 does, measured on this machine (a table indexed on
a float64 ``_rid``, ``table.view(sort=..., filter=...)``, ``to_arrow``;
tests/test_fast_views.py checks each against Perspective after random
edits):

Sorting.
  - Directions ``asc`` and ``desc`` sort; ``col asc``/``col desc`` sort
    only split columns (a plain view keeps index order); ``asc abs``/
    ``desc abs`` order floats with nulls as if zero, inconsistently; ``none``
    is not a no-op on a float column holding NaN. Only ``asc``/``desc`` are served.
  - Nulls come first ascending and last descending.
  - Ties, in both directions, are in index (``_rid``) order, ascending;
    multi-key sorts compare the next key first.
  - Strings compare as bytes (``"B" < "Z" < "a" < "é"``), ``""`` after null;
    a string is cut at its first NUL (``"a\\0b"`` is held, shown and
    compared as ``"a"``). Booleans: ``False < True``. Dates and
    datetimes by value, datetimes as the milliseconds Perspective holds
    (microseconds truncated toward zero, as Arrow's cast does), zoned ones
    as UTC instants.
  - Floats: NaN and ``-0.0`` beside ``0.0`` break the comparator (a random
    order that depends on the rows and the update history), so a read
    whose float sort key holds either raises :class:`NotServable`.
  - No ``sort`` (or ``[]``): index order, which is the frame's order.

Filters (clauses are and-ed).
  - ``is null``/``is not null`` need a third item, which is ignored
    (Perspective rejects a two-item clause: not served, so it errs as before).
  - Numbers are read as a double, then cast to the column's type: ``2.5``
    on an int column means ``2``, and an int32 column wraps a value
    outside its range. Served: ints within int32 on int32 columns, within
    ±2**53 on int64 and float columns, finite floats on float columns.
  - Null cells pass only ``!=`` and ``not in``. NaN passes only ``!=``
    and ``not in``. ``==`` on floats is bitwise on zeros (``0.0 == -0.0``
    is false) and ``<=``/``>=`` are ``<``/``>`` or that ``==``.
  - Strings: ``==``, ``!=``, ``<``... as bytes; ``contains``, ``begins
    with`` and ``ends with`` fold ASCII case but not ``é``/``É``: not served.
  - Booleans: ``==``, ``!=``, ``in``, ``not in``.
  - Dates and datetimes take text, read as UTC whatever the process's
    ``TZ`` (checked with UTC, America/New_York, Asia/Tokyo); a zoned
    column is compared by its UTC instant. Perspective also reads
    ``2024/01/01``, ``01/01/2024``, zones and epoch numbers; served:
    ``YYYY-MM-DD`` on dates, ``YYYY-MM-DD[T ]HH:MM:SS[.fff]`` on datetimes.

Viewports: a start past the end gives no rows, an end past it is cut;
a negative start is not served. ``columns`` absent means every column in
frame order, ``_rid`` first; ``columns: []`` gives a table without columns.

Where Perspective's live views depend on history, the engine gives what a
view opened now over the same rows gives:
  - A live *filtered* view is not re-filtered when an update sets a
    filtered cell to null: the row stays in (or out), and when the cell
    gets a value again the row can be listed twice.
  - In a table created empty, the nulls of the first batch polled into it
    sort as the largest value (last ascending, first descending); nulls
    written later sort first ascending. A table built from rows, as
    coframe builds a room's, has no such nulls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from protocol.dtypes import RID

from ..ops.state import State
from .fastbase import Clause, NotServable, check_schema, filter_mask, nul_columns, parse_clause, view_arrow
from .fastexpr import column_expr, ptype, unsortable
from .fastgroup import GroupedPlan, plan_grouped
from .fasttop import FOLLOW_END, NeedsRead, Top, TopCache, changed_positions, step
from .payload import DEFAULT_VIEWPORT_ROWS

__all__ = ["FastPlan", "GroupedPlan", "NeedsRead", "NotServable", "Clause", "SortKey", "plan_fast"]

_PLAIN_KEYS = {"columns", "sort", "filter"}
_EMPTY_KEYS = {"group_by", "split_by", "aggregates", "expressions"}  # served only when empty
_DIRECTIONS = {"asc": False, "desc": True}
_FLOATS = ("Float32", "Float64")  # UInt64 is a float in Perspective, but never NaN or -0.0


@dataclass(frozen=True, slots=True)
class SortKey:
    column: str
    dtype: str
    descending: bool


@dataclass(frozen=True, slots=True)
class FastPlan:
    """A plain view this engine serves: output ``columns``, sort, filters, viewport."""

    columns: tuple[str, ...]
    sort: tuple[SortKey, ...]
    filters: tuple[Clause, ...]
    viewport: tuple[int, int]
    dtypes: tuple[tuple[str, str], ...]  # (column, dtype) the plan was made for

    cache: TopCache = field(default_factory=TopCache, compare=False, repr=False)

    def read(
        self, frame: pl.DataFrame, seq: int | None = None, touched: Any = (), state: State | None = None
    ) -> tuple[pa.Table, int]:
        """The view's payload over ``frame`` (a room frame: ``_rid`` first, ascending).

        ``touched`` is for :meth:`.fastgroup.GroupedPlan.read`: each read here
        is a fresh query. Given the room's ``seq`` of ``frame``, the read also
        keeps what :meth:`follow` needs (:class:`.fasttop.Top`), when the
        viewport ends within :data:`.fasttop.FOLLOW_END`.

        One lazy Polars query: filter, sort by the keys then ``_rid``, slice
        the viewport (Polars turns sort + slice into a top-k), after one pass
        that counts the rows and checks the float sort keys.

        Raises:
            NotServable: the frame's values or columns are not what this plan serves.
        """
        check_schema(frame, self.dtypes)
        strings = [c.column for c in (*self.sort, *self.filters) if c.dtype == "String"]
        nul = nul_columns(frame, strings)
        lf = frame.lazy()
        if self.filters:
            lf = lf.filter(filter_mask(self.filters, nul))
        keys = [column_expr(k.column, k.dtype, nul=k.column in nul) for k in self.sort]
        checks = [
            unsortable(x).alias(f"{i}")
            for i, (k, x) in enumerate(zip(self.sort, keys, strict=True))
            if k.dtype in _FLOATS
        ]
        rows = frame.height
        if self.filters or checks:
            rows, *hits = lf.select(pl.len(), *checks).collect().row(0)
            bad = [k.column for k, hit in zip((k for k in self.sort if k.dtype in _FLOATS), hits) if hit]
            if bad:
                raise NotServable(
                    f"sort column '{bad[0]}' holds NaN or both -0.0 and 0.0, which Perspective"
                    " orders inconsistently",
                    column=bad[0],
                )
        if keys:
            desc = [k.descending for k in self.sort]
            # Nulls first ascending, last descending; ties in _rid order (module doc).
            lf = lf.sort([*keys, pl.col(RID)], descending=[*desc, False], nulls_last=[*desc, False])
        start, end = self.viewport
        columns = list(self.columns)
        if seq is None or end > FOLLOW_END:
            return view_arrow(lf.slice(start, end - start).select(columns).collect(), columns), rows
        used = self._used()
        ids = frame.get_column(RID).to_numpy() if state is None else state.rids()
        top = Top(lf.slice(0, end).select(used).collect(), rows, frame, ids, seq)
        with self.cache.lock:
            if self.cache.top is None or self.cache.top.seq < seq:
                self.cache.top = top
        return self._payload(top)

    def follow(self, state: State, seq: int, touched: Any) -> tuple[pa.Table, int] | None:
        """The view at ``seq`` (the room's ``state``) from the rows the deltas in ``touched``
        changed since the last read or follow, or None when its content did not change
        (:mod:`.fasttop`).

        Cheap enough for the event loop: a gather of the changed rows and a
        sort of at most ``end`` + their number.

        Raises:
            NeedsRead: this delta cannot be followed; read the view in full.
        """
        c = self.cache
        with c.lock:
            top = c.top
        if top is None:
            raise NeedsRead("no read to follow yet")
        if seq <= top.seq:
            return None
        try:
            check_schema(state.frame, self.dtypes)
            new = self._step(top, state, seq, touched)
        except (NeedsRead, NotServable) as e:
            with c.lock:
                if c.top is top:
                    c.top = None  # the next read starts afresh
            raise NeedsRead(str(e)) from None
        with c.lock:
            if c.top is top:
                c.top = new
        if new.rows is top.rows and new.count == top.count:
            return None
        return self._payload(new)

    def _step(self, top: Top, state: State, seq: int, touched: Any) -> Top:
        ids = state.rids()
        moves = changed_positions(top.ids, top.seq, ids, seq, touched)
        if moves is None:
            raise NeedsRead("the schema changed, or the deltas have a gap")
        if not len(moves):
            return top.moved(top.count, state.frame, ids, seq)
        keys, keep = self._exprs()
        return step(
            top,
            state.frame,
            ids,
            seq,
            moves,
            used=self._used(),
            end=self.viewport[1],
            keys=keys,
            columns=[(k.column, k.dtype) for k in self.sort],
            descending=[k.descending for k in self.sort],
            keep=keep,
            floats=[k.column for k in self.sort if k.dtype in _FLOATS],
        )

    def _exprs(self) -> tuple[list[pl.Expr], pl.Expr | None]:
        """The sort keys and the filter mask (or None) of :meth:`follow`, strings cut at a NUL."""
        c = self.cache
        if c.exprs is None:
            strings = {c.column for c in (*self.sort, *self.filters) if c.dtype == "String"}
            keys = [column_expr(k.column, k.dtype, nul=True) for k in self.sort]
            c.exprs = (keys, filter_mask(self.filters, strings) if self.filters else None)
        return c.exprs

    def _used(self) -> list[str]:
        return [RID, *(n for n, _ in self.dtypes if n != RID)]

    def _payload(self, top: Top) -> tuple[pa.Table, int]:
        start, end = self.viewport
        columns = list(self.columns)
        return view_arrow(top.rows.slice(start, end - start).select(columns), columns), top.count


def plan_fast(
    config: dict[str, Any], viewport: tuple[int, int] | None, schema: list[dict[str, Any]]
) -> FastPlan | GroupedPlan | None:
    """A plan for the view ``config`` with ``viewport`` over a room of wire ``schema``
    (``catalog.to_wire()``), or None when Perspective must serve it.

    Served: plain views (no group_by, split_by, aggregates or expressions)
    whose sort directions, filter operators, operands and column dtypes are
    those the module doc lists as proven equal to Perspective; and grouped
    views of ``mean``, ``count`` and ``sum``, split by one column or not (:mod:`.fastgroup`).
    Both plans have ``read(frame) -> (table, rows)``.
    """
    dtypes = {RID: "UInt64", **{c["name"]: c["dtype"] for c in schema}}
    if any(ptype(d) is None for d in dtypes.values()):
        return None
    if config.get("group_by"):
        return plan_grouped(config, viewport, dtypes)
    if set(config) - _PLAIN_KEYS - _EMPTY_KEYS or any(config.get(k) for k in _EMPTY_KEYS):
        return None
    start, end = (0, DEFAULT_VIEWPORT_ROWS) if viewport is None else viewport
    if start < 0 or end <= start:
        return None
    used: dict[str, str] = {}

    def known(name: Any) -> bool:
        if not isinstance(name, str) or name not in dtypes:
            return False
        used[name] = dtypes[name]
        return True

    columns = config.get("columns")
    if columns is None:
        columns = list(dtypes)  # every column, in the frame's order: _rid, then the catalog's
    if len(set(columns)) != len(columns) or not all(known(c) for c in columns):
        return None
    sort: list[SortKey] = []
    for clause in config.get("sort", ()):
        if len(clause) != 2 or not known(clause[0]) or clause[1] not in _DIRECTIONS:
            return None
        if any(k.column == clause[0] for k in sort):
            return None
        sort.append(SortKey(clause[0], dtypes[clause[0]], _DIRECTIONS[clause[1]]))
    filters: list[Clause] = []
    for clause in config.get("filter", ()):
        c = parse_clause(clause, dtypes)
        if c is None or not known(c.column):
            return None
        filters.append(c)
    return FastPlan(tuple(columns), tuple(sort), tuple(filters), (start, end), tuple(used.items()))
