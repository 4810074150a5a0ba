"""Plain fast views followed from each delta's rows, on the event loop: no read per batch of ticks.

A :class:`~.fast.FastPlan` read is a query over every row of the frame
(a top-k: 7-16 ms at 1M rows, 2-3x that in a worker thread while the event
loop is busy). After one such read, :class:`Top` keeps the first ``end``
rows of the view (its viewport and the rows above it, in view order), the
last of them (the *boundary*) and the total row count. The deltas since
then move the view without a query over the frame:

- the rows they touched (:class:`Moves`: updated, inserted or deleted)
  are read before and after (a gather of a few rows);
- the new top is the first ``end`` of the kept rows, minus the touched
  ones, plus the touched rows that exist after and pass the filters,
  sorted as the full read sorts;
- that is exact when at least ``end`` of those rows sort before the old
  boundary, or at it: every row outside them sorted after the boundary
  before the deltas and did not change. Otherwise (a row of the top moved
  out or was deleted, and the one to take its place is somewhere in the
  frame) the view is read in full again, as before;
- the row count moves by the touched rows that left and entered the view.

A schema change, a gap in the deltas, more than :data:`FOLLOW_ROWS`
touched rows, and a changed float sort key that is NaN or a zero (the
full read checks the whole column for values Perspective orders
inconsistently) also mean a full read: :class:`NeedsRead`. In the common
cases this takes no query at all: whether a touched row enters the top is
told in Python from the sort keys (:func:`before`), and entering rows are
merged into the kept ones by bisection.

Strings are cut at a NUL here whatever the column holds: on a string
without NUL the cut is the string itself, so this is what the full read
does in either case.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any

import numpy as np
import polars as pl

from protocol.dtypes import RID

from .fastexpr import py_values

__all__ = [
    "NeedsRead",
    "Moves",
    "Top",
    "TopCache",
    "FOLLOW_ROWS",
    "FOLLOW_END",
    "changed_positions",
    "gather",
    "step",
]

#: More changed rows than this since the last read or step: read the view in full.
FOLLOW_ROWS = 2_000
#: A view whose viewport ends past this row is only ever read in full (its top is not kept).
FOLLOW_END = 1_000

_MARK = "__coframe_boundary"  # a column of the candidates: 1 on the old boundary row


class NeedsRead(Exception):
    """A delta the view cannot follow from its rows: read it in full (in a worker thread)."""


@dataclass(slots=True)
class Top:
    """What a plain fast view keeps after a read: its first ``end`` rows and its row count."""

    rows: pl.DataFrame  # the used columns of the view's first ``end`` rows, in view order
    count: int  # the view's total rows (after filters)
    frame: pl.DataFrame  # the frame at ``seq``
    ids: np.ndarray  # its rids
    seq: int
    _rids: np.ndarray | None = None
    _edge: tuple[Any, ...] | None = None
    _keys: list[tuple[Any, ...]] | None = None  # every row's sort key (and rid), once needed

    def moved(self, count: int, frame: pl.DataFrame, ids: np.ndarray, seq: int) -> Top:
        """The same rows at ``seq``, over ``frame`` (rids ``ids``), with ``count`` rows in all."""
        return Top(self.rows, count, frame, ids, seq, self._rids, self._edge, self._keys)

    def keys(self, columns: list[tuple[str, str]]) -> list[tuple[Any, ...]] | None:
        """Every row's sort key values and rid, in Python (None with a datetime key)."""
        if self._keys is None:
            self._keys = _keys(
                self.rows, pl.Series(np.arange(self.rows.height), dtype=pl.UInt32), columns, self.rids()
            )
        return self._keys

    def rids(self) -> np.ndarray:
        """The rids of :attr:`rows`."""
        if self._rids is None:
            self._rids = self.rows.get_column(RID).to_numpy()
        return self._rids

    def edge(self, keys: list[pl.Expr], end: int) -> tuple[Any, ...] | None:
        """The last row's sort key values and rid, or None when the top holds every row."""
        if self.rows.height < end:
            return None
        if self._edge is None:
            last = self.rows.tail(1).select(*(k.alias(f"k{i}") for i, k in enumerate(keys)), pl.col(RID))
            self._edge = last.row(0)
        return self._edge


