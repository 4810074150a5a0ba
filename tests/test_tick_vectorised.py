"""The tick's vectorised structures give exactly what the per-cell ones gave.

Equivalence tests for issue 9's hot path: the cell clock's numpy registers
against a reference model (the per-cell dict clock it replaced); the overlay's
prior values and overwrite reports against the general path (one op at a
time, the frame flushed after each); the decoder's fast paths against the
per-element checks; rid positions in a frame with and without gaps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from protocol import Delta, ProtocolError, SetCells
from protocol import _fields as f
from server.ops import OpError, apply_set_plans, locate, normalize_frame, plan_set, prior_values, read_cells
from server.ops.arrays import last_of_each, unique_sorted
from server.ops.state import State
from server.rooms.clock import CellClock
from server.rooms.core import RoomCore, run_general
from server.rooms.deltas import DeltaBuilder

# --------------------------------------------------------------------------- the clock


@dataclass(frozen=True)
class _W:
    seq: int
    client: str


class _DictClock:
    """The per-cell reference: a dict of writes per column and a log for pruning."""

    def __init__(self) -> None:
        self.cells: dict[int, dict[int, _W]] = {}
        self.log: list[tuple[int, int, list[int]]] = []
        self.mark = 0

    def record(self, seq: int, client: str, col: int, rids: list[int]) -> None:
        self.cells.setdefault(col, {}).update(dict.fromkeys(rids, _W(seq, client)))
        self.log.append((seq, col, rids))

    def concurrent(self, col: int, rids: list[int], base: int, client: str) -> list[tuple[int, int, str]]:
        c = self.cells.get(col, {})
        out = []
        for r in rids:
            w = c.get(r)
            if w is not None and w.seq > base and w.client != client:
                out.append((r, w.seq, w.client))
        return out

    def prune(self, mark: int) -> int:
        self.mark = max(self.mark, mark)
        dropped = 0
        while self.log and self.log[0][0] <= self.mark:
            seq, col, rids = self.log.pop(0)
            c = self.cells.get(col, {})
            for r in rids:
                w = c.get(r)
                if w is not None and w.seq == seq:
                    del c[r]
                    dropped += 1
        return dropped

    def __len__(self) -> int:
        return sum(len(c) for c in self.cells.values())


@pytest.mark.parametrize("seed", range(6))
def test_clock_registers_match_the_per_cell_reference(seed: int) -> None:
    rng = random.Random(seed)
    new, ref = CellClock(), _DictClock()
    clients = ["a", "b", "c"]
    seq = 0
    for _ in range(400):
        roll = rng.random()
        col = rng.randrange(3)
        if roll < 0.55:
            seq += 1
            rids = rng.sample(range(rng.choice([5, 50, 3000])), rng.randrange(0, 5))
            client = rng.choice(clients)
            new.record(seq, client, col, np.asarray(rids, dtype=np.uint64))
            ref.record(seq, client, col, rids)
        elif roll < 0.9:
            rids = [rng.randrange(4000) for _ in range(rng.randrange(0, 8))]
            base, client = rng.randrange(-1, seq + 2), rng.choice([*clients, "never-wrote"])
            got = [(r, w.seq, w.client) for r, w in new.concurrent(col, rids, base, client)]
            assert got == ref.concurrent(col, rids, base, client)
            lw = new.last_write(col, rids[0]) if rids else None
            want = ref.cells.get(col, {}).get(rids[0]) if rids else None
            assert (lw and (lw.seq, lw.client)) == (want and (want.seq, want.client))
        else:
            mark = rng.randrange(0, seq + 1)
            assert new.prune(mark) == ref.prune(mark)
        assert len(new) == len(ref)
    new.prune(seq)
    assert len(new) == 0 and not new._cells  # an idle clock holds no arrays


def test_clock_forgets_a_dropped_column_and_sizes_to_rids_written() -> None:
    clock = CellClock()
    clock.record(1, "a", 7, [3, 10])
    assert [r for r, _ in clock.concurrent(7, [10, 3, 500], 0, "b")] == [10, 3]
    clock.forget_column(7)
    assert clock.concurrent(7, [10], 0, "b") == []
    assert clock.prune(5) == 0


# --------------------------------------------------------------------------- the overlay


def _state(rows: int = 30, gaps: bool = False) -> State:
    df = pl.DataFrame(
        {
            "f": [float(i) if i % 6 else None for i in range(rows)],
            "i": pl.Series([i % 7 for i in range(rows)], dtype=pl.Int32),
            "s": [f"s{i}" for i in range(rows)],
            "d": pl.Series([None if i % 5 == 0 else i for i in range(rows)], dtype=pl.Int64).cast(pl.Date),
            "t": pl.Series(
                [None if i % 7 == 0 else i * 3_600_000_123 for i in range(rows)], dtype=pl.Int64
            ).cast(pl.Datetime("us", "Europe/Paris")),
        }
    )
    frame, catalog = normalize_frame(df)
    state = State(frame, catalog, rows)
    if gaps:
        frame = state.frame.filter(pl.col("_rid") % 4 != 1)
        state = State(frame, catalog, rows)
    return state


def _value(rng: random.Random, col: str, *, bad: bool) -> object:
    roll = rng.random()
    if roll < 0.15:
        return None
    if roll < 0.17 and bad:
        return rng.choice([True, "x", 2**40, 1.5])  # refused somewhere: a bad_value
    return {
        "f": lambda: rng.choice([rng.uniform(-5, 5), rng.randrange(100), float("inf")]),
        "i": lambda: rng.randrange(-50, 50),
        "s": lambda: f"v{rng.randrange(1000)}",
        "d": lambda: f"2024-0{rng.randrange(1, 9)}-1{rng.randrange(10)}",
        "t": lambda: f"2024-0{rng.randrange(1, 9)}-1{rng.randrange(10)}T0{rng.randrange(10)}:30:00.25+01:00",
    }[col]()


def _random_ops(rng: random.Random, rids: list[int]) -> tuple[SetCells, ...]:
    ops = []
    for _ in range(rng.randrange(1, 4)):
        col = rng.choice(["f", "f", "i", "s", "d", "t"])
        rows = rng.sample(rids, rng.randrange(1, 6))
        cas = rng.random() < 0.08
        # A compare-and-set op gets valid values: with a conflict *and* a bad value in one op
        # the overlay names the bad value first, and the general path the conflict.
        values = tuple(_value(rng, col, bad=not cas) for _ in rows)
        if col == "f" and rng.random() < 0.5:
            values = tuple(rng.uniform(0, 9) for _ in rows)  # plain floats: the numpy fast path
        ops.append(SetCells(tuple(rows), col, values, if_unchanged=cas))
    return tuple(ops)


SEEN: dict[str, int] = {"overwritten": 0, "conflict": 0, "bad_value": 0, "undone": 0}


@pytest.mark.parametrize(("seed", "gaps"), [(s, g) for s in range(8) for g in (False, True)])
def test_overlay_matches_the_general_path(seed: int, gaps: bool) -> None:
    """Acks (overwrites, conflicts), frames and undo entries equal one op at a time through apply."""
    rng = random.Random(seed)
    start = _state(gaps=gaps)
    fast, slow = RoomCore(start), RoomCore(start)
    rids = [int(r) for r in start.rids()]
    clients = ["a", "b", "c"]
    for tick in range(12):
        fb, sb = DeltaBuilder(), DeltaBuilder()
        fast.flush()
        slow.flush()
        f_before, s_before, seq_from = fast.state, slow.state, fast.seq + 1
        for n in range(rng.randrange(1, 9)):
            client = rng.choice(clients)
            ops = _random_ops(rng, rids)
            base = rng.randrange(max(0, fast.seq - 6), fast.seq + 1)
            cs = tick * 100 + n
            try:
                got = fast.apply_sets(client, cs, base, ops, fb)
            except OpError as e:
                got = e  # type: ignore[assignment]
            slow.flush()
            try:
                result = run_general(slow.state, slow.clock, client, base, ops)
                want = slow.commit_general(client, cs, result, sb, "op")
            except OpError as e:
                want = e  # type: ignore[assignment]
            if isinstance(want, OpError):
                SEEN[str(want.code)] = SEEN.get(str(want.code), 0) + 1
                assert isinstance(got, OpError) and (got.code, got.message) == (want.code, want.message)
                assert got.details == want.details
            else:
                SEEN["overwritten"] += bool(want.overwritten)
                assert got == want
            assert fast.last_applied == slow.last_applied or isinstance(want, OpError)
        fast.flush()
        slow.flush()
        assert fast.state.frame.equals(slow.state.frame)
        _same_delta(
            fb.build(f_before, fast.state, seq_from, fast.seq, (), None),
            sb.build(s_before, slow.state, seq_from, slow.seq, (), None),
        )
        if rng.random() < 0.3:
            fast.clock.prune(fast.seq - 3)
            slow.clock.prune(slow.seq - 3)
    for client in clients:
        while True:
            try:
                want_ops = slow.pop_undo(client, "undo")
            except OpError:
                with pytest.raises(OpError):
                    fast.pop_undo(client, "undo")
                break
            assert fast.pop_undo(client, "undo") == want_ops
            SEEN["undone"] += 1


def _same_delta(got: Delta, want: Delta) -> None:
    def head(d: Delta) -> tuple[object, ...]:
        return (d.seq_from, d.seq_to, d.deleted, d.schema)

    assert head(got) == head(want)
    if want.upserts is None:
        assert got.upserts is None
    else:
        assert got.upserts is not None and got.upserts.equals(want.upserts), (got.upserts, want.upserts)


@pytest.mark.parametrize(("col", "gaps"), [(c, g) for c in ("f", "i", "s", "d", "t") for g in (False, True)])
def test_a_tick_of_sets_to_one_column_reads_its_delta_from_the_plans(col: str, gaps: bool) -> None:
    """The plans' delta (one column, cells written twice, nulls) equals the one read from the frame."""
    rng = random.Random(col)
    start = _state(gaps=gaps)
    rids = [int(r) for r in start.rids()]
    core = RoomCore(start)
    for tick in range(10):
        before, seq_from = core.state, core.seq + 1
        fast, slow = DeltaBuilder(), DeltaBuilder()
        for n in range(rng.randrange(1, 6)):
            rows = rng.sample(rids, rng.randrange(1, 8))
            values = tuple(_value(rng, col, bad=False) for _ in rows)
            if col == "f" and rng.random() < 0.5:
                values = tuple(rng.uniform(0, 9) for _ in rows)
            op = SetCells(tuple(rows), col, values)
            core.apply_sets(rng.choice("ab"), tick * 10 + n, core.seq, (op,), fast)
            slow.add_cells(before.catalog.resolve(col).id, np.asarray(rows, dtype=np.uint64))
        assert slow.plans is None and fast.plans is not None  # the two builds take different paths
        core.flush()
        _same_delta(
            fast.build(before, core.state, seq_from, core.seq, ("a",), None),
            slow.build(before, core.state, seq_from, core.seq, ("a",), None),
        )


