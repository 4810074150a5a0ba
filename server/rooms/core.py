"""The room's single-writer core: applies op batches, no I/O.

One message is one atomic batch (PROTOCOL.md "op"). The core validates and
applies it against the current state, checks conflicts against the cell
clock, and on success assigns the next ``seq`` and records cell writes,
tombstones, the exactly-once reply and the undo entry.

Hot path: a message made only of ``set`` ops is *planned* (validated, old
values read) and parked in an overlay; the overlay is flushed as one scatter
per column before anything else reads the frame (docs/architecture.md,
"One op, end to end"). Every other message flushes the overlay and goes through
``server.ops.apply``; heavy ones run in a worker thread (Polars releases the
GIL), computed by :func:`run_general`, which never mutates the core.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol import (
    Ack,
    AddColumn,
    CastColumn,
    Delete,
    ErrorCode,
    FillNull,
    Insert,
    Op,
    Overwrite,
    RestoreColumn,
    RestoreRows,
    SetCells,
)

from ..ops import IN_PROCESS, ExprCost, SetPlan, apply, apply_set_plans, plan_set, prior_values, read_cells
from ..ops.state import Catalog, Column, Effect, OpError, State
from .clock import CellClock, ColumnFate
from .deltas import DeltaBuilder
from .replies import Replies
from .undo import LazyInverse, Stacks, UndoEntry, entry_ops

__all__ = ["RoomCore", "GeneralResult", "run_general", "is_heavy"]

HEAVY_INSERT_ROWS = 10_000


def is_heavy(ops: tuple[Op, ...]) -> bool:
    """Ops that should run off the event loop (docs/architecture.md, "One op, end to end")."""
    for op in ops:
        if isinstance(op, (CastColumn, FillNull, RestoreColumn)):
            return True
        if isinstance(op, AddColumn) and op.expr is not None:
            return True
        if isinstance(op, Delete) and op.where is not None:
            return True
        if isinstance(op, (Insert, RestoreRows)) and op.rows.num_rows > HEAVY_INSERT_ROWS:
            return True
    return False


@dataclass(slots=True)
class GeneralResult:
    state: State
    inverse: tuple[Op, ...]
    effects: list[Effect]
    overwritten: list[Overwrite]
    rids: list[int]
    applied: tuple[Op, ...]  # the ops with column refs resolved to ids (for the WAL)


def with_ids(catalog: Catalog, op: Op) -> Op:
    """``op`` naming its column by id, resolved against ``catalog`` (PROTOCOL.md §4)."""
    col = getattr(op, "col", None)
    if col is None or isinstance(col, int):
        return op
    return dataclasses.replace(op, col=catalog.resolve(col).id)  # type: ignore[type-var]


def run_general(
    state: State,
    clock: CellClock,
    client: str,
    base_seq: int,
    ops: tuple[Op, ...],
    exprs: ExprCost = IN_PROCESS,
) -> GeneralResult:
    """Apply ``ops`` in order to ``state`` (pure with respect to the room).

    ``exprs`` evaluates ``add_column`` and ``delete`` expressions and bounds
    their cost (the room's worker processes, or :data:`~server.ops.TRUSTED`
    when replaying the WAL).

    Raises:
        OpError: with ``details['op_index']`` set; nothing was applied.
    """
    inverses: list[tuple[Op, ...]] = []
    effects: list[Effect] = []
    overwritten: list[Overwrite] = []
    rids: list[int] = []
    applied: list[Op] = []
    for i, op in enumerate(ops):
        try:
            if isinstance(op, SetCells):
                overwritten += _conflicts(state, clock, client, base_seq, op)
            a = apply(state, op, exprs)
        except OpError as e:
            e.details.setdefault("op_index", i)
            raise
        applied.append(with_ids(state.catalog, op))
        state = a.state
        inverses.append(a.inverse)
        effects.append(a.effect)
        if isinstance(op, Insert):
            rids += [int(r) for r in a.effect.inserted]
    inverse = tuple(o for inv in reversed(inverses) for o in inv)
    return GeneralResult(state, inverse, effects, overwritten, rids, tuple(applied))


def _conflicts(state: State, clock: CellClock, client: str, base_seq: int, op: SetCells) -> list[Overwrite]:
    """The concurrent overwrites of ``op`` against the frame (the general path: no overlay)."""
    col = state.catalog.resolve(op.col)
    rids = np.asarray(op.rows, dtype=np.uint64)
    found = clock.concurrent_at(col.id, rids, base_seq, client)
    if not len(found[0]):
        return []
    pos = np.searchsorted(state.rids(), rids[found[0]])
    return _overwrites(clock, col, base_seq, op, rids, found, lambda: read_cells(state, col, pos))


def _overwrites(
    clock: CellClock,
    col: Column,
    base_seq: int,
    op: SetCells,
    rids: np.ndarray,
    found: tuple[np.ndarray, np.ndarray, np.ndarray],
    values: Callable[[], list[Any]],
) -> list[Overwrite]:
    """``found`` (from :meth:`CellClock.concurrent_at`) as overwrite reports with the cells' ``values``.

    Raises:
        OpError: ``conflict`` for a compare-and-set ``op``, naming the first writes.
    """
    idx, seqs, wids = found
    name = clock.writers.name
    cells = [
        (r, name(w), s) for r, w, s in zip(rids[idx].tolist(), wids.tolist(), seqs.tolist(), strict=True)
    ]
    if op.if_unchanged:
        rid, by, seq = cells[0]
        raise OpError(
            ErrorCode.CONFLICT,
            f"cell (row {rid}, column '{col.name}') was changed by {by} at seq {seq},"
            f" after your base_seq {base_seq}; re-read it and retry",
            cells=[{"rid": r, "column": col.name, "by": b, "seq": q} for r, b, q in cells[:5]],
        )
    return [Overwrite(r, col.name, v, b, q) for (r, b, q), v in zip(cells, values(), strict=True)]


_MISSING = object()


def _written(plans: Sequence[SetPlan], col_id: int, rid: int) -> Any:
    """The value the last of ``plans`` that wrote cell (``rid``, ``col_id``) wrote, or ``_MISSING``."""
    for p in reversed(plans):
        if p.col.id == col_id:
            hit = np.flatnonzero(p.rids == rid)
            if len(hit):
                return p.value_at(int(hit[-1]))
    return _MISSING


class RoomCore:
    """State, seq and conflict metadata of one room; the only writer of its frame."""

    def __init__(self, state: State, seq: int = 0, *, undo_depth: int = 100) -> None:
        self.state = state
        self.seq = seq
        self.clock = CellClock()
        self.replies = Replies()
        self.undo_depth = undo_depth
        self._stacks: dict[str, Stacks] = {}
        # The overlay: set plans parked since the last flush (one scatter per
        # column at the flush), the undo entries waiting for their prior
        # values, and each parked batch's plans by seq (for overwrite reports).
        self._plans: list[SetPlan] = []
        self._lazy: list[LazyInverse] = []
        self._parked: dict[int, tuple[SetPlan, ...]] = {}
        # The ops of the last applied batch, column ids resolved (for the WAL).
        self.last_applied: tuple[Op, ...] = ()
        # Rid ranges touched since the last commit; None = every range.
        self.dirty_rids: list[np.ndarray] | None = []

    # ------------------------------------------------------------ overlay

    def flush(self) -> None:
        """Write parked set plans into the frame: one scatter per column."""
        if self._plans:
            prior = prior_values(self.state, self._plans)
            at = 0
            for lazy in self._lazy:
                n = len(lazy.plans)
                lazy.prior = prior[at : at + n]
                at += n
            self.state = apply_set_plans(self.state, self._plans)
            self._plans = []
            self._lazy = []
            self._parked = {}

    def stacks(self, client: str) -> Stacks:
        stacks = self._stacks.get(client)
        if stacks is None:
            stacks = self._stacks[client] = Stacks()
        return stacks

    # ------------------------------------------------------------ fast path

    def apply_sets(
        self, client: str, client_seq: int, base_seq: int, ops: tuple[SetCells, ...], builder: DeltaBuilder
    ) -> Ack:
        """Apply a message of ``set`` ops via the overlay.

        Raises:
            OpError: with ``details['op_index']``; nothing was applied.
        """
        state = self.state
        plans: list[SetPlan] = []
        applied: list[Op] = []
        overwritten: list[Overwrite] = []
        for i, op in enumerate(ops):
            try:
                plan = plan_set(state, op)
                found = self.clock.concurrent_at(plan.col.id, plan.rids, base_seq, client)
                if len(found[0]):
                    overwritten += _overwrites(
                        self.clock,
                        plan.col,
                        base_seq,
                        op,
                        plan.rids,
                        found,
                        lambda p=plan, f=found: self._current(p, f, plans),  # type: ignore[misc]
                    )
            except OpError as e:
                e.details.setdefault("op_index", i)
                raise
            cid = plan.col.id
            applied.append(op if op.col == cid else SetCells(op.rows, cid, op.values, op.if_unchanged))
            plans.append(plan)
        seq = self._next_seq()
        self._plans += plans
        lazy = LazyInverse(tuple(plans))
        self._lazy.append(lazy)
        self._parked[seq] = lazy.plans
        for plan in plans:
            self.clock.record(seq, client, plan.col.id, plan.rids)
            builder.add_plan(plan)
            if self.dirty_rids is not None:
                self.dirty_rids.append(plan.rids)
        self.last_applied = tuple(applied)
        self._push_undo(client, lazy, "op")
        ack = Ack(seq, client_seq, (), tuple(overwritten))
        self.replies.put(client, client_seq, ack)
        return ack

    def _current(
        self, plan: SetPlan, found: tuple[np.ndarray, np.ndarray, np.ndarray], earlier: list[SetPlan]
    ) -> list[Any]:
        """The current values of ``plan``'s cells at ``found``: overlay first, then the frame.

        A concurrent cell's value is that of its last write (the clock's seq):
        a parked batch's plan if it is in the overlay, else the frame's; an
        earlier op of the same batch that wrote it wins over both.
        """
        idx, seqs, _ = found
        cid = plan.col.id
        out = read_cells(self.state, plan.col, plan.positions[idx])  # the frame's, in one read
        mine = [p for p in earlier if p.col.id == cid]
        if not mine and not self._parked:
            return out
        for k, (rid, seq) in enumerate(zip(plan.rids[idx].tolist(), seqs.tolist(), strict=True)):
            for source in (mine, self._parked.get(seq)):
                if not source:
                    continue
                v = _written(source, cid, rid)
                if v is not _MISSING:
                    out[k] = v
                    break
        return out

    # ------------------------------------------------------------ general path

    def commit_general(
        self,
        client: str,
        client_seq: int,
        result: GeneralResult,
        builder: DeltaBuilder,
        kind: str,
    ) -> Ack:
        """Adopt a :func:`run_general` result computed from the current state."""
        before: Catalog = self.state.catalog
        seq = self._next_seq()
        self.state = result.state
        self.last_applied = result.applied
        for effect in result.effects:
            builder.add(effect)
            self._mark_dirty(effect)
            for col_id, rids in effect.cells.items():
                self.clock.record(seq, client, col_id, rids.tolist())
            self.clock.record_deleted(seq, client, effect.deleted)
        self._record_columns(before, result.state.catalog, seq, client)
        self._push_undo(client, result.inverse, kind)
        ack = Ack(seq, client_seq, tuple(result.rids), tuple(result.overwritten))
        self.replies.put(client, client_seq, ack)
        return ack

    def _mark_dirty(self, effect: Effect) -> None:
        if self.dirty_rids is None:
            return
        if effect.full:
            self.dirty_rids = None  # a whole column changed: every chunk
            return
        for rids in effect.cells.values():
            self.dirty_rids.append(rids)
        if len(effect.inserted):
            self.dirty_rids.append(effect.inserted)
        if len(effect.deleted):
            self.dirty_rids.append(effect.deleted)

    def take_dirty(self) -> np.ndarray | None:
        """Rids touched since the last call (None: everything), and reset."""
        dirty, self.dirty_rids = self.dirty_rids, []
        if dirty is None:
            return None
        return np.concatenate(dirty) if dirty else np.empty(0, dtype=np.uint64)

    def _record_columns(self, before: Catalog, after: Catalog, seq: int, client: str) -> None:
        now = {c.id: c for c in after.columns}
        for c in before.columns:
            new = now.get(c.id)
            if new is None:
                self.clock.record_column(ColumnFate(c.id, c.name, None, seq, client))
                self.clock.forget_column(c.id)
            elif new.name != c.name:
                self.clock.record_column(ColumnFate(c.id, c.name, new.name, seq, client))

    # ------------------------------------------------------------ undo

    def pop_undo(self, client: str, kind: str) -> tuple[Op, ...]:
        """The inverse batch to apply for ``undo``/``redo``.

        Raises:
            OpError: ``nothing_to_undo`` / ``nothing_to_redo``.
        """
        stacks = self.stacks(client)
        stack = stacks.undo if kind == "undo" else stacks.redo
        if not stack:
            code = ErrorCode.NOTHING_TO_UNDO if kind == "undo" else ErrorCode.NOTHING_TO_REDO
            raise OpError(code, f"nothing to {kind} for client '{client}'")
        if isinstance(stack[-1], LazyInverse) and stack[-1].prior is None:
            self.flush()  # its prior values are read at the flush
        return entry_ops(stack.pop())

    def restore_undo(self, client: str, kind: str, ops: tuple[Op, ...]) -> None:
        """Put back an undo/redo entry whose application failed."""
        stacks = self.stacks(client)
        (stacks.undo if kind == "undo" else stacks.redo).append(ops)

    def _push_undo(self, client: str, inverse: UndoEntry, kind: str) -> None:
        stacks = self.stacks(client)
        if kind == "undo":
            stacks.redo.append(inverse)
            return
        if kind == "op":
            stacks.redo.clear()
        stacks.undo.append(inverse)
        del stacks.undo[: -self.undo_depth]

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq
