"""Replay of a run of ``set``-only WAL entries in bulk: recovery's hot path.

After a crash the WAL holds every batch since the head commit, and nearly all
of them are small ``set`` batches. Replayed one by one through
:meth:`RoomCore.apply_sets`, each costs a decoded op object, a Polars Series
for its coerced values, its old values and an ack: about 50 us an entry, so
100k entries took seconds. A run of consecutive ``set``-only entries changes
neither the catalog nor the rows, so it can be checked and written as a whole:

- one coercion and one scatter per column for the whole run (the last write
  of a cell wins, as in the live overlay);
- the clock and the replies entry by entry (plain dict writes; the reply is
  the stored ack, decoded without the generic field machinery when it is a
  plain ack);
- undo inverses only for the entries that stay on a client's bounded undo
  stack, their old values read in one gather per column (the value of the
  cell's previous write in the run, else the frame's).

The result equals the straight replay (:func:`server.rooms.wal.replay_each`):
the same frame, seq, clock writes, replies, undo/redo stacks and dirty rids.
Whatever a run cannot prove (an unknown column or row, a value that does not
coerce) raises :class:`NotBulk` before anything is changed; the caller then
replays that run entry by entry, which applies or fails exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from protocol import Ack, SetCells

from ..ops import SetPlan, apply_set_plans, coerce, read_cells, to_scalars
from ..ops.state import Column, State
from ..storage.types import WalEntry
from .core import RoomCore

__all__ = ["NotBulk", "SetRun", "parse_sets", "fast_ack"]

_INT64_MAX = 2**63 - 1
_WIRE_INT_MIN, _WIRE_INT_MAX = -(2**63), 2**64 - 1
_SET_KEYS = frozenset({"op", "rows", "col", "values", "if_unchanged"})
_SCALARS = (type(None), bool, float, str)
# One set op as stored in the WAL: (column id, rids, values, if_unchanged).
SetSpec = tuple[int, list[int], list[Any], bool]


class NotBulk(Exception):
    """The run cannot be applied in bulk; nothing was changed."""


def parse_sets(ops_map: Any) -> list[SetSpec] | None:
    """The ``set`` ops of a decoded WAL ``ops`` map, or None if it is not made only of
    well-formed ``set`` ops by column id (then the entry takes the straight path).

    Accepts exactly what ``op_from_wire`` reads into ``SetCells`` with ``plan_set``'s
    row checks (one value per row, no rid twice); anything else is left to them.
    """
    ops = ops_map.get("ops") if type(ops_map) is dict else None
    if type(ops) is not list:
        return None
    out: list[SetSpec] = []
    for o in ops:
        if type(o) is not dict or o.get("op") != "set" or not o.keys() <= _SET_KEYS:
            return None
        rows, col, values = o.get("rows"), o.get("col"), o.get("values")
        iu = o.get("if_unchanged")
        if iu is None:
            iu = False
        elif type(iu) is not bool:
            return None
        if type(col) is not int or not 0 <= col <= _INT64_MAX:
            return None
        if type(rows) is not list or type(values) is not list or len(values) != len(rows):
            return None
        for r in rows:
            if type(r) is not int or not 0 <= r <= _INT64_MAX:
                return None
        if len(rows) > 1 and len(set(rows)) != len(rows):
            return None
        for v in values:
            if type(v) is int:
                if not _WIRE_INT_MIN <= v <= _WIRE_INT_MAX:
                    return None
            elif type(v) not in _SCALARS:
                return None
        out.append((col, rows, values, iu))
    return out


def fast_ack(reply: bytes) -> Ack:
    """The stored ack; a plain one (no rids, no overwrites) without ``Ack.from_wire``.

    Raises:
        ProtocolError, ValueError: the stored reply is not an ack map.
    """
    d = msgpack.unpackb(reply, raw=False)
    if (
        type(d) is dict
        and len(d) == 7
        and d.get("type") == "ack"
        and d.get("re", 0) is None
        and d.get("duplicate") is False
        and d.get("rids") == []
        and d.get("overwritten") == []
    ):
        seq, cs = d.get("seq"), d.get("client_seq")
        if type(seq) is int and type(cs) is int and 0 <= seq <= _INT64_MAX and 0 <= cs <= _INT64_MAX:
            return Ack(seq, cs)
    return Ack.from_wire(d)


@dataclass(slots=True)
class _Column:
    """Every write of the run to one column, flat, in replay order."""

    rows: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Prepared:
    """One column's checked writes: the plan to scatter and what undo needs."""

    col: Column
    rids: np.ndarray
    positions: np.ndarray
    values: Any  # pl.Series of the column dtype, one per write
    prev: np.ndarray  # index of the cell's previous write in the run, or -1
    plan: SetPlan