def test_the_overlay_comparison_saw_every_case() -> None:
    """Not vacuous: the runs above met overwrites, conflicts, bad values and undos."""
    assert min(SEEN["overwritten"], SEEN["conflict"], SEEN["bad_value"], SEEN["undone"]) >= 5, SEEN


def test_undo_in_the_same_tick_reads_prior_values_first() -> None:
    state = _state()
    core = RoomCore(state)
    b = DeltaBuilder()
    core.apply_sets("a", 1, 0, (SetCells((2, 3), "f", (10.0, 11.0)),), b)
    core.apply_sets("a", 2, 0, (SetCells((3,), "f", (12.0,)), SetCells((3,), "f", (13.0,))), b)
    undo = core.pop_undo("a", "undo")  # before any flush by the room
    f_id = state.catalog.resolve("f").id
    assert undo == (SetCells((3,), f_id, (12.0,)), SetCells((3,), f_id, (11.0,)))
    [first] = core.pop_undo("a", "undo")
    assert first == SetCells((2, 3), f_id, tuple(read_cells(state, state.catalog.resolve("f"), [2, 3])))


def test_prior_values_see_earlier_plans() -> None:
    rng = random.Random(3)
    state = _state()
    rids = [int(r) for r in state.rids()]
    for _ in range(30):
        plans = []
        for op in _random_ops(rng, rids) + _random_ops(rng, rids) + _random_ops(rng, rids):
            try:
                plans.append(plan_set(state, op))
            except OpError:
                pass
        prior = prior_values(state, plans)
        s = state
        for p, old in zip(plans, prior, strict=True):
            assert old.to_pylist() == s.frame.get_column(p.col.name).gather(p.positions).to_list()
            s = apply_set_plans(s, [p])
        assert apply_set_plans(state, plans).frame.equals(s.frame)


