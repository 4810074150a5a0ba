"""WAL replay in bulk equals the straight replay, and both equal the live room (issue 9).

A seeded workload runs through the tick (:func:`apply_batches`) like a live
room: ``set`` batches on every dtype by three clients (several ops and rows,
the same cells again, stale ``base_seq`` so some acks carry ``overwritten``),
inserts, deletes, renames, added and dropped columns, undo and redo, batches
that fail and resends. Its WAL entries are then replayed on the initial state
by :func:`replay` (runs of ``set`` entries in bulk) and by :func:`replay_each`
(entry by entry), and the two cores are compared field by field: frame,
catalog, seq, cell clock, row and column fates, replies, undo/redo stacks,
dirty rids. Both must also equal the live core.
"""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pytest

from protocol import (
    Ack,
    AddColumn,
    Delete,
    DropColumn,
    Error,
    Insert,
    OpBatch,
    Redo,
    RenameColumn,
    SetCells,
    Undo,
)
from server.demo import demo_sales
from server.ops import normalize_frame
from server.ops.state import OpError, State
from server.rooms import wal
from server.rooms.core import RoomCore
from server.rooms.recovery import recover
from server.rooms.tick import Batch, apply_batches
from server.rooms.undo import entry_ops
from server.storage.service import Storage
from server.storage.types import WalEntry

ROWS = 300
CLIENTS = ("ann", "bob", "cyd")
UNDO_DEPTH = 4  # small, so the stacks are trimmed
PER_CLIENT = 24  # replies kept per client, small so they are evicted


def initial() -> State:
    df, catalog = normalize_frame(demo_sales(ROWS, seed=3))
    return State(df, catalog, df.height)


def new_core(state: State) -> RoomCore:
    core = RoomCore(state, 0, undo_depth=UNDO_DEPTH)
    core.replies.per_client = PER_CLIENT
    return core


