"""Fast views followed from the deltas' rows equal a fresh read of the frame, after any edits.

A room moves its fast views with each step of deltas (``FastPlan.follow``,
``GroupedPlan.follow``: server/perspective/fasttop.py), and reads one in
full only when following cannot tell (``NeedsRead``). A fresh plan's read
is itself proven equal to Perspective's view (tests/test_fast_views.py),
so a followed view that equals it after every tick equals Perspective's.
The edits are drawn from the same small domains: ties, nulls, NaN and
``-0.0`` in float sort keys, strings cut at a NUL, inserts and deletes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import Delete, Insert, Op, SetCells
from server.ops import RID, State, apply
from server.perspective.fast import NeedsRead, NotServable, plan_fast
from server.perspective.fastviews import touched_rids
from server.rooms.deltas import DeltaBuilder
from tests.fast_cases import COLUMNS, configs, describe, edits, grouped_configs, make_state, same, states

Touched = list[tuple[int, int, Any]]


def _tick(state: State, ops: list[Op], seq: int, touched: Touched) -> State:
    """Apply ``ops`` as one tick at ``seq``; note the rids it touched in ``touched``, as a room does."""
    builder = DeltaBuilder()
    after = state
    for op in ops:
        applied = apply(after, op)
        builder.add(applied.effect)
        after = applied.state
    delta = builder.build(state, after, seq, seq, ("u1",), None)
    touched.append((delta.seq_from, delta.seq_to, touched_rids(delta)))
    return after


class Follower:
    """One plan as a room drives it: a first read at seq 0, then a follow per step, or a read."""

    def __init__(self, config: dict[str, Any], viewport: tuple[int, int] | None, state: State) -> None:
        self.config, self.viewport = config, viewport
        self.plan = plan_fast(config, viewport, state.catalog.to_wire())
        self.last: tuple[Any, int] | None = None
        self.followed = self.reads = 0
        if self.plan is not None:
            self.last = self._read(state, 0, [])

    def _read(self, state: State, seq: int, touched: Touched) -> tuple[Any, int] | None:
        self.reads += 1
        try:
            return self.plan.read(state.frame, seq, touched, state)  # type: ignore[union-attr]
        except NotServable:
            return None  # Perspective serves it from now on: nothing to compare

    def step(self, state: State, seq: int, touched: Touched) -> None:
        if self.plan is None or self.last is None:
            return
        try:
            got = self.plan.follow(state, seq, touched)
            self.followed += 1
        except NeedsRead:
            got = self._read(state, seq, touched)
            if got is None:
                self.last = None
                return
        fresh = plan_fast(self.config, self.viewport, state.catalog.to_wire())
        assert fresh is not None
        try:
            want = fresh.read(state.frame)
        except NotServable:
            raise AssertionError("followed a view a fresh read refuses") from None
        if got is None:  # unchanged, says follow: what was last sent must still be right
            got = self.last
        assert got is not None
        assert got[1] == want[1], (got[1], want[1])
        assert same(got[0], want[0]), describe(got[0], want[0])
        self.last = got


def _run(state: State, cv: tuple[dict[str, Any], tuple[int, int] | None], data: st.DataObject) -> None:
    f = Follower(*cv, state)
    touched: Touched = []
    for seq in range(1, data.draw(st.integers(1, 8)) + 1):
        n = data.draw(st.integers(1, 3))
        ops: list[Op] = []
        after = state
        for _ in range(n):  # each op drawn against the state the one before left
            op = data.draw(edits(after))
            ops.append(op)
            after = apply(after, op).state
        state = _tick(state, ops, seq, touched)
        f.step(state, seq, touched)


SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
    database=None,
)


@SETTINGS
@given(state=states(), cv=configs(), data=st.data())
def test_a_followed_plain_view_equals_a_fresh_read(
    state: State, cv: tuple[dict[str, Any], tuple[int, int] | None], data: st.DataObject
) -> None:
    _run(state, cv, data)


@SETTINGS
@given(state=states(), cv=grouped_configs(), data=st.data())
def test_a_followed_grouped_view_equals_a_fresh_read(
    state: State, cv: tuple[dict[str, Any], tuple[int, int] | None], data: st.DataObject
) -> None:
    _run(state, cv, data)


def _big(rng: np.random.Generator, n: int) -> State:
    return make_state(
        {
            "f": (rng.random(n) * 1000 + 1).tolist(),
            "i32": rng.integers(0, 50, n).astype(int).tolist(),
            "s": rng.choice(["a", "b", "B", "é", "a\x00z", None], n).tolist(),
            **{name: [None] * n for name in COLUMNS if name not in ("f", "i32", "s")},
        },
        list(range(n)),
    )


def test_both_paths_at_scale() -> None:
    """5,000 rows; edits that often hit the top, inserts and deletes: most steps follow, some must
    read, and every step equals a fresh read."""
    rng = np.random.default_rng(11)
    state = _big(rng, 5000)
    views = [
        Follower({"columns": ["f", "s"], "sort": [["f", "desc"]]}, (0, 20), state),
        Follower({"columns": [RID, "f"], "sort": [["s", "asc"], ["f", "desc"]]}, (5, 25), state),
        Follower(
            {"columns": ["i32", "f"], "filter": [["i32", ">", 40]], "sort": [["f", "asc"]]}, (0, 10), state
        ),
        Follower({"columns": ["f"], "filter": [["s", "==", "a"]]}, (0, 30), state),
        Follower({"columns": ["f"]}, (0, 30), state),
        Follower({"group_by": ["s"], "columns": ["f"], "aggregates": {"f": "sum"}}, None, state),
        Follower(
            {"group_by": ["s"], "split_by": ["i32"], "columns": ["f"], "aggregates": {"f": "mean"}},
            None,
            state,
        ),
    ]
    touched: Touched = []
    for seq in range(1, 301):
        rids = state.frame.get_column(RID)
        top = views[0].plan.cache.top  # type: ignore[union-attr]
        pick = rng.random()
        if pick < 0.1:  # 1 to 3 new rows, some of them new maxima
            k = int(rng.integers(1, 4))
            new = _big(rng, k).frame.drop(RID).with_columns(pl.Series("f", rng.random(k) * 2000 + 1))
            op: Op = Insert(new.to_arrow())
        elif pick < 0.15:  # 1 or 2 rows deleted: a top row, or anywhere
            gone = [int(rids[int(rng.integers(0, len(rids)))])]
            if top is not None and rng.random() < 0.4:
                gone = [int(top.rows.get_column(RID)[int(rng.integers(0, top.rows.height))])]
            elif rng.random() < 0.5:  # among the first rows: an unsorted viewport's rows move up
                gone = [int(rids[int(rng.integers(0, 30))])]
            op = Delete(rows=tuple(gone))
        elif top is not None and pick < 0.4:  # a top row, dropped or raised
            row = int(top.rows.get_column(RID)[int(rng.integers(0, top.rows.height))])
            op = SetCells((row,), "f", (float(rng.random() * 2000 + 1),))
        elif pick < 0.85:
            op = SetCells(
                (int(rids[int(rng.integers(0, len(rids)))]),), "f", (float(rng.random() * 1100 + 1),)
            )
        else:
            op = SetCells((int(rids[int(rng.integers(0, len(rids)))]),), "i32", (int(rng.integers(0, 50)),))
        state = _tick(state, [op], seq, touched)
        for v in views:
            v.step(state, seq, touched)
    for v in views:
        assert v.followed > 200, (v.config, v.followed, v.reads)
    assert views[0].reads > 5  # the top lost rows to values below it: read in full


def test_a_pivot_too_big_is_left_to_perspective_or_to_a_worker_thread() -> None:
    """A split view's payload is built in Python: past MAX_SPLIT_CELLS cells the engine refuses
    it (Perspective serves it, under its budgets), and past FOLLOW_CELLS a step leaves it to a
    full read in a worker thread rather than render it on the event loop."""
    from server.perspective.fastgroup import FOLLOW_CELLS
    from server.perspective.fastrender import MAX_SPLIT_CELLS

    def room(groups: int, splits: int) -> State:
        n = max(groups, splits)
        cols: dict[str, list[Any]] = {name: [None] * n for name in COLUMNS}
        cols["i64"] = [i % groups for i in range(n)]
        cols["i32"] = [i % splits for i in range(n)]
        cols["f"] = [1.0] * n
        return make_state(cols, list(range(n)))

    config = {"group_by": ["i64"], "split_by": ["i32"], "columns": ["f"], "aggregates": {"f": "sum"}}
    big = room(1500, 1500)  # 2.25M cells
    assert 1500 * 1500 > MAX_SPLIT_CELLS
    plan = plan_fast(config, None, big.catalog.to_wire())
    assert plan is not None
    try:
        plan.read(big.frame, 0, [], big)
    except NotServable as e:
        assert "cells" in str(e)
    else:
        raise AssertionError("a 2.25M-cell pivot was served")

    mid = room(200, 200)  # 40k cells: served, but not rendered on the loop
    assert MAX_SPLIT_CELLS > 200 * 200 > FOLLOW_CELLS
    plan = plan_fast(config, None, mid.catalog.to_wire())
    assert plan is not None
    table, rows = plan.read(mid.frame, 0, [], mid)
    assert rows == 200 and table.num_columns == 201
    touched: Touched = []
    after = _tick(mid, [SetCells((0,), "f", (2.0,))], 1, touched)
    try:
        plan.follow(after, 1, touched)
    except NeedsRead as e:
        assert "cells" in str(e)
    else:
        raise AssertionError("a 40k-cell pivot was rendered on the loop")


def test_steps_of_all_rooms_share_one_budget_of_the_loop() -> None:
    """After a step taking ``t`` of the loop's CPU, a room waits ``t * k / STEP_SHARE``, ``k`` the
    rooms that stepped in the last second: k busy rooms together stay near STEP_SHARE of the loop."""
    from server.perspective import fastviews
    from server.perspective.fastviews import STEP_INTERVAL, STEP_SHARE, step_wait

    fastviews._RECENT.clear()
    assert step_wait(0.0001, 100.0, "a/main") == STEP_INTERVAL  # a cheap step: the floor
    assert step_wait(0.002, 100.0, "a/main") == 0.002 / STEP_SHARE
    step_wait(0.002, 100.2, "b/main")
    assert step_wait(0.002, 100.4, "c/main") == 0.002 * 3 / STEP_SHARE  # three rooms stepping
    # Five busy rooms, each stepping when its wait is over: their steps' share of the loop.
    fastviews._RECENT.clear()
    now, busy, due = 200.0, 0.0, dict.fromkeys(range(5), 200.0)
    while now < 210.0:
        room = min(due, key=due.__getitem__)
        now = max(now, due[room])
        busy += 0.003
        due[room] = now + step_wait(0.003, now, f"r{room}/main")
    assert busy / 10.0 <= STEP_SHARE * 1.05
    # A room that stopped stepping a second ago no longer counts.
    assert step_wait(0.002, 300.0, "a/main") == 0.002 / STEP_SHARE
    fastviews._RECENT.clear()
