"""The fast view engines (server/perspective/fast.py, fastgroup.py) against Perspective 5.5.1 itself.

Each case builds a room state and a real Perspective table from it
(:class:`RoomTables`), opens the view with the same config, and then after
every tick of a random edit stream (set, insert, delete, through the real
ops and :class:`DeltaBuilder`, so Perspective sees the deltas a room sends)
asserts that the plan's ``read(frame)`` equals :func:`read_view` of a
Perspective view opened now, and of the live view where Perspective keeps
it right (:meth:`Pair.check`): same Arrow table and row count. Equal means
``pa.Table.equals`` except that NaN equals NaN and ``-0.0`` differs from
``0.0`` (:func:`same`); a grouped view's float sums and means must be the
exact value rounded once (Python fractions) and Perspective's within its
rounding bound (:func:`assert_same_view`). Values come from small domains,
so ties and nulls are common; floats include NaN and ``-0.0``, where the
plain engine must either agree or refuse (:class:`NotServable`) exactly
when Perspective's order is undefined. Plain views with sorts and filters,
grouped views with sum, mean and count, every served filter operand,
3000-row frames with heavy ties, and the configs that must be refused are
covered.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from protocol import Delete, Insert, Op, SetCells
from server.ops import RID, State, polars_dtype
from server.perspective import RoomTables, fastgroup
from server.perspective.config import for_perspective
from server.perspective.fast import NotServable, plan_fast
from server.perspective.fastexpr import FILTER_OPS, ptype
from server.perspective.jobs import zones_of
from server.perspective.payload import read_view
from tests.fast_cases import (
    COLUMNS,
    DOMAINS,
    ROOM,
    Pair,
    assert_same_view,
    configs,
    describe,
    edits,
    grouped_configs,
    make_state,
    operands,
    same,
    states,
    tick,
)

#: Hypothesis' explain phase traces every line, which on Python 3.11 takes minutes here.
PHASES = (Phase.explicit, Phase.generate, Phase.shrink)
#: The same examples on every run (derandomize, no example database): Perspective's live views
#: have more history-dependent bugs than Pair.check knows (four found so far), and a new one
#: found at random must not fail someone else's run. Explore with derandomize=False and
#: --hypothesis-seed=N (44 seeds passed when this was written).
FIXED = {"derandomize": True, "database": None}


@pytest.fixture
def rt() -> Iterator[RoomTables]:
    tables = RoomTables()
    yield tables
    tables.close_all()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=PHASES,
    **FIXED,
)
@given(state=states(), cv=configs(), data=st.data())
def test_equal_to_perspective_after_every_edit(
    state: State, cv: tuple[dict[str, Any], tuple[int, int] | None], data: st.DataObject
) -> None:
    _edit_and_compare(state, cv, data, ticks=6)


def _edit_and_compare(
    state: State, cv: tuple[dict[str, Any], tuple[int, int] | None], data: st.DataObject, ticks: int
) -> None:
    """Open the view on ``state``, then compare after each of 1 to ``ticks`` ticks of drawn edits."""
    tables = RoomTables()
    try:
        pair = Pair(tables, state, *cv)
        pair.check()
        for _ in range(data.draw(st.integers(1, ticks))):
            pair.step(lambda state: data.draw(edits(state)), data.draw(st.integers(1, 3)))
    finally:
        tables.close_all()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=PHASES,
    **FIXED,
)
@given(state=states(), cv=grouped_configs(), data=st.data())
def test_grouped_equal_to_perspective_after_every_edit(
    state: State, cv: tuple[dict[str, Any], tuple[int, int] | None], data: st.DataObject
) -> None:
    _edit_and_compare(state, cv, data, ticks=5)


# ----------------------------------------------------------------------- at scale

BIG_CONFIGS: list[tuple[dict[str, Any], tuple[int, int] | None]] = [
    ({"sort": [["s", "asc"]]}, None),
    ({"sort": [["b", "desc"], ["i8", "asc"]]}, (1450, 1550)),
    ({"sort": [["d", "desc"], ["s", "desc"], ["u64", "asc"]]}, (2950, 3100)),
    ({"sort": [["t", "asc"], ["tz", "desc"]], "columns": ["tz", "t", RID]}, (0, 100)),
    ({"sort": [["f", "desc"], ["f32", "asc"]], "filter": [["i32", ">=", 0]]}, (100, 200)),
    ({"sort": [["u16", "asc"]], "filter": [["s", "not in", ["a", "b"]], ["b", "==", True]]}, None),
    ({"sort": [["i64", "desc"], ["u32", "desc"]], "columns": []}, (10, 20)),
    ({"filter": [["f", "is null", None]]}, (20, 40)),
    (
        {
            "group_by": ["s"],
            "columns": ["f", "f32", "i64"],
            "aggregates": {"f": "mean", "f32": "mean", "i64": "mean"},
        },
        None,
    ),
    (
        {
            "group_by": ["b", "d"],
            "columns": ["u64", "i32", "t"],
            "aggregates": {"u64": "mean", "i32": "sum", "t": "count"},
            "filter": [["i8", "!=", 0]],
        },
        None,
    ),
    (
        {
            "group_by": ["b"],
            "columns": ["f", "s", "t", "u64"],
            "aggregates": {"f": "max", "s": "min", "t": "max", "u64": "min"},
        },
        None,
    ),
    (
        {
            "group_by": ["s"],
            "split_by": ["d"],
            "columns": ["f", "i64"],
            "aggregates": {"f": "sum", "i64": "count"},
            "filter": [["b", "!=", True]],
        },
        None,
    ),
    (
        {
            "group_by": ["u16"],
            "columns": ["f", "f32", "u64", "i64"],
            "aggregates": {"f": "sum", "f32": "sum", "u64": "sum", "i64": "sum"},
        },
        (1, 3),
    ),
]


def _numpy_column(rng: np.random.Generator, name: str, n: int) -> pl.Series:
    domain = DOMAINS[name]
    picks = [domain[i] for i in rng.integers(0, len(domain), n)]
    nulls = rng.random(n) < 0.15
    return pl.Series(
        name, [None if z else v for v, z in zip(picks, nulls, strict=True)], dtype=polars_dtype(COLUMNS[name])
    )


def test_equal_at_scale_with_heavy_ties(rt: RoomTables) -> None:
    """3000 rows from tiny domains (runs of hundreds of equal keys), five ticks of edits."""
    rng = np.random.default_rng(11)
    n = 3000
    state = make_state(
        {name: _numpy_column(rng, name, n).to_list() for name in COLUMNS}, list(range(0, 2 * n, 2))
    )
    rt.open(ROOM, state)
    pairs = []
    for config, viewport in BIG_CONFIGS:
        plan = plan_fast(config, viewport, state.catalog.to_wire())
        assert plan is not None, config
        pairs.append((config, viewport, plan, rt.view(ROOM, **for_perspective(config))))

    def edit(s: State) -> Op:
        rids = s.frame.get_column(RID).to_numpy()
        kind = rng.integers(0, 3)
        if kind == 0:
            name = list(COLUMNS)[rng.integers(0, len(COLUMNS))]
            chosen = rng.choice(rids, 50, replace=False)
            return SetCells(
                tuple(int(r) for r in chosen), name, tuple(_numpy_column(rng, name, 50).to_list())
            )
        if kind == 1:
            return Insert(pl.DataFrame([_numpy_column(rng, name, 20) for name in COLUMNS]).to_arrow())
        return Delete(rows=tuple(int(r) for r in rng.choice(rids, 20, replace=False)))

    for seq in range(6):
        if seq:
            state = tick(rt, state, edit, 3, seq)
        zones = zones_of(state.catalog.to_wire())
        for config, viewport, plan, live in pairs:
            got, rows = plan.read(state.frame)
            fresh = rt.view(ROOM, **for_perspective(config))
            try:
                want, want_rows = read_view(fresh.handle, config, viewport, zones)
            finally:
                fresh.delete()
            case = (plan, config, viewport, state.frame, (got, rows))
            assert_same_view(*case, (want, want_rows), f"a new view, tick {seq}")
            if not config.get("filter"):
                live_view = read_view(live.handle, config, viewport, zones)
                assert_same_view(*case, live_view, f"the live view, tick {seq}", live=True)


# ----------------------------------------------------------------------- every filter


def test_every_filter_operator_and_operand(rt: RoomTables) -> None:
    """Each served (operator, operand) on each column over every value of its domain,
    NaN, both zeros and null: the rows and their order equal a Perspective view's."""
    columns = {name: [*DOMAINS[name], None] for name in COLUMNS}
    columns["f"] += [math.nan, -0.0, 0.0]
    columns["f32"] += [math.nan, -0.0]
    n = max(len(v) for v in columns.values())
    rng = np.random.default_rng(5)
    state = make_state(
        {k: [v[i] for i in rng.integers(0, len(v), 2 * n)] for k, v in columns.items()}, list(range(2 * n))
    )
    rt.open(ROOM, state)
    wire = state.catalog.to_wire()
    checked = 0
    for name in COLUMNS:
        served = operands(name)
        for op in [*FILTER_OPS[ptype(COLUMNS[name]) or ""], "is null", "is not null"]:
            values: list[Any] = [None] if "null" in op else served
            if op in ("in", "not in"):
                values = [[], *([v] for v in served), served[:2], served[-3:]]
            for value in values:
                config = {"filter": [[name, op, value]], "columns": [RID, name]}
                plan = plan_fast(config, (0, 1000), wire)
                assert plan is not None, config
                view = rt.view(ROOM, **config)
                try:
                    want = read_view(view.handle, config, (0, 1000), zones_of(wire))
                finally:
                    view.delete()
                got = plan.read(state.frame)
                assert got[1] == want[1] and same(got[0], want[0]), f"{config}\n{describe(got[0], want[0])}"
                checked += 1
    assert checked > 500