@dataclass(slots=True)
class SetRun:
    """Consecutive ``set``-only ``op`` entries, gathered to be applied at once."""

    entries: list[WalEntry] = field(default_factory=list)
    sets: list[list[SetSpec]] = field(default_factory=list)
    acks: list[bytes] = field(default_factory=list)  # the stored acks, decoded only when asked for
    # Per entry, per op: where its writes start in its column's flat lists.
    starts: list[list[int]] = field(default_factory=list)
    columns: dict[int, _Column] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: WalEntry, sets: list[SetSpec], ack: bytes) -> None:
        starts = []
        for cid, rows, values, _ in sets:
            c = self.columns.get(cid)
            if c is None:
                c = self.columns[cid] = _Column()
            starts.append(len(c.rows))
            c.rows += rows
            c.values += values
        self.entries.append(entry)
        self.sets.append(sets)
        self.acks.append(ack)
        self.starts.append(starts)

    def clear(self) -> None:
        self.entries, self.sets, self.acks, self.starts, self.columns = [], [], [], [], {}

    # ------------------------------------------------------------ apply

    def apply(self, core: RoomCore) -> None:
        """Apply the run to ``core`` as the straight replay would (the core's overlay is flushed first).

        Raises:
            NotBulk: a column, row or value does not fit; ``core`` is unchanged.
        """
        if not self.entries:
            return
        depth = core.undo_depth
        if depth <= 0:
            raise NotBulk("undo depth <= 0")
        core.flush()
        state = core.state
        prepared = {cid: _prepare(state, cid, c) for cid, c in self.columns.items()}
        undo = self._inverses(state, prepared, core, depth)
        new_state = apply_set_plans(state, [p.plan for p in prepared.values()]) if prepared else state
        # Nothing below raises: the run is committed to the core from here on.
        core.state = new_state
        clock, replies = core.clock, core.replies
        seq = core.seq
        runs: dict[int, tuple[list[int], list[str], list[np.ndarray]]] = {}
        for entry, sets, ack in zip(self.entries, self.sets, self.acks, strict=True):
            seq += 1
            for cid, rows, _, _ in sets:
                seqs, clients, rids = runs.setdefault(cid, ([], [], []))
                seqs.append(seq)
                clients.append(entry.client)
                rids.append(np.asarray(rows, dtype=np.int64))
            replies.put_stored(entry.client, entry.client_seq, ack, fast_ack)
        for cid, (seqs, clients, rids) in runs.items():  # one scatter per column (same as record())
            clock.record_run(cid, seqs, clients, rids)
        core.seq = seq
        if core.dirty_rids is not None:
            core.dirty_rids += [p.rids for p in prepared.values()]
        for client, inverses in undo.items():
            stacks = core.stacks(client)
            stacks.redo.clear()
            stacks.undo += inverses
            del stacks.undo[:-depth]
        core.last_applied = tuple(
            SetCells(tuple(rows), cid, tuple(values), iu) for cid, rows, values, iu in self.sets[-1]
        )

    def _inverses(
        self, state: State, prepared: dict[int, _Prepared], core: RoomCore, depth: int
    ) -> dict[str, list[tuple[SetCells, ...]]]:
        """Per client, the undo entries of its run entries that stay on its stack (at most ``depth``)."""
        by_client: dict[str, list[int]] = {}
        for k, entry in enumerate(self.entries):
            by_client.setdefault(entry.client, []).append(k)
        kept = sorted(k for ks in by_client.values() for k in ks[-depth:])
        # The old value of every write of a kept entry, one read per column.
        wanted: dict[int, list[int]] = {}
        for k in kept:
            for (cid, rows, _, _), start in zip(self.sets[k], self.starts[k], strict=True):
                wanted.setdefault(cid, []).extend(range(start, start + len(rows)))
        old = {cid: _old_values(state, prepared[cid], ix) for cid, ix in wanted.items()}
        out: dict[str, list[tuple[SetCells, ...]]] = {}
        for k in kept:
            inverse = []
            for (cid, rows, _, _), start in zip(self.sets[k], self.starts[k], strict=True):
                olds = old[cid]
                values = tuple(olds[i] for i in range(start, start + len(rows)))
                inverse.append(SetCells(tuple(rows), cid, values))
            out.setdefault(self.entries[k].client, []).append(tuple(reversed(inverse)))
        return out


def _prepare(state: State, cid: int, c: _Column) -> _Prepared:
    """Check one column's writes against ``state`` and plan their scatter.

    Raises:
        NotBulk: no such column, a rid not in the frame, or a value that does not coerce.
    """
    col = next((x for x in state.catalog.columns if x.id == cid), None)
    if col is None:
        raise NotBulk(f"no column id {cid}")
    all_rids = state.rids()
    n = len(all_rids)
    rids = np.asarray(c.rows, dtype=np.uint64)
    pos = np.searchsorted(all_rids, rids)
    if len(rids) and (n == 0 or int(pos.max()) >= n or not np.array_equal(all_rids[pos], rids)):
        raise NotBulk("a rid is not in the frame")
    try:
        values = coerce(c.values, col.dtype, what=f"column '{col.name}'")
    except Exception as e:  # noqa: BLE001 - whatever it is, the straight replay reproduces it
        raise NotBulk(str(e)) from None
    pos = pos.astype(np.int64)
    m = len(pos)
    # Sort writes by (position, order): a cell's writes are adjacent, oldest first.
    order = np.lexsort((np.arange(m), pos))
    sp = pos[order]
    same = sp[1:] == sp[:-1]
    prev = np.full(m, -1, dtype=np.int64)
    prev[order[1:][same]] = order[:-1][same]
    if same.any():
        last = np.ones(m, dtype=bool)
        last[:-1] = ~same
        keep = order[last]
        plan = SetPlan(col, rids[keep], pos[keep], values.gather(keep).rename(col.name))
    else:
        plan = SetPlan(col, rids, pos, values.rename(col.name))
    return _Prepared(col, rids, pos, values, prev, plan)


def _old_values(state: State, p: _Prepared, writes: list[int]) -> dict[int, Any]:
    """Write index → the cell's value just before that write (JSON-friendly, as undo stores it)."""
    ix = np.asarray(writes, dtype=np.int64)
    prev = p.prev[ix]
    in_run = prev >= 0
    out: dict[int, Any] = {}
    if in_run.any():
        out.update(zip(ix[in_run].tolist(), to_scalars(p.values.gather(prev[in_run])), strict=True))
    if not in_run.all():
        out.update(zip(ix[~in_run].tolist(), read_cells(state, p.col, p.positions[ix[~in_run]]), strict=True))
    return out