def _value(col: str, rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.08:
        return None
    if col == "price":
        return rng.choice([round(rng.uniform(0, 500), 2), rng.randrange(1000)])
    if col == "qty":
        return rng.choice([rng.randrange(1, 60), float(rng.randrange(1, 60))])
    if col == "discount":
        return rng.choice([0.0, 0.05, 0.125, 0.2])
    if col == "paid":
        return rng.random() < 0.5
    if col == "date":
        return f"2025-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    if col == "updated_at":
        return f"2025-03-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:15:00"
    return rng.choice(["rush", "gift", "bulk", "é ü"])


SET_COLS = ("price", "qty", "discount", "paid", "date", "updated_at", "note", "region")


class Workload:
    """A seeded mix of batches, applied through the tick like a live room."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.core = new_core(initial())
        self.cs = dict.fromkeys(CLIENTS, 0)
        self.entries: list[WalEntry] = []
        self.sent: list[Batch] = []

    def _names(self) -> list[str]:
        names = self.core.state.catalog.names()
        return [n for n in names if n in SET_COLS or n.startswith(("tmp", "renamed"))]

    def _ops(self) -> tuple[Any, ...]:
        rng, state = self.rng, self.core.state
        r = rng.random()
        rids = state.rids()
        if r < 0.04:
            return (Insert(pa.table({"qty": [rng.randrange(9)], "note": ["new"]})),)
        if r < 0.07 and len(rids) > 10:
            return (Delete(rows=(int(rids[rng.randrange(len(rids))]),)),)
        if r < 0.08:
            names = [n for n in state.catalog.names() if n.startswith("tmp")]
            if names:
                return (DropColumn(names[0]),)
            return (AddColumn(f"tmp{rng.randrange(1000)}", "Int64", 7),)
        if r < 0.085 and "region" in state.catalog.names():
            return (RenameColumn("region", "renamed_region"),)
        ops = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            col = rng.choice(self._names())
            pick = [int(x) for x in rng.sample(list(rids), rng.choice([1, 1, 2, 4]))]
            if rng.random() < 0.4:  # the same hot cells again and again
                col = rng.choice([n for n in ("price", "note", "paid") if n in state.catalog.names()])
                pick = [int(x) for x in rng.sample(list(rids[:3]), rng.choice([1, 2]))]
            dtype = next(c.dtype for c in state.catalog.columns if c.name == col)
            base = col if dtype != "Int64" else "qty"
            values = tuple(_value(base if not col.startswith("renamed") else "region", rng) for _ in pick)
            if col.startswith("tmp"):
                values = tuple(rng.randrange(100) for _ in pick)
            ops.append(SetCells(tuple(pick), col, values, if_unchanged=rng.random() < 0.05))
        return tuple(ops)

    async def step(self) -> None:
        rng, core = self.rng, self.core
        batches = []
        for _ in range(rng.randrange(1, 10)):
            client = rng.choice(CLIENTS)
            r = rng.random()
            if r < 0.04 and self.sent:  # a resend: acked again as a duplicate, not logged
                batches.append(rng.choice(self.sent))
                continue
            self.cs[client] += 1
            base = max(0, core.seq - rng.randrange(0, 6))
            if r < 0.10:
                msg: Any = Undo(self.cs[client], base)
                kind = "undo"
            elif r < 0.13:
                msg = Redo(self.cs[client], base)
                kind = "redo"
            else:
                msg, kind = OpBatch(self.cs[client], base, self._ops()), "op"
            if kind == "op" and rng.random() < 0.03:  # a batch that fails: not logged
                msg = OpBatch(self.cs[client], base, (SetCells((10**9,), "price", (1.0,)),))
            b = Batch(kind, client, msg, None)
            batches.append(b)
            self.sent.append(b)
        out = await apply_batches(core, batches, max_rows=10_000)
        self.entries += out.entries


async def workload(seed: int = 9, steps: int = 160) -> Workload:
    w = Workload(seed)
    for _ in range(steps):
        await w.step()
    w.core.flush()
    return w


def snapshot(core: RoomCore, entries: list[WalEntry]) -> dict[str, Any]:
    """Everything recovery must restore, through the core's public surface."""
    state = core.state
    cells = {
        (cid, rid): core.clock.last_write(cid, rid)
        for cid in range(state.catalog.next_id)
        for rid in range(state.next_rid)
    }
    replies = {
        (e.client, cs): core.replies.get(e.client, cs) for e in entries for cs in range(e.client_seq + 1)
    }
    core.flush()  # a set-only batch's undo entry reads its prior values at the flush
    stacks = {
        c: ([entry_ops(e) for e in core.stacks(c).undo], [entry_ops(e) for e in core.stacks(c).redo])
        for c in CLIENTS
    }
    dirty = core.take_dirty()
    return {
        "frame": state.frame.to_dicts(),
        "schema": state.frame.schema,
        "catalog": state.catalog,
        "next_rid": state.next_rid,
        "seq": core.seq,
        "clock": {k: v for k, v in cells.items() if v is not None},
        "clock_len": len(core.clock),
        "rows": {rid: core.clock.row_fate(rid) for rid in range(state.next_rid)},
        "columns": {ref: core.clock.column_fate(ref) for ref in [*range(state.catalog.next_id), *SET_COLS]},
        "replies": replies,
        "high_water": core.replies.high_water(),
        "stacks": stacks,
        "dirty": None if dirty is None else sorted(set(dirty.tolist())),
        "last_applied": core.last_applied,
    }


def assert_same(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    for key in a:
        assert a[key] == b[key], f"{what}: {key} differs"


@pytest.mark.parametrize("run_limit", [wal.RUN_LIMIT, 5])
async def test_bulk_replay_equals_straight_replay_and_live(
    monkeypatch: pytest.MonkeyPatch, run_limit: int
) -> None:
    monkeypatch.setattr(wal, "RUN_LIMIT", run_limit)
    w = await workload()
    kinds = {e.kind for e in w.entries}
    assert kinds == {"op", "undo", "redo"} and len(w.entries) > 300
    bulk, each = new_core(initial()), new_core(initial())
    assert wal.replay(bulk, w.entries) == len(w.entries)
    assert wal.replay_each(each, w.entries) == len(w.entries)
    got = snapshot(bulk, w.entries)
    assert_same(got, snapshot(each, w.entries), "bulk vs straight")
    # Failed batches are answered live but never logged, so the live replies
    # (and what they evict) differ; the rest must be the same.
    live = snapshot(w.core, w.entries)
    for key in ("replies", "high_water", "dirty"):
        live.pop(key), got.pop(key)
    assert_same(got, live, "replay vs live")
    kept = 0
    for e in w.entries:  # a resend after recovery gets its first ack, or duplicate_expired
        reply, first = bulk.replies.get(e.client, e.client_seq), w.core.replies.get(e.client, e.client_seq)
        if isinstance(reply, Ack):
            kept += 1
            assert reply == wal.decode_ack(e) and (reply == first or not isinstance(first, Ack))
        else:
            assert isinstance(reply, Error) and reply.code == "duplicate_expired"
    assert kept >= PER_CLIENT


async def test_undo_of_a_cell_written_again_in_the_run() -> None:
    """The inverse of a write holds the value of the cell's previous write in the run, not the frame's."""
    core = new_core(initial())
    before = initial().frame["price"][2]
    batches = [
        Batch("op", "ann", OpBatch(1, 0, (SetCells((2,), "price", (1.0,)),)), None),
        Batch("op", "bob", OpBatch(1, 0, (SetCells((2, 3), "price", (2.0, 3.0)),)), None),
        Batch(
            "op", "ann", OpBatch(2, 0, (SetCells((2,), "price", (4,)), SetCells((2,), "price", (5.5,)))), None
        ),
    ]
    entries = (await apply_batches(core, batches, max_rows=100)).entries
    bulk, each = new_core(initial()), new_core(initial())
    wal.replay(bulk, entries)
    wal.replay_each(each, entries)
    assert_same(snapshot(bulk, entries), snapshot(each, entries), "bulk vs straight")
    assert [entry_ops(e) for e in bulk.stacks("ann").undo] == [
        (SetCells((2,), 5, (before,)),),
        (SetCells((2,), 5, (4.0,)), SetCells((2,), 5, (2.0,))),
    ]
    assert bulk.state.frame["price"][2] == 5.5


async def test_replay_continues_a_core_in_pieces() -> None:
    """Replaying the WAL in two calls (a commit in between) equals one call."""
    w = await workload(seed=4, steps=60)
    one, two = new_core(initial()), new_core(initial())
    wal.replay(one, w.entries)
    half = len(w.entries) // 2
    wal.replay(two, w.entries[:half])
    wal.replay(two, w.entries[half:])
    assert_same(snapshot(one, w.entries), snapshot(two, w.entries), "one call vs two")


async def test_undo_after_recovery_does_not_undo_twice() -> None:
    """An ``undo`` in the WAL takes its entry off the replayed stack, as it did live."""
    core = new_core(initial())
    batches = [
        Batch("op", "ann", OpBatch(1, 0, (SetCells((1,), "price", (5.0,)),)), None),
        Batch("op", "ann", OpBatch(2, 0, (SetCells((2,), "price", (6.0,)),)), None),
        Batch("undo", "ann", Undo(3, 2), None),
    ]
    out = await apply_batches(core, batches, max_rows=100)
    replayed = new_core(initial())
    wal.replay(replayed, out.entries)
    for c in (core, replayed):
        assert len(c.stacks("ann").undo) == 1 and len(c.stacks("ann").redo) == 1
        assert c.pop_undo("ann", "undo") == (SetCells((1,), 5, (initial().frame["price"][1],)),)


def _corrupt(entry: WalEntry, **changes: Any) -> WalEntry:
    ops = [o.to_wire() for o in wal.decode_ops(entry)]
    ops[0].update(changes)
    body = wal.encode_map({"ops": ops}, binary=True)
    assert isinstance(body, bytes)
    return WalEntry(entry.seq, entry.client, entry.client_seq, entry.kind, body, entry.reply)


@pytest.mark.parametrize(
    "change", [{"rows": [10**9]}, {"col": 999}, {"values": ["not a number"]}, {"values": 7}]
)
async def test_an_entry_that_does_not_apply_fails_as_in_the_straight_replay(change: dict[str, Any]) -> None:
    core = new_core(initial())
    batches = [
        Batch("op", "ann", OpBatch(i, 0, (SetCells((i,), "price", (float(i),)),)), None) for i in range(1, 9)
    ]
    entries = (await apply_batches(core, batches, max_rows=100)).entries
    entries[5] = _corrupt(entries[5], **change)
    errors = []
    cores = []
    for fn in (wal.replay, wal.replay_each):
        c = new_core(initial())
        try:
            fn(c, entries)
            errors.append(None)
        except (OpError, ValueError) as e:
            errors.append((type(e), str(e)))
        c.flush()
        cores.append(c)
    assert errors[0] == errors[1]
    if change != {"values": 7}:  # a scalar for one row is still a valid set
        assert errors[0] is not None and cores[0].seq == 5
    assert_same(snapshot(cores[0], entries), snapshot(cores[1], entries), "after the failure")


async def test_a_gap_stops_both_replays_at_the_same_entry() -> None:
    core = new_core(initial())
    batches = [Batch("op", "bob", OpBatch(i, 0, (SetCells((i,), "qty", (i,)),)), None) for i in range(1, 7)]
    entries = (await apply_batches(core, batches, max_rows=100)).entries
    del entries[3]
    cores, errors = [], []
    for fn in (wal.replay, wal.replay_each):
        c = new_core(initial())
        with pytest.raises(ValueError, match="WAL gap") as info:
            fn(c, entries)
        c.flush()
        cores.append(c)
        errors.append(str(info.value))
    assert errors[0] == errors[1] == "WAL gap: expected seq 4, found 5"
    assert_same(snapshot(cores[0], entries), snapshot(cores[1], entries), "at the gap")


async def test_recover_through_the_catalog_resends_get_their_first_ack() -> None:
    storage = Storage.memory()
    frame = demo_sales(ROWS, seed=3)
    manifest = await storage.create_dataset("sales", frame, author="t", message="m")
    live = RoomCore(await storage.state_of(manifest), 0)
    batches = [
        Batch("op", c, OpBatch(i, 0, (SetCells((i % 7,), "price", (float(i),)),)), None)
        for i in range(1, 41)
        for c in ("ann", "bob")
    ]
    out = await apply_batches(live, batches, max_rows=100)
    await storage.catalog.append_wal("sales", "main", out.entries)
    live.flush()
    _, core, replayed = await recover(storage, "sales", "main")
    assert replayed == 80 and core.seq == live.seq == 80
    assert core.state.frame.equals(live.state.frame)
    again = await apply_batches(core, [batches[10]], max_rows=100)
    (_, reply), first = again.replies[0], out.replies[10][1]
    assert isinstance(reply, Ack) and isinstance(first, Ack)
    assert reply.duplicate and reply.seq == first.seq and not again.entries
    dirty = core.take_dirty()
    assert dirty is not None and set(dirty.tolist()) == set(range(7))
    await storage.close()
