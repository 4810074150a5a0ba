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
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol import (
    Ack,
    AddColumn,
    CastColumn,
    Delete,
    Error,
    ErrorCode,
    FillNull,
    Insert,
    Op,
    Overwrite,
    RestoreColumn,
    RestoreRows,
    SetCells,
)

from ..ops import apply, apply_set_plans, plan_set, read_cells, to_scalars
from ..ops.state import Catalog, Effect, OpError, State
from .clock import CellClock, ColumnFate
from .deltas import DeltaBuilder

__all__ = ["RoomCore", "Outcome", "GeneralResult", "run_general", "is_heavy", "describe_error"]

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
class Outcome:
    """The reply to one message: an ack or an error."""

    reply: Ack | Error
    applied: bool


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
    state: State, clock: CellClock, client: str, base_seq: int, ops: tuple[Op, ...]
) -> GeneralResult:
    """Apply ``ops`` in order to ``state`` (pure with respect to the room).

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
                overwritten += _conflicts(state, clock, client, base_seq, op, None)
            a = apply(state, op)
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


def _conflicts(
    state: State,
    clock: CellClock,
    client: str,
    base_seq: int,
    op: SetCells,
    pending: dict[tuple[int, int], Any] | None,
) -> list[Overwrite]:
    col = state.catalog.resolve(op.col)
    found = clock.concurrent(col.id, op.rows, base_seq, client)
    if not found:
        return []
    if op.if_unchanged:
        rid, w = found[0]
        raise OpError(
            ErrorCode.CONFLICT,
            f"cell (row {rid}, column '{col.name}') was changed by {w.client} at seq {w.seq},"
            f" after your base_seq {base_seq}; re-read it and retry",
            cells=[{"rid": r, "column": col.name, "by": x.client, "seq": x.seq} for r, x in found[:5]],
        )
    rids = np.asarray([r for r, _ in found], dtype=np.uint64)
    pos = np.searchsorted(state.rids(), rids)
    values = read_cells(state, col, pos)
    out = []
    for (rid, w), v in zip(found, values, strict=True):
        if pending is not None and (col.id, rid) in pending:
            v = pending[(col.id, rid)]
        out.append(Overwrite(rid, col.name, v, w.client, w.seq))
    return out


def describe_error(e: OpError, clock: CellClock, seq: int) -> Error:
    """Turn an OpError into an ``error`` reply that names what happened."""
    message = e.message
    details = dict(e.details)
    if e.code == ErrorCode.NO_SUCH_COLUMN and "column" in details:
        fate = clock.column_fate(details["column"])
        if fate is not None:
            ref = details["column"]
            what = f"'{ref}'" if isinstance(ref, str) else f"id {ref}"
            if fate.new_name is not None:
                message = (
                    f"column {what} was renamed to '{fate.new_name}' at seq {fate.seq} by {fate.client};"
                    f" use its new name or its id {fate.col_id}"
                )
                details.update(renamed_to=fate.new_name, at_seq=fate.seq, by=fate.client, id=fate.col_id)
            else:
                message = f"column {what} was dropped at seq {fate.seq} by {fate.client}"
                details.update(dropped_at_seq=fate.seq, by=fate.client)
    elif e.code == ErrorCode.NO_SUCH_ROW and details.get("rids"):
        rid = int(details["rids"][0])
        fate_row = clock.row_fate(rid)
        if fate_row is not None:
            message = f"row {rid} was deleted at seq {fate_row[0]} by {fate_row[1]}; it cannot be edited"
            details.update(deleted_at_seq=fate_row[0], by=fate_row[1])
    if "op_index" in details:
        message = f"ops[{details['op_index']}]: {message}"
    return Error(e.code, message, details)


class _Replies:
    """Exactly-once memory: (client, client_seq) → the reply sent the first time."""

    def __init__(self, per_client: int = 8192) -> None:
        self.per_client = per_client
        self._by_client: dict[str, OrderedDict[int, Ack | Error]] = {}
        self._max: dict[str, int] = {}

    def get(self, client: str, client_seq: int) -> Ack | Error | None:
        seen = self._by_client.get(client)
        if seen is not None and client_seq in seen:
            return seen[client_seq]
        if client_seq <= self._max.get(client, -1):
            return Error(
                ErrorCode.DUPLICATE_EXPIRED,
                f"client_seq {client_seq} was used before and its reply is no longer kept;"
                " use increasing client_seq values and resend unacked ops promptly",
                {"client_seq": client_seq},
            )
        return None

    def high_water(self) -> dict[str, int]:
        """Highest client_seq seen per client (stored in each commit's manifest)."""
        return dict(self._max)

    def seed(self, high_water: dict[str, int]) -> None:
        """Resends at or below these (from a commit) get ``duplicate_expired``, never re-applied."""
        for client, cs in high_water.items():
            if cs > self._max.get(client, -1):
                self._max[client] = cs

    def put(self, client: str, client_seq: int, reply: Ack | Error) -> None:
        seen = self._by_client.setdefault(client, OrderedDict())
        seen[client_seq] = reply
        if client_seq > self._max.get(client, -1):
            self._max[client] = client_seq
        while len(seen) > self.per_client:
            seen.popitem(last=False)


@dataclass(slots=True)
class _Stacks:
    undo: list[tuple[Op, ...]] = field(default_factory=list)
    redo: list[tuple[Op, ...]] = field(default_factory=list)


class RoomCore:
    """State, seq and conflict metadata of one room; the only writer of its frame."""

    def __init__(self, state: State, seq: int = 0, *, undo_depth: int = 100) -> None:
        self.state = state
        self.seq = seq
        self.clock = CellClock()
        self.replies = _Replies()
        self.undo_depth = undo_depth
        self._stacks: dict[str, _Stacks] = {}
        # Pending set plans (flushed as one scatter per column) and their values.
        self._plans: list[Any] = []
        self._pending: dict[tuple[int, int], Any] = {}
        # The ops of the last applied batch, column ids resolved (for the WAL).
        self.last_applied: tuple[Op, ...] = ()
        # Rid ranges touched since the last commit; None = every range.
        self.dirty_rids: list[np.ndarray] | None = []

    # ------------------------------------------------------------ overlay

    def flush(self) -> None:
        """Write parked set plans into the frame: one scatter per column."""
        if self._plans:
            self.state = apply_set_plans(self.state, self._plans)
            self._plans = []
            self._pending = {}

    def stacks(self, client: str) -> _Stacks:
        return self._stacks.setdefault(client, _Stacks())

    # ------------------------------------------------------------ fast path

    def apply_sets(
        self, client: str, client_seq: int, base_seq: int, ops: tuple[SetCells, ...], builder: DeltaBuilder
    ) -> Ack:
        """Apply a message of ``set`` ops via the overlay.

        Raises:
            OpError: with ``details['op_index']``; nothing was applied.
        """
        state = self.state
        local: dict[tuple[int, int], Any] = {}
        plans = []
        inverse: list[Op] = []
        applied: list[Op] = []
        overwritten: list[Overwrite] = []
        for i, op in enumerate(ops):
            try:
                plan = plan_set(state, op)
                merged = {**self._pending, **local} if local else self._pending
                overwritten += _conflicts(state, self.clock, client, base_seq, op, merged)
            except OpError as e:
                e.details.setdefault("op_index", i)
                raise
            cid = plan.col.id
            old = read_cells(state, plan.col, plan.positions)
            rids = plan.rids.tolist()
            for j, rid in enumerate(rids):
                key = (cid, rid)
                if key in local:
                    old[j] = local[key]
                elif key in self._pending:
                    old[j] = self._pending[key]
            inverse.append(SetCells(tuple(rids), cid, tuple(old)))
            applied.append(SetCells(op.rows, cid, op.values, op.if_unchanged))
            local.update(zip(((cid, r) for r in rids), to_scalars(plan.values), strict=True))
            plans.append(plan)
        seq = self._next_seq()
        self._plans += plans
        self._pending.update(local)
        for plan in plans:
            self.clock.record(seq, client, plan.col.id, plan.rids.tolist())
            builder.add_cells(plan.col.id, plan.rids)
            if self.dirty_rids is not None:
                self.dirty_rids.append(plan.rids)
        self.last_applied = tuple(applied)
        self._push_undo(client, tuple(reversed(inverse)), "op")
        ack = Ack(seq, client_seq, (), tuple(overwritten))
        self.replies.put(client, client_seq, ack)
        return ack

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
        return stack.pop()

    def restore_undo(self, client: str, kind: str, ops: tuple[Op, ...]) -> None:
        """Put back an undo/redo entry whose application failed."""
        stacks = self.stacks(client)
        (stacks.undo if kind == "undo" else stacks.redo).append(ops)

    def _push_undo(self, client: str, inverse: tuple[Op, ...], kind: str) -> None:
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