class TopCache:
    """A plan's :class:`Top` and the lock that keeps a worker thread's read and a step apart."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.top: Top | None = None
        self.exprs: tuple[list[pl.Expr], pl.Expr | None] | None = None  # built once, by the plan


@dataclass(frozen=True, slots=True)
class Moves:
    """The rows the deltas since a read touched: ``old`` positions in the frame before (rows
    updated or deleted: their values leave the view), ``new`` positions in the frame after (rows
    updated or inserted: their values enter it), and all their rids."""

    old: np.ndarray
    new: np.ndarray
    rids: np.ndarray

    def __len__(self) -> int:
        return len(self.rids)

    @property
    def in_place(self) -> bool:
        """Only cells changed: the same rows at the same positions before and after."""
        return len(self.old) == len(self.new) == len(self.rids) and np.array_equal(self.old, self.new)


def changed_positions(
    prev: np.ndarray, prev_seq: int, now: np.ndarray, seq: int, touched: Sequence[Any]
) -> Moves | None:
    """The rows the deltas of ``touched`` upserted or deleted after ``prev_seq`` up to ``seq``,
    or None when they cannot tell (a gap, a schema change).

    ``prev`` and ``now`` are the frames' rids (:meth:`~server.ops.state.State.rids`: one array
    shared by states that only changed cells); ``touched`` holds ``(seq_from, seq_to, rids or
    None)`` per delta, oldest first (:func:`.fastviews.touched_rids`).
    """
    if seq < prev_seq:
        return None
    recent = []
    for entry in reversed(touched):  # newest first: a step covers the last few deltas of thousands
        if entry[1] <= prev_seq:
            break
        recent.append(entry)
    rids = []
    covered = prev_seq
    for seq_from, seq_to, upserted in reversed(recent):
        if seq_from > seq:
            continue
        if seq_from > covered + 1 or seq_to > seq or upserted is None:
            return None
        covered = seq_to
        rids.append(upserted)
    if covered != seq:
        return None
    if not rids:
        empty = np.empty(0, dtype=np.int64)
        return Moves(empty, empty, np.empty(0, dtype=np.uint64))
    wanted = np.unique(np.concatenate(rids)) if len(rids) > 1 else np.unique(rids[0])
    new = _positions(now, wanted)
    old = new if prev is now else _positions(prev, wanted)
    return Moves(old, new, wanted)


def _positions(rids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in ``rids`` (ascending) of the ``wanted`` rids it holds."""
    if not len(rids):
        return np.empty(0, dtype=np.int64)
    at = np.minimum(np.searchsorted(rids, wanted), len(rids) - 1)
    return at[rids[at] == wanted].astype(np.int64)


def gather(frame: pl.DataFrame, columns: Sequence[str], at: np.ndarray) -> pl.DataFrame:
    """``frame``'s ``columns`` at positions ``at``: one gather per column, no query."""
    pos = pl.Series(at, dtype=pl.UInt32)
    return pl.DataFrame([frame.get_column(n).gather(pos) for n in columns])


def before(a: tuple[Any, ...], b: tuple[Any, ...], descending: Sequence[bool]) -> bool:
    """Whether sort key ``a`` (key values, then the rid) comes before ``b`` in the view's order.

    Nulls first ascending, last descending; ties broken by the next key, then
    by the rid ascending. Values are those the sort keys hold (strings cut at
    a NUL compare by code point, which is UTF-8's byte order).
    """
    for x, y, desc in zip(a, b, descending, strict=False):
        if x == y:
            continue
        if x is None:
            return not desc
        if y is None:
            return desc
        return x > y if desc else x < y
    return bool(a[-1] < b[-1])


def _keys(
    frame: pl.DataFrame, rows: pl.Series, columns: list[tuple[str, str]], rids: Any
) -> list[tuple[Any, ...]] | None:
    """The sort keys of ``frame``'s ``rows`` (positions) as tuples ending with the rid, in Python;
    None when a key column is a datetime."""
    out = []
    for name, dtype in columns:
        values = py_values(frame, name, dtype, rows)
        if values is None:
            return None
        out.append(values)
    out.append([int(r) for r in (rids.to_list() if isinstance(rids, pl.Series) else rids)])
    return list(zip(*out, strict=True))


def _quick(
    top: Top,
    cur: pl.DataFrame,
    ids: np.ndarray,
    seq: int,
    moves: Moves,
    end: int,
    columns: list[tuple[str, str]],
    descending: list[bool],
    floats: list[str],
) -> Top | None:
    """``top`` at ``seq`` when no touched row was in it and no new one enters it, found without a
    query (no filters; sort keys other than datetimes); None when that is not so or cannot be
    told here."""
    if top.rows.height < end or np.isin(moves.rids, top.rids()).any():
        return None
    news = _keys(cur, pl.Series(moves.new, dtype=pl.UInt32), columns, ids[moves.new])
    if news is None:
        return None
    if floats:
        where = [i for i, (name, _) in enumerate(columns) if name in floats]
        if any(row[i] is not None and (row[i] != row[i] or row[i] == 0.0) for row in news for i in where):
            raise NeedsRead("a changed float sort key is NaN or zero")
    listed = top.keys(columns)  # not None: the same columns gave ``news``
    assert listed is not None
    if any(before(row, listed[-1], descending) for row in news):
        return None
    return top.moved(top.count + len(moves.new) - len(moves.old), cur, ids, seq)


def _merge(
    top: Top,
    at_rids: np.ndarray,
    new: pl.DataFrame,
    end: int,
    columns: list[tuple[str, str]],
    descending: list[bool],
) -> tuple[pl.DataFrame, list[tuple[Any, ...]]] | None:
    """The new top rows and their sort keys: the kept rows (in order) with the ``new`` ones
    (changed, passing the filters) inserted, in Python; None with a datetime sort key."""
    top_keys = top.keys(columns)
    if top_keys is None:
        return None
    new_keys = _keys(new, pl.Series(np.arange(new.height), dtype=pl.UInt32), columns, new.get_column(RID))
    if new_keys is None:
        return None

    def order(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
        return -1 if before(a, b, descending) else (1 if before(b, a, descending) else 0)

    rank = cmp_to_key(order)
    gone = set(at_rids.tolist())
    rids = top.rids().tolist()
    merged = [(k, i) for i, k in enumerate(top_keys) if rids[i] not in gone]  # still sorted
    n = top.rows.height
    for j, k in enumerate(new_keys):
        bisect.insort(merged, (k, n + j), key=lambda e: rank(e[0]))
    if n >= end:  # every row outside sorts after the old boundary: enough rows must come before it
        if bisect.bisect_right(merged, rank(top_keys[-1]), key=lambda e: rank(e[0])) < end:
            raise NeedsRead("a row left the top and the next one is elsewhere in the frame")
    merged = merged[:end]
    rows = pl.concat([top.rows, new], how="vertical")[pl.Series([i for _, i in merged], dtype=pl.UInt32)]
    return rows, [k for k, _ in merged]


def step(
    top: Top,
    cur: pl.DataFrame,
    ids: np.ndarray,
    seq: int,
    moves: Moves,
    *,
    used: list[str],
    end: int,
    keys: list[pl.Expr],
    columns: list[tuple[str, str]],
    descending: list[bool],
    keep: pl.Expr | None,
    floats: list[str],
) -> Top:
    """``top`` moved to ``cur`` (the frame at ``seq``, rids ``ids``) by the rows in ``moves``.

    ``keys`` are the sort keys (cut at NUL) over ``columns`` (name, dtype),
    ``keep`` the filter mask or None, ``floats`` the float sort key columns.
    Raises :class:`NeedsRead` when the rows kept cannot tell the new top
    (module doc). The result shares ``top.rows`` when no touched row was in
    it and none enters it.
    """
    if len(moves) > FOLLOW_ROWS:
        raise NeedsRead(f"{len(moves)} rows changed")
    if not keys and keep is None:  # index order, no filter: the first ``end`` rows
        if (moves.new < end).any() or (moves.old < end).any():
            return Top(cur.select(used).slice(0, end), cur.height, cur, ids, seq)
        return top.moved(cur.height, cur, ids, seq)
    if keep is None and (quick := _quick(top, cur, ids, seq, moves, end, columns, descending, floats)):
        return quick
    new = gather(cur, used, moves.new)
    for name in floats:
        x = new.get_column(name)
        if (x.is_nan() | (x == 0.0)).any():
            raise NeedsRead(f"a changed sort key in '{name}' is NaN or zero")
    count = top.count - len(moves.old)
    if keep is not None:
        count = top.count
        if len(moves.old):
            count -= int(gather(top.frame, used, moves.old).select(keep.sum()).item())
        new = new.filter(keep)
    count += new.height
    if not np.isin(moves.rids, top.rids()).any():  # the top keeps every row: does one enter it?
        if not new.height:
            return top.moved(count, cur, ids, seq)
        edge = top.edge(keys, end)
        if edge is not None:
            news = new.select(*(k.alias(f"k{i}") for i, k in enumerate(keys)), pl.col(RID)).rows()
            if not any(before(row, edge, descending) for row in news):
                return top.moved(count, cur, ids, seq)
    at_rids = moves.rids
    merged = _merge(top, at_rids, new, end, columns, descending)
    if merged is not None:
        return Top(merged[0], count, cur, ids, seq, _keys=merged[1])
    kept = top.rows.filter(pl.Series(~np.isin(top.rids(), at_rids)))
    parts = [
        kept.with_columns(pl.lit(0, pl.Int8).alias(_MARK)),
        new.with_columns(pl.lit(0, pl.Int8).alias(_MARK)),
    ]
    full = top.rows.height >= end
    if full:
        parts.append(top.rows.tail(1).with_columns(pl.lit(1, pl.Int8).alias(_MARK)))
    rows = pl.concat(parts, how="vertical")
    rows = rows.sort(
        [*keys, pl.col(RID), pl.col(_MARK)],
        descending=[*descending, False, False],
        nulls_last=[*descending, False, False],
        maintain_order=True,
    )
    if full:
        marks = rows.get_column(_MARK).to_numpy()
        if int(np.argmax(marks)) < end:
            raise NeedsRead("a row left the top and the next one is elsewhere in the frame")
        rows = rows.filter(pl.col(_MARK) == 0)
    return Top(rows.head(end).drop(_MARK), count, cur, ids, seq)
