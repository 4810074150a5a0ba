"""The fast view engines (server/perspective/fast.py, fastgroup.py) against Perspective 5.5.1 itself.

Each case builds a room state and a real Perspective table from it
(:class:`RoomTables`), opens the view with the same config, and then after
every tick of a random edit stream (set, insert, delete, through the real
ops and :class:`DeltaBuilder`, so Perspective sees the deltas a room sends)
asserts that the plan's ``read(frame)`` equals :func:`read_view` of a
Perspective view opened now, and of the live view where Perspective keeps
it right (:meth:`Pair.check`): same Arrow table and row count. Equal means
``pa.Table.equals`` except that NaN equals NaN and ``-0.0`` differs from
``0.0`` (:func:`same`). Values come from small domains, so ties and nulls
are common; floats include NaN and ``-0.0``, where the plain engine must
either agree or refuse (:class:`NotServable`) exactly when Perspective's
order is undefined. Plain views with sorts and filters, grouped views with
mean, count and integer sum, every served filter operand, 3000-row frames
with heavy ties, and the configs that must be refused are covered.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from protocol import Delete, Insert, Op, SetCells
from server.ops import RID, State, apply, normalize_frame, polars_dtype
from server.perspective import RoomTables
from server.perspective.config import for_perspective
from server.perspective.fast import FastPlan, NotServable, plan_fast
from server.perspective.fastexpr import FILTER_OPS, check_value, ptype
from server.perspective.jobs import zones_of
from server.perspective.payload import read_view
from server.rooms.deltas import DeltaBuilder

ROOM = "fast/main"
TZ = "Asia/Tokyo"
_T0 = dt.datetime(1969, 12, 31, 23, 59, 59, 999_500)

#: Column name -> dtype, one per served dtype (and the narrow ints Perspective widens).
COLUMNS: dict[str, str] = {
    "i8": "Int8",
    "u16": "UInt16",
    "i32": "Int32",
    "i64": "Int64",
    "u32": "UInt32",
    "u64": "UInt64",
    "f": "Float64",
    "f32": "Float32",
    "s": "String",
    "b": "Boolean",
    "d": "Date",
    "t": "Datetime",
    "tz": f"Datetime[{TZ}]",
}

#: Small value domains: many ties, and the edge values of each type.
DOMAINS: dict[str, list[Any]] = {
    "i8": [-128, -1, 0, 1, 2, 127],
    "u16": [0, 1, 2, 65535],
    "i32": [-(2**31), -3, 0, 1, 5, 2**31 - 1],
    "i64": [-(2**63), -(2**53) - 1, -1, 0, 1, 2**53 + 1, 2**63 - 1],
    "u32": [0, 1, 7, 2**32 - 1],
    "u64": [0, 1, 2**53, 2**53 + 1, 2**64 - 1],
    # 0.1, 0.7 and 1/3 are inexact: a mean of them depends on the order it adds them in.
    "f": [-math.inf, -1.5, 0.0, 0.1, 1 / 3, 0.7, 2.5, 1e300, math.inf],
    "f32": [-2.5, 0.0, 0.1, 0.5, 3.0],
    "s": ["", "a", "a ", "B", "b", "Z", "é", "É", "a\x00b", "a\x00c"],
    "b": [False, True],
    "d": [dt.date(1969, 12, 31), dt.date(2024, 2, 29), dt.date(2024, 3, 1)],
    # -500 us and -100 us are 0 ms truncated (as Arrow casts), -1 ms floored: tied with 1970-01-01 or not.
    "t": [
        _T0,
        _T0 + dt.timedelta(microseconds=400),
        dt.datetime(1970, 1, 1),
        dt.datetime(2024, 5, 1, 12, 0, 0, 1),
    ],
    "tz": [
        dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC),
        dt.datetime(2024, 5, 1, 12, 0, 0, 999, tzinfo=dt.UTC),
        dt.datetime(1960, 1, 1, tzinfo=dt.UTC),
        _T0.replace(tzinfo=dt.UTC),
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    ],
}
#: Values whose Perspective order is undefined: a float sort key holding one must be refused.
UNORDERED = [math.nan, -0.0]


def _value(draw: st.DrawFn, name: str) -> Any:
    if name in ("f", "f32") and draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(UNORDERED))
    return draw(st.none() | st.sampled_from(DOMAINS[name]))


def _frame(columns: dict[str, list[Any]], rids: list[int]) -> State:
    series = [pl.Series(n, v, dtype=polars_dtype(COLUMNS[n])) for n, v in columns.items()]
    frame, catalog = normalize_frame(pl.DataFrame(series))
    frame = frame.with_columns(pl.Series(RID, rids, dtype=pl.UInt64))
    return State(frame, catalog, (rids[-1] + 1) if rids else 0)


@st.composite
def states(draw: st.DrawFn) -> State:
    """A room of 1 to 30 rows. Never empty: Perspective 5.5.1 sorts the nulls of the first
    batch polled into a table created empty as the largest value (last ascending), and
    every later null first; a table built from rows, as the engine models, has no such
    history (measured, and in the module doc of server/perspective/fast.py)."""
    n = draw(st.integers(1, 30))
    rids = sorted(draw(st.lists(st.integers(0, 200), min_size=n, max_size=n, unique=True)))
    return _frame({name: [_value(draw, name) for _ in range(n)] for name in COLUMNS}, rids)


# ----------------------------------------------------------------------- configs


def _filter(draw: st.DrawFn) -> list[Any]:
    name = draw(st.sampled_from(list(COLUMNS)))
    ops = [*FILTER_OPS[ptype(COLUMNS[name]) or ""], "is null", "is not null"]
    op = draw(st.sampled_from(ops))
    if op in ("is null", "is not null"):
        return [name, op, None]
    pick = st.sampled_from(_operands(name))
    return [name, op, draw(st.lists(pick, max_size=3)) if op in ("in", "not in") else draw(pick)]


def _operands(name: str) -> list[Any]:
    """Served operands for column ``name``: its domain (dates and datetimes as text), edge
    numbers, both zeros for floats; check_value drops the rest (NUL, infinities, ...)."""
    pt = ptype(COLUMNS[name]) or ""
    extra = {
        "float": [-0.0, 0.0, 0, 1, 0.25, -(2**53), 2**53, 0.5, 1.8e19],
        "date": [str(d) for d in DOMAINS["d"]] + ["2024-03-02", "1900-01-01"],
        "datetime": [
            "1969-12-31T23:59:59.999",
            "1970-01-01 00:00:00",
            "1970-01-01T00:00:00.0",
            "2024-05-01T12:00:00.5",
            "2024-05-01 12:00:00.05",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.001",
            "1960-01-01T00:00:00",
        ],
    }.get(pt, [-(2**53), 2**53, 2**31 - 1])
    return [v for v in [*DOMAINS[name], *extra] if check_value(pt, v)]


@st.composite
def configs(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[int, int] | None]:
    names = [RID, *COLUMNS]
    config: dict[str, Any] = {}
    if draw(st.booleans()):
        config["columns"] = draw(st.lists(st.sampled_from(names), unique=True, max_size=5))
    keys = draw(st.lists(st.sampled_from(names), unique=True, min_size=1, max_size=3))
    config["sort"] = [[k, draw(st.sampled_from(["asc", "desc"]))] for k in keys]
    if draw(st.booleans()):
        config["filter"] = [_filter(draw) for _ in range(draw(st.integers(1, 2)))]
    viewport = draw(
        st.none()
        | st.tuples(st.integers(0, 40), st.integers(1, 40)).map(lambda t: (t[0], t[0] + t[1]))
        | st.just((5, 10**9))
    )
    return config, viewport


GROUPABLE = [n for n in COLUMNS if n not in ("f", "f32")]


@st.composite
def grouped_configs(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """Grouped views the engine serves: mean, count and integer sum of columns not grouped by."""
    group_by = draw(st.lists(st.sampled_from(GROUPABLE), unique=True, min_size=1, max_size=2))
    rest = [n for n in COLUMNS if n not in group_by]
    columns = draw(st.lists(st.sampled_from(rest), unique=True, min_size=1, max_size=4))
    aggregates = {}
    for name in columns:
        pt = ptype(COLUMNS[name])
        options = ["count"] + (["mean"] if pt in ("int32", "int64", "float") else [])
        options += ["sum"] if pt in ("int32", "int64") else []
        aggregates[name] = draw(st.sampled_from(options))
    config: dict[str, Any] = {"group_by": group_by, "columns": columns, "aggregates": aggregates}
    if draw(st.booleans()):
        config["filter"] = [_filter(draw)]
    viewport = draw(st.none() | st.just((1, 3)))
    return config, viewport


# ----------------------------------------------------------------------- edits


@st.composite
def edits(draw: st.DrawFn, state: State) -> Op:
    rids = state.frame.get_column(RID).to_list()
    kind = draw(st.sampled_from(["set", "set", "insert", "delete"] if rids else ["insert"]))
    if kind == "set":
        name = draw(st.sampled_from(list(COLUMNS)))
        chosen = draw(st.lists(st.sampled_from(rids), unique=True, min_size=1, max_size=4))
        return SetCells(tuple(chosen), name, tuple(_value(draw, name) for _ in chosen))
    if kind == "delete":
        return Delete(rows=tuple(draw(st.lists(st.sampled_from(rids), unique=True, min_size=1, max_size=4))))
    k = draw(st.integers(1, 4))
    series = [
        pl.Series(n, [_value(draw, n) for _ in range(k)], dtype=polars_dtype(COLUMNS[n])) for n in COLUMNS
    ]
    return Insert(pl.DataFrame(series).to_arrow())


def tick(rt: RoomTables, state: State, draw: Callable[[State], Op], n: int, seq: int) -> State:
    """Apply ``n`` ops (each drawn against the state the one before left) as one tick,
    and push the built delta to Perspective."""
    builder = DeltaBuilder()
    after = state
    for _ in range(n):
        applied = apply(after, draw(after))
        builder.add(applied.effect)
        after = applied.state
    rt.apply_delta(ROOM, builder.build(state, after, seq, seq, ("u1",), None), after)
    return after


# ----------------------------------------------------------------------- comparing


def _plain(table: pa.Table) -> list[dict[str, Any]]:
    """Rows with floats as their repr: NaN equals NaN, and ``-0.0`` differs from ``0.0``."""
    return [{k: repr(v) if isinstance(v, float) else v for k, v in row.items()} for row in table.to_pylist()]


def same(got: pa.Table, want: pa.Table) -> bool:
    """Equal payloads: ``pa.Table.equals``, except that NaN equals NaN and zeros keep their sign."""
    return got.schema == want.schema and got.num_rows == want.num_rows and _plain(got) == _plain(want)


def describe(got: pa.Table, want: pa.Table) -> str:
    """A readable diff of two view payloads: schemas, then the first rows that differ."""
    lines = []
    if got.schema != want.schema:
        lines.append(f"schema: fast\n{got.schema}\nperspective\n{want.schema}")
    g, w = _plain(got), _plain(want)
    if len(g) != len(w):
        lines.append(f"rows: fast {len(g)}, perspective {len(w)}")
    shown = 0
    for i, (a, b) in enumerate(zip(g, w, strict=False)):
        if a != b and shown < 5:
            lines.append(f"row {i}: fast {a}\n        perspective {b}")
            shown += 1
    return "\n".join(lines) or "tables differ in a way to_pylist does not show (NaN or nulls)"


def unordered_key(rt: RoomTables, plan: FastPlan, frame: pl.DataFrame, config: dict[str, Any]) -> str | None:
    """The float sort key the engine must refuse, judged by Python on the rows Perspective keeps."""
    kept = rt.query(ROOM, columns=[RID], filter=config.get("filter", []))
    view = set(kept[RID].cast(pl.UInt64).to_list())
    rids = frame[RID].to_list()
    for key in plan.sort:
        if key.dtype not in ("Float64", "Float32"):
            continue
        values = [
            v for r, v in zip(rids, frame[key.column].to_list(), strict=True) if r in view and v is not None
        ]
        zeros = {math.copysign(1.0, v) for v in values if v == 0.0}
        if any(math.isnan(v) for v in values) or len(zeros) == 2:
            return key.column
    return None


class Pair:
    """A room state and its Perspective table, with one open view to compare."""

    def __init__(
        self, rt: RoomTables, state: State, config: dict[str, Any], viewport: tuple[int, int] | None
    ):
        self.rt, self.state, self.config, self.viewport = rt, state, config, viewport
        rt.open(ROOM, state)
        self.view = rt.view(ROOM, **for_perspective(config))
        plan = plan_fast(config, viewport, state.catalog.to_wire())
        assert plan is not None, f"the engine refused a config it serves: {config}"
        self.plan = plan
        self.seq = 0
        # The live view missed a null written to a filter or group column (or is grouped and filtered).
        self.stale = bool(config.get("group_by") and config.get("filter"))

    def check(self) -> None:
        """The engine's read equals a view opened now, and the live view until it went stale.

        Perspective 5.5.1's live views go stale when an update sets a cell of
        a filter or group_by column to null: the row is neither re-filtered
        nor regrouped (and a later value can list it twice). A live view both
        grouped and filtered by ``is null``, ``!=`` or ``not in`` loses or
        miscounts its null group on inserts, so those are never compared. A
        new subscriber gets the fresh view's rows, which the engine must equal.
        """
        frame = self.state.frame
        zones = zones_of(self.state.catalog.to_wire())
        fresh = self.rt.view(ROOM, **for_perspective(self.config))
        try:
            want = read_view(fresh.handle, self.config, self.viewport, zones)
        finally:
            fresh.delete()
        try:
            got = self.plan.read(frame)
        except NotServable:
            assert unordered_key(self.rt, self.plan, frame, self.config), "refused a view it can serve"
            return
        self.compare(got, want, "a new view")
        if not self.stale:
            self.compare(got, read_view(self.view.handle, self.config, self.viewport, zones), "the live view")

    def compare(self, got: tuple[pa.Table, int], want: tuple[pa.Table, int], what: str) -> None:
        assert got[1] == want[1], f"row count: fast {got[1]}, {what} {want[1]}"
        ctx = f"{self.config} {self.viewport} against {what}"
        assert same(got[0], want[0]), f"{ctx}\n{describe(got[0], want[0])}\n{self.state.frame}"

    def step(self, draw: Callable[[State], Op], n: int) -> None:
        watched = {c[0] for c in self.config.get("filter", [])} | set(self.config.get("group_by", []))

        def drawn(state: State) -> Op:
            op = draw(state)
            if isinstance(op, SetCells) and op.col in watched and None in op.values:
                self.stale = True
            return op

        self.seq += 1
        self.state = tick(self.rt, self.state, drawn, n, self.seq)
        self.check()


#: Hypothesis' explain phase traces every line, which on Python 3.11 takes minutes here.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)


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
)
@given(state=states(), cv=configs(), data=st.data())
def test_equal_to_perspective_after_every_edit(
    state: State, cv: tuple[dict[str, Any], tuple[int, int] | None], data: st.DataObject
) -> None:
    tables = RoomTables()
    try:
        pair = Pair(tables, state, *cv)
        pair.check()
        for _ in range(data.draw(st.integers(1, 6))):
            pair.step(lambda state: data.draw(edits(state)), data.draw(st.integers(1, 3)))
    finally:
        tables.close_all()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=PHASES,
)
@given(state=states(), cv=grouped_configs(), data=st.data())
def test_grouped_equal_to_perspective_after_every_edit(
    state: State, cv: tuple[dict[str, Any], tuple[int, int] | None], data: st.DataObject
) -> None:
    tables = RoomTables()
    try:
        pair = Pair(tables, state, *cv)
        pair.check()
        for _ in range(data.draw(st.integers(1, 5))):
            pair.step(lambda state: data.draw(edits(state)), data.draw(st.integers(1, 3)))
    finally:
        tables.close_all()


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
    state = _frame(
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
            assert rows == want_rows, (config, rows, want_rows)
            assert same(got, want), f"{config} {viewport} tick {seq}\n{describe(got, want)}"
            if not config.get("filter"):
                live_table, _ = read_view(live.handle, config, viewport, zones)
                assert same(got, live_table), f"{config} live, tick {seq}\n{describe(got, live_table)}"


# ----------------------------------------------------------------------- every filter


def test_every_filter_operator_and_operand(rt: RoomTables) -> None:
    """Each served (operator, operand) on each column over every value of its domain,
    NaN, both zeros and null: the rows and their order equal a Perspective view's."""
    columns = {name: [*DOMAINS[name], None] for name in COLUMNS}
    columns["f"] += [math.nan, -0.0, 0.0]
    columns["f32"] += [math.nan, -0.0]
    n = max(len(v) for v in columns.values())
    rng = np.random.default_rng(5)
    state = _frame(
        {k: [v[i] for i in rng.integers(0, len(v), 2 * n)] for k, v in columns.items()}, list(range(2 * n))
    )
    rt.open(ROOM, state)
    wire = state.catalog.to_wire()
    checked = 0
    for name in COLUMNS:
        operands = _operands(name)
        for op in [*FILTER_OPS[ptype(COLUMNS[name]) or ""], "is null", "is not null"]:
            values: list[Any] = [None] if "null" in op else operands
            if op in ("in", "not in"):
                values = [[], *([v] for v in operands), operands[:2], operands[-3:]]
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
    return _frame(columns, list(range(len(next(iter(columns.values()))))))


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