# --------------------------------------------------------------------------- small helpers


def test_locate_is_the_same_with_and_without_gaps() -> None:
    dense, gappy = _state(), _state(gaps=True)
    assert dense.dense_base() == 0 and gappy.dense_base() is None
    for state in (dense, gappy):
        rids = state.rids()
        got, pos = locate(state, [int(rids[5]), int(rids[0]), int(rids[-1])])
        assert pos.tolist() == [5, 0, len(rids) - 1] and got.tolist() == [rids[5], rids[0], rids[-1]]
        with pytest.raises(OpError) as e:
            locate(state, [int(rids[-1]) + 1, 1 if state is gappy else 99])
        assert e.value.code == "no_such_row"


def test_sorting_helpers_match_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 50, 3000):
        a = rng.integers(0, 40, n).astype(np.uint64)
        assert unique_sorted(a).tolist() == np.unique(a).tolist()
        _, first_in_rev = np.unique(a[::-1], return_index=True)
        assert last_of_each(a).tolist() == sorted((n - 1 - first_in_rev).tolist())


@pytest.mark.parametrize(
    "rows",
    [[], [0, 5, 2**63 - 1], [1, True], [1, -1], [1, 2**63], [1, 2.0], [3, "x"], (4, 5), "nope"],
)
def test_int_list_fast_path_matches_the_checks(rows: object) -> None:
    def slow(v: object) -> tuple[int, ...]:
        if not isinstance(v, (list, tuple)):
            raise f._bad("p", f"must be a list of integers, got {type(v).__name__}")
        for i, x in enumerate(v):
            if not f._is_int(x) or not 0 <= x <= f.INT64_MAX:
                raise f._bad(f"p[{i}]", f"must be a non-negative 64-bit integer, got {x!r}")
        return tuple(int(x) for x in v)

    _same(lambda: f.int_list(rows, "p"), lambda: slow(rows))


@pytest.mark.parametrize(
    "values",
    [[], [1.5, None, "x", True, 3], [2**64 - 1, -(2**63)], [2**64], [1, 2**64], [1.0, [1]], [{}], [b"x"]],
)
def test_scalar_list_fast_path_matches_the_checks(values: list[object]) -> None:
    _same(
        lambda: f.scalar_list(values, "p"),
        lambda: tuple(f.scalar(x, f"p[{i}]") for i, x in enumerate(values)),
    )


def _same(fast: object, slow: object) -> None:
    def run(fn: object) -> object:
        try:
            return ("ok", fn())  # type: ignore[operator]
        except ProtocolError as e:
            return ("error", e.message, e.details)

    assert run(fast) == run(slow)


@pytest.mark.parametrize("seed", range(6))
def test_a_clock_run_leaves_what_one_record_per_write_leaves(seed: int) -> None:
    """``record_run`` (WAL replay) against ``record`` write by write: same registers, same prunes."""
    rng = random.Random(seed)
    one, run = CellClock(), CellClock()
    seqs, clients, rids = [], [], []
    for seq in range(1, 400):
        client = rng.choice(["ann", "bob", "cy"])
        rows = np.array(sorted(rng.sample(range(60), rng.randint(0, 4))), dtype=np.int64)
        one.record(seq, client, 3, rows)
        seqs.append(seq)
        clients.append(client)
        rids.append(rows)
    run.record_run(3, seqs, clients, rids)
    for rid in range(70):
        assert one.last_write(3, rid) == run.last_write(3, rid), rid
    for mark in (50, 200, 399):
        assert one.prune(mark) == run.prune(mark)
        for rid in range(70):
            assert one.last_write(3, rid) == run.last_write(3, rid), (mark, rid)
