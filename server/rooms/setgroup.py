"""A run of one-``set`` messages applied as one group: the tick's hot path for bots.

A tick often drains many ``op`` messages of one ``set`` each (bots, and
clients typing). Applied one by one, each message pays its own rid lookup,
value coercion, clock check and clock write: about 20 us of numpy and Python
calls for a 1-cell set. Here a run of them is planned with one call of each
per column, and only the ack, the undo entry and the WAL entry stay per
message (issue 9).

The result is exactly what :meth:`RoomCore.apply_sets` gives message by
message (a test compares them), because the group holds only messages
where that is plainly so:

- one ``set`` op each, not compare-and-set, with as many values as rows;
- no cell written twice in the group (the group ends before the first
  message that repeats a cell, its own or an earlier one's), so no message
  of the group can conflict with another of the group;
- every column resolves, every rid exists and every value coerces.

Anything else (a bad rid, a bad value, a repeat at the first message) makes
:func:`apply_group` apply nothing; the tick then applies that message alone,
which gives its exact error, and tries a group again from the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import polars as pl

from protocol import Ack, Op, Overwrite, SetCells

from ..ops import SetPlan, coerce, locate, read_cells
from ..ops.cells import plain_floats
from ..ops.state import Column, OpError
from .core import _MISSING, RoomCore, _overwrites, _written
from .deltas import DeltaBuilder
from .undo import LazyInverse

__all__ = ["GroupItem", "apply_group", "groupable"]

# (client, client_seq, base_seq, the message's one set op)
GroupItem = tuple[str, int, int, SetCells]


def groupable(ops: tuple[Any, ...], max_rows: int) -> bool:
    """A message that may join a group: one plain ``set`` within the rows limit."""
    if len(ops) != 1:
        return False
    op = ops[0]
    return (
        isinstance(op, SetCells)
        and not op.if_unchanged
        and 0 < len(op.rows) <= max_rows
        and len(op.values) == len(op.rows)
    )


Applied = tuple[Ack, tuple[Op]]


def apply_group(core: RoomCore, items: Sequence[GroupItem], builder: DeltaBuilder) -> list[Applied]:
    """Apply a prefix of ``items`` (at least two, or none) as one group.

    Returns ``(ack, applied ops)`` for each message applied, in order; the
    applied op names its column by id, for the WAL.
    """
    if len(items) < 2:
        return []
    state = core.state
    cols: list[Column] = []
    try:
        for *_, op in items:
            cols.append(state.catalog.resolve(op.col))
        lengths = np.fromiter((len(op.rows) for *_, op in items), dtype=np.int64, count=len(items))
        rids, pos = locate(state, list(chain.from_iterable(op.rows for *_, op in items)))
    except OpError:
        return []
    n = _first_repeat(cols, lengths, rids)
    if n < 2:
        return []
    items, cols, lengths = items[:n], cols[:n], lengths[:n]
    ends = np.cumsum(lengths)
    cells = int(ends[-1])
    rids, pos = rids[:cells], pos[:cells]
    datas = _values(items, cols, ends)
    if datas is None:
        return []
    starts = ends - lengths
    plans = [
        SetPlan(col, rids[a:b], pos[a:b], data)
        for col, a, b, data in zip(cols, starts.tolist(), ends.tolist(), datas, strict=True)
    ]
    overwritten = _conflicts(core, items, plans)
    out: list[Applied] = []
    runs: dict[int, tuple[list[int], list[str], list[np.ndarray]]] = {}
    for (client, client_seq, _, op), plan, over in zip(items, plans, overwritten, strict=True):
        seq = core._next_seq()
        lazy = LazyInverse((plan,))
        core._plans.append(plan)
        core._lazy.append(lazy)
        core._parked[seq] = lazy.plans
        builder.add_plan(plan)
        core._push_undo(client, lazy, "op")
        cid = plan.col.id
        seqs, clients, parts = runs.setdefault(cid, ([], [], []))
        seqs.append(seq)
        clients.append(client)
        parts.append(plan.rids)
        ack = Ack(seq, client_seq, (), over)
        core.replies.put(client, client_seq, ack)
        applied = op if op.col == cid else SetCells(op.rows, cid, op.values, op.if_unchanged)
        out.append((ack, (applied,)))
    for cid, (seqs, clients, parts) in runs.items():
        core.clock.record_run(cid, seqs, clients, parts)
    if core.dirty_rids is not None:
        core.dirty_rids.append(rids)
    core.last_applied = out[-1][1]
    return out


def _first_repeat(cols: list[Column], lengths: np.ndarray, rids: np.ndarray) -> int:
    """How many leading messages write no cell twice (in one message or across them)."""
    n = len(cols)
    msg = np.repeat(np.arange(n), lengths)
    col = np.repeat(np.fromiter((c.id for c in cols), dtype=np.int64, count=n), lengths)
    order = np.lexsort((msg, rids, col))
    r, c = rids[order], col[order]
    same = (r[1:] == r[:-1]) & (c[1:] == c[:-1])
    if not same.any():
        return n
    return int(msg[order][1:][same].min())  # the later of each pair repeats a cell


def _values(items: Sequence[GroupItem], cols: list[Column], ends: np.ndarray) -> list[Any] | None:
    """Each message's values: float64 arrays for plain floats into Float64, else Series of the dtype.

    One check (or one coercion) per column for the whole group; None if a
    value does not fit (the message alone then gives the exact error).
    """
    by_col: dict[int, list[int]] = {}
    for i, c in enumerate(cols):
        by_col.setdefault(c.id, []).append(i)
    out: list[Any] = [None] * len(items)
    for idxs in by_col.values():
        col = cols[idxs[0]]
        values = list(chain.from_iterable(items[i][3].values for i in idxs))
        sizes = [len(items[i][3].values) for i in idxs]
        data: np.ndarray | pl.Series | None = plain_floats(values, col.dtype)
        if data is None:
            try:
                data = coerce(values, col.dtype, what=f"column '{col.name}'").rename(col.name)
            except OpError:
                return None
        at = 0
        for i, size in zip(idxs, sizes, strict=True):
            out[i] = data[at : at + size] if isinstance(data, np.ndarray) else data.slice(at, size)
            at += size
    return out


def _conflicts(
    core: RoomCore, items: Sequence[GroupItem], plans: list[SetPlan]
) -> list[tuple[Overwrite, ...]]:
    """Each message's overwrite reports: cells another client wrote after its ``base_seq``.

    One clock check per column for the group; reports (which read the
    overwritten values) only for the messages that have some.
    """
    clock = core.clock
    wid = clock.writers.known
    out: list[tuple[Overwrite, ...]] = [()] * len(items)
    by_col: dict[int, list[int]] = {}
    for i, p in enumerate(plans):
        by_col.setdefault(p.col.id, []).append(i)
    for cid, idxs in by_col.items():
        sizes = np.fromiter((len(plans[i].rids) for i in idxs), dtype=np.int64, count=len(idxs))
        rids = np.concatenate([plans[i].rids for i in idxs]) if len(idxs) > 1 else plans[idxs[0]].rids
        n = len(idxs)
        base = np.repeat(np.fromiter((items[i][2] for i in idxs), dtype=np.int64, count=n), sizes)
        wids = np.repeat(np.fromiter((wid(items[i][0]) for i in idxs), dtype=np.int32, count=n), sizes)
        hit, seqs, writers = clock.concurrent_cells(cid, rids, base, wids)
        if not len(hit):
            continue
        owner = np.repeat(np.arange(n), sizes)[hit]
        starts = np.cumsum(sizes) - sizes
        values = _overwritten_values(core, plans[idxs[0]].col, rids[hit], seqs)
        for k in np.unique(owner).tolist():
            i = idxs[k]
            at = np.flatnonzero(owner == k)
            found = (hit[at] - starts[k], seqs[at], writers[at])
            _, _, base_seq, op = items[i]
            mine = [values[j] for j in at.tolist()]
            reports = _overwrites(clock, plans[i].col, base_seq, op, plans[i].rids, found, lambda v=mine: v)
            out[i] = tuple(reports)
    return out


def _overwritten_values(core: RoomCore, col: Column, rids: np.ndarray, seqs: np.ndarray) -> list[Any]:
    """The current values of these cells: the frame's, or a parked write's (same tick, not flushed).

    The group's own writes are not parked yet, and none of them is to one of
    these cells' (a group writes no cell twice and conflicts with no member).
    """
    _, pos = locate(core.state, rids)
    out = read_cells(core.state, col, pos)
    if core._parked:
        for k, (rid, seq) in enumerate(zip(rids.tolist(), seqs.tolist(), strict=True)):
            parked = core._parked.get(seq)
            if parked:
                v = _written(parked, col.id, rid)
                if v is not _MISSING:
                    out[k] = v
    return out