# ----------------------------------------------------------------------- refusals


def _state(**columns: list[Any]) -> State:
    return make_state(columns, list(range(len(next(iter(columns.values()))))))


def test_unordered_floats_are_refused_only_when_present(rt: RoomTables) -> None:
    """NaN, or -0.0 beside 0.0, in a float sort key: NotServable; filtered out, or -0.0 alone: equal."""
    state = _state(f=[1.0, math.nan, None, 2.0, -0.0], i64=[1, 2, 3, 4, 5])
    wire = state.catalog.to_wire()
    rt.open(ROOM, state)
    for config, servable in [
        ({"sort": [["f", "asc"]]}, False),
        ({"sort": [["i64", "asc"], ["f", "desc"]]}, False),
        ({"sort": [["f", "asc"]], "filter": [["i64", "!=", 2]]}, True),
        ({"sort": [["f", "desc"]], "filter": [["f", "<", 5]]}, True),
        ({"sort": [["i64", "desc"]]}, True),  # NaN in an output column only
        ({"filter": [["f", "!=", 1.0]]}, True),
    ]:
        plan = plan_fast(config, None, wire)
        assert plan is not None
        if not servable:
            with pytest.raises(NotServable, match="'f'"):
                plan.read(state.frame)
            continue
        want = read_view(rt.view(ROOM, **for_perspective(config)).handle, config, None, {})
        got = plan.read(state.frame)
        assert got[1] == want[1] and same(got[0], want[0]), f"{config}\n{describe(got[0], want[0])}"
    both = _state(f=[0.0, -0.0, 1.0])
    plan = plan_fast({"sort": [["f", "asc"]]}, None, both.catalog.to_wire())
    assert plan is not None
    with pytest.raises(NotServable):
        plan.read(both.frame)
    assert plan.read(_state(f=[0.0, 0.0, 1.0]).frame)[1] == 3


def test_a_changed_column_type_is_refused() -> None:
    state = _state(i64=[3, 1, 2])
    plan = plan_fast({"sort": [["i64", "asc"]]}, None, state.catalog.to_wire())
    assert plan is not None
    with pytest.raises(NotServable, match="'i64'"):
        plan.read(state.frame.with_columns(pl.col("i64").cast(pl.Float64)))
    with pytest.raises(NotServable, match="'i64'"):
        plan.read(state.frame.drop("i64"))


SCHEMA = _state(**{name: [DOMAINS[name][0]] for name in COLUMNS}).catalog.to_wire()


@pytest.mark.parametrize(
    ("config", "viewport"),
    [
        ({"sort": [["s", "asc"]], "group_by": ["s"]}, None),
        ({"sort": [["s", "asc"]], "split_by": ["b"]}, None),
        ({"sort": [["s", "asc"]], "aggregates": {"f": "sum"}}, None),
        ({"sort": [["x", "asc"]], "expressions": {"x": '"f" * 2'}}, None),
        ({"sort": [["s", "asc"]], "group_rollup_mode": "flat"}, None),
        ({"sort": [["s", "col asc"]]}, None),
        ({"sort": [["s", "col desc"]]}, None),
        ({"sort": [["f", "asc abs"]]}, None),
        ({"sort": [["f", "desc abs"]]}, None),
        ({"sort": [["f", "none"]]}, None),
        ({"sort": [["f", "ASC"]]}, None),
        ({"sort": [["f", "asc"], ["f", "desc"]]}, None),
        ({"sort": [["nope", "asc"]]}, None),
        ({"columns": ["f", "f"]}, None),
        ({"columns": ["nope"]}, None),
        ({"filter": [["s", "contains", "a"]]}, None),
        ({"filter": [["s", "begins with", "a"]]}, None),
        ({"filter": [["s", "ends with", "a"]]}, None),
        ({"filter": [["s", "is null"]]}, None),  # Perspective rejects the two-item clause
        ({"filter": [["s", "==", None]]}, None),
        ({"filter": [["s", "==", 1]]}, None),
        ({"filter": [["s", "==", "a\x00b"]]}, None),
        ({"filter": [["i32", "==", 2.5]]}, None),
        ({"filter": [["i32", "==", True]]}, None),
        ({"filter": [["i32", "==", "5"]]}, None),
        ({"filter": [["i32", ">", 2**31]]}, None),
        ({"filter": [["i64", "==", 2**53 + 1]]}, None),
        ({"filter": [["f", "<", math.inf]]}, None),
        ({"filter": [["f", "==", math.nan]]}, None),
        ({"filter": [["f", "in", 1.0]]}, None),
        ({"filter": [["f", "==", [1.0]]]}, None),
        ({"filter": [["b", "<", True]]}, None),
        ({"filter": [["b", "==", 1]]}, None),
        ({"filter": [["d", "==", "2024/01/01"]]}, None),
        ({"filter": [["d", "==", "2024-02-30"]]}, None),
        ({"filter": [["d", "==", "2024-01-01T00:00:00"]]}, None),
        ({"filter": [["d", "==", 1704067200000]]}, None),
        ({"filter": [["t", ">", "2024-01-01T00:00:00Z"]]}, None),
        ({"filter": [["t", ">", "2024-01-01T00:00:00.0001"]]}, None),
        ({"filter": [["tz", ">", "2024-01-01T00:00:00+09:00"]]}, None),
        ({"filter": [["t", "==", 1704067200000]]}, None),
        ({"filter": [["f", "like", 1.0]]}, None),
        ({"sort": [["f", "asc"]]}, (-2, 3)),
    ],
    ids=repr,
)
def test_configs_not_proven_equal_are_refused(
    config: dict[str, Any], viewport: tuple[int, int] | None
) -> None:
    assert plan_fast(config, viewport, SCHEMA) is None


@pytest.mark.parametrize(
    "config",
    [
        {"sort": [["s", "asc"]], "group_by": [], "split_by": [], "aggregates": {}, "expressions": {}},
        {},
        {"columns": [], "sort": [], "filter": []},
        {"filter": [["d", "is null", None], ["t", "is not null", "ignored"]]},
    ],
    ids=repr,
)
def test_plain_configs_are_served(config: dict[str, Any]) -> None:
    assert plan_fast(config, None, SCHEMA) is not None


def test_unsupported_dtype_in_the_room_is_refused() -> None:
    assert (
        plan_fast({"sort": [["s", "asc"]]}, None, [*SCHEMA, {"id": 99, "name": "x", "dtype": "Decimal"}])
        is None
    )


def test_too_many_groups_go_to_perspective(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_GROUPS the tally refuses the read (the room then opens the view in Perspective)."""
    monkeypatch.setattr(fastgroup, "MAX_GROUPS", 3)
    columns = {name: [DOMAINS[name][0]] * 5 for name in COLUMNS} | {"i32": [1, 2, 3, 4, 5]}
    state = make_state(columns, [0, 1, 2, 3, 4])
    config = {"group_by": ["i32"], "columns": ["f"], "aggregates": {"f": "sum"}}
    plan = plan_fast(config, None, state.catalog.to_wire())
    assert isinstance(plan, fastgroup.GroupedPlan)
    with pytest.raises(NotServable, match="more than 3 groups"):
        plan.read(state.frame)
    config["group_by"] = ["b"]
    plan = plan_fast(config, None, state.catalog.to_wire())
    assert plan is not None and plan.read(state.frame)[1] == 1


def test_grouped_reads_take_the_changed_rows_from_the_deltas(rt: RoomTables) -> None:
    """Read as a room reads it (seq and the deltas' upserted rids), a grouped plan updates from those
    rows only, and equals a plan that compared every column; a delete falls back to comparing."""
    rng = np.random.default_rng(3)
    n = 2000
    state = make_state({name: _numpy_column(rng, name, n).to_list() for name in COLUMNS}, list(range(n)))
    config = {"group_by": ["s"], "columns": ["f", "i64"], "aggregates": {"f": "sum", "i64": "mean"}}
    plan = plan_fast(config, None, state.catalog.to_wire())
    assert isinstance(plan, fastgroup.GroupedPlan)
    plan.read(state.frame, 0, [])
    touched: list[tuple[int, int, Any]] = []
    rt.open(ROOM, state)
    for seq in range(1, 6):
        rids = [int(r) for r in rng.choice(n, 5, replace=False)]
        values = tuple(_numpy_column(rng, "f", 5).to_list())
        state = tick(rt, state, lambda s, r=rids, v=values: SetCells(tuple(r), "f", v), 1, seq, touched)
        got = plan.read(state.frame, seq, touched)
        fresh = plan_fast(config, None, state.catalog.to_wire())
        assert fresh is not None
        want = fresh.read(state.frame)
        assert got[1] == want[1] and same(got[0], want[0]), describe(got[0], want[0])
    assert plan.cache.from_deltas == 5
    state = tick(rt, state, lambda s: Delete(rows=(0, 1)), 1, 6, touched)
    assert same(plan.read(state.frame, 6, touched)[0], fresh.read(state.frame)[0])
    assert plan.cache.from_deltas == 5  # rows were deleted: compared instead
