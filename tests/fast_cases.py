"""Cases for tests/test_fast_views.py: room states, view configs and edits, drawn from small domains,
and the comparison of a fast plan's read against Perspective (:class:`Pair`).

Every dtype the fast engines serve has a column, with values chosen for
ties and edges: int extremes, UInt64 above 2**53, NaN, ``-0.0``, inexact
floats (means depend on adding order), strings that differ only in case,
accents or after a NUL, timestamps a fraction of a millisecond before 1970.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import polars as pl
import pyarrow as pa
from hypothesis import strategies as st

from protocol import Delete, Insert, Op, SetCells
from server.ops import RID, State, apply, normalize_frame, polars_dtype
from server.perspective import RoomTables
from server.perspective.config import for_perspective
from server.perspective.fast import FastPlan, GroupedPlan, NotServable, plan_fast
from server.perspective.fastexpr import FILTER_OPS, check_value, ptype
from server.perspective.fastrender import label
from server.perspective.fastviews import touched_rids
from server.perspective.jobs import zones_of
from server.perspective.payload import read_view
from server.rooms.deltas import DeltaBuilder

__all__ = [
    "ROOM",
    "COLUMNS",
    "DOMAINS",
    "GROUPABLE",
    "Pair",
    "assert_same_view",
    "configs",
    "describe",
    "edits",
    "grouped_configs",
    "make_state",
    "operands",
    "same",
    "states",
    "tick",
]

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


def cell(draw: st.DrawFn, name: str) -> Any:
    if name in ("f", "f32") and draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(UNORDERED))
    return draw(st.none() | st.sampled_from(DOMAINS[name]))


def make_state(columns: dict[str, list[Any]], rids: list[int]) -> State:
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
    return make_state({name: [cell(draw, name) for _ in range(n)] for name in COLUMNS}, rids)


# ----------------------------------------------------------------------- configs


def filter_clause(draw: st.DrawFn) -> list[Any]:
    name = draw(st.sampled_from(list(COLUMNS)))
    ops = [*FILTER_OPS[ptype(COLUMNS[name]) or ""], "is null", "is not null"]
    op = draw(st.sampled_from(ops))
    if op in ("is null", "is not null"):
        return [name, op, None]
    pick = st.sampled_from(operands(name))
    return [name, op, draw(st.lists(pick, max_size=3)) if op in ("in", "not in") else draw(pick)]


def operands(name: str) -> list[Any]:
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
        config["filter"] = [filter_clause(draw) for _ in range(draw(st.integers(1, 2)))]
    viewport = draw(
        st.none()
        | st.tuples(st.integers(0, 40), st.integers(1, 40)).map(lambda t: (t[0], t[0] + t[1]))
        | st.just((5, 10**9))
    )
    return config, viewport


GROUPABLE = [n for n in COLUMNS if n not in ("f", "f32")]
#: Columns a grouped view may split by (server/perspective/fastrender.py: printed values measured).
SPLITTABLE = ["i8", "u16", "i32", "i64", "u32", "s", "b", "d"]


@st.composite
def grouped_configs(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """Grouped views the engine serves: mean, count and sum of columns not grouped by."""
    group_by = draw(st.lists(st.sampled_from(GROUPABLE), unique=True, min_size=1, max_size=2))
    rest = [n for n in COLUMNS if n not in group_by]
    columns = draw(st.lists(st.sampled_from(rest), unique=True, min_size=1, max_size=4))
    aggregates = {}
    for name in columns:
        pt = ptype(COLUMNS[name])
        options = ["count", "max", "min"] + (["mean", "sum"] if pt in ("int32", "int64", "float") else [])
        aggregates[name] = draw(st.sampled_from(options))
    config: dict[str, Any] = {"group_by": group_by, "columns": columns, "aggregates": aggregates}
    splittable = [n for n in SPLITTABLE if n not in group_by and n not in columns]
    if splittable and draw(st.integers(0, 2)) == 0:
        config["split_by"] = [draw(st.sampled_from(splittable))]
    if draw(st.booleans()):
        config["filter"] = [filter_clause(draw)]
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
        return SetCells(tuple(chosen), name, tuple(cell(draw, name) for _ in chosen))
    if kind == "delete":
        return Delete(rows=tuple(draw(st.lists(st.sampled_from(rids), unique=True, min_size=1, max_size=4))))
    k = draw(st.integers(1, 4))
    series = [
        pl.Series(n, [cell(draw, n) for _ in range(k)], dtype=polars_dtype(COLUMNS[n])) for n in COLUMNS
    ]
    return Insert(pl.DataFrame(series).to_arrow())


def tick(
    rt: RoomTables,
    state: State,
    draw: Callable[[State], Op],
    n: int,
    seq: int,
    touched: list[tuple[int, int, Any]] | None = None,
) -> State:
    """Apply ``n`` ops (each drawn against the state the one before left) as one tick,
    and push the built delta to Perspective (and the rids it touched to ``touched``, as a room does)."""
    builder = DeltaBuilder()
    after = state
    for _ in range(n):
        applied = apply(after, draw(after))
        builder.add(applied.effect)
        after = applied.state
    delta = builder.build(state, after, seq, seq, ("u1",), None)
    rt.apply_delta(ROOM, delta, after)
    if touched is not None:
        touched.append((delta.seq_from, delta.seq_to, touched_rids(delta)))
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


def unordered_key(
    rt: RoomTables, plan: FastPlan | GroupedPlan, frame: pl.DataFrame, config: dict[str, Any]
) -> str | None:
    """The float sort key (or max or min column) the engine must refuse, judged by Python on the
    rows Perspective keeps."""
    kept = rt.query(ROOM, columns=[RID], filter=config.get("filter", []))
    view = set(kept[RID].cast(pl.UInt64).to_list())
    rids = frame[RID].to_list()
    if isinstance(plan, GroupedPlan):  # a float max or min
        columns = [(n, d) for n, d, agg in plan.aggregates if agg in ("max", "min")]
    else:
        columns = [(k.column, k.dtype) for k in plan.sort]
    for name, dtype in columns:
        if dtype not in ("Float64", "Float32"):
            continue
        values = [v for r, v in zip(rids, frame[name].to_list(), strict=True) if r in view and v is not None]
        zeros = {math.copysign(1.0, v) for v in values if v == 0.0}
        if any(math.isnan(v) for v in values) or len(zeros) == 2:
            return name
    return None


def float_aggregates(config: dict[str, Any]) -> list[str]:
    """The grouped view's columns whose aggregate adds doubles: every mean, and sums of floats."""
    out = []
    for name, agg in config.get("aggregates", {}).items():
        if agg == "mean" or (agg == "sum" and ptype(COLUMNS[name]) == "float"):
            out.append(name)
    return out


def _exact(values: list[float], agg: str) -> tuple[float | None, float]:
    """A group's true sum or mean rounded once (Python fractions), and the bound of an
    order-dependent double summation around it: ``n * 2**-52 * sum(|x|)``."""
    present = [v for v in values if v is not None]
    if agg == "mean" and not present:
        return None, 0.0
    if any(math.isnan(v) for v in present) or (math.inf in present and -math.inf in present):
        return math.nan, 0.0
    if math.inf in present or -math.inf in present:
        inf = math.inf if math.inf in present else -math.inf
        return inf, 0.0
    total = sum((Fraction(v) for v in present), Fraction(0))
    bound = len(present) * 2.0**-52 * math.fsum(abs(v) for v in present)
    if agg == "mean":
        total /= len(present)
        bound = bound / len(present)
    try:
        value = float(total)
    except OverflowError:
        value = math.copysign(math.inf, total)
    return value, bound + 2.0**-52 * abs(value)


def float_reference(plan: GroupedPlan, frame: pl.DataFrame) -> dict[str, list[tuple[float | None, float]]]:
    """Per float aggregate column, per group in the view's order: the exact value and
    Perspective's bound; with a split, per ``<value>|<column>`` column, and (None, 0) for a
    (group, split value) without rows.

    The groups and their rows are the plan's own (its keys and filters are
    checked against Perspective by the other columns); the arithmetic is
    Python's fractions, independent of the tally's.
    """
    ng, nk = len(plan.group_by), len(plan.keys)
    rows = plan._rows(frame).filter(pl.col("keep"))
    cells: dict[tuple[Any, ...], list[list[float]]] = {}
    for row in rows.iter_rows():
        values = cells.setdefault(tuple(row[:nk]), [[] for _ in plan.aggregates])
        for i in range(len(plan.aggregates)):
            values[i].append(row[nk + i])
    groups = list(dict.fromkeys(k[:ng] for k in cells))
    keys = pl.DataFrame(groups, schema=[f"k{i}" for i in range(ng)], orient="row")
    order = keys.with_row_index("i").sort([f"k{i}" for i in range(ng)], nulls_last=False)["i"].to_list()
    if plan.viewport is not None:
        order = order[plan.viewport[0] : plan.viewport[1]]
    splits: list[Any] = [()]
    if plan.split:
        values = pl.Series("s", list(dict.fromkeys(k[ng] for k in cells)))
        splits = [(v,) for v in values.sort(nulls_last=False).to_list()]
    out: dict[str, list[tuple[float | None, float]]] = {}
    for i, (name, _, kind) in enumerate(plan.aggregates):
        if kind not in ("mean", "fsum"):
            continue
        for split in splits:
            column = f"{label(split[0])}|{name}" if split else name
            out[column] = [
                _exact(cells[(*groups[j], *split)][i], "mean" if kind == "mean" else "sum")
                if (*groups[j], *split) in cells
                else (None, 0.0)
                for j in order
            ]
    return out


def assert_same_view(
    plan: FastPlan | GroupedPlan,
    config: dict[str, Any],
    viewport: tuple[int, int] | None,
    frame: pl.DataFrame,
    got: tuple[pa.Table, int],
    want: tuple[pa.Table, int],
    what: str,
    *,
    live: bool = False,
) -> None:
    """The engine's read ``got`` equals Perspective's ``want``: exactly, except float sums and
    means, which must be the exact value rounded once, and Perspective's within its bound
    (``live``: ``want`` is from a view open since before the edits)."""
    assert got[1] == want[1], f"row count: fast {got[1]}, {what} {want[1]}"
    ctx = f"{config} {viewport} against {what}"
    if float_aggregates(config) and isinstance(plan, GroupedPlan):
        exact = float_reference(plan, frame)
        floats = list(exact)
        for name in floats:
            fast, persp = got[0].column(name).to_pylist(), want[0].column(name).to_pylist()
            assert [repr(v) for v in fast] == [repr(v) for v, _ in exact[name]], (
                f"{ctx}: {name} is not the exact value rounded once\n{fast}\n{exact[name]}"
            )
            for p, (v, bound) in zip(persp, exact[name], strict=True):
                if live and v is not None and not math.isfinite(v):
                    continue  # a live Perspective sum loses infinities after updates (docs/decisions.md)
                assert within(p, v, bound), f"{ctx}: {name}: Perspective {p}, exact {v}, bound {bound}"
        got = (got[0].drop_columns(floats), got[1])
        want = (want[0].drop_columns(floats), want[1])
    assert same(got[0], want[0]), f"{ctx}\n{describe(got[0], want[0])}\n{frame}"


def within(got: float | None, want: float | None, bound: float) -> bool:
    """``got`` is ``want`` (NaN, infinities and nulls alike) or within ``bound`` of it."""
    if got is None or want is None or not math.isfinite(want):
        return repr(got) == repr(want)
    return got is not None and abs(got - want) <= bound


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
        # The same plan read as a room reads it: with the seq and the deltas' upserted rids.
        self.noted = plan_fast(config, viewport, state.catalog.to_wire())
        self.touched: list[tuple[int, int, Any]] = []
        self.seq = 0
        # The live view missed a null written to a filter, group or aggregated column
        # (or is grouped and filtered, or sums an int32 column: see check).
        int32_sum = any(
            a == "sum" and ptype(COLUMNS[c]) == "int32" for c, a in config.get("aggregates", {}).items()
        )
        self.stale = bool(config.get("group_by") and config.get("filter")) or int32_sum

    def check(self) -> None:
        """The engine's read equals a view opened now, and the live view until it went stale.

        Perspective 5.5.1's live views go stale when an update sets a cell of
        a filter, group_by or aggregated column to null: the row is neither
        re-filtered nor regrouped, nor its old value taken out of the
        aggregate (and a later value can list the row twice). A live view both
        grouped and filtered by ``is null``, ``!=`` or ``not in`` loses or
        miscounts its null group on inserts, and a live ``sum`` of an int32
        column subtracts a removed ``-2**31`` by adding it (the negation
        wraps in int32), so those are never compared. A new subscriber gets
        the fresh view's rows, which the engine must equal.
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
        if isinstance(self.noted, GroupedPlan):  # the room's way: only the rows the deltas upserted
            noted = self.noted.read(frame, self.seq, self.touched)
            assert noted[1] == got[1] and same(noted[0], got[0]), describe(noted[0], got[0])
        if not self.stale:
            live = read_view(self.view.handle, self.config, self.viewport, zones)
            assert_same_view(
                self.plan, self.config, self.viewport, self.state.frame, got, live, "the live view", live=True
            )

    def compare(self, got: tuple[pa.Table, int], want: tuple[pa.Table, int], what: str) -> None:
        assert_same_view(self.plan, self.config, self.viewport, self.state.frame, got, want, what)

    def step(self, draw: Callable[[State], Op], n: int) -> None:
        watched = {c[0] for c in self.config.get("filter", [])} | set(self.config.get("group_by", []))
        watched |= set(self.config.get("split_by", []))
        if self.config.get("group_by"):
            watched |= set(self.config.get("columns", []))

        def drawn(state: State) -> Op:
            op = draw(state)
            if isinstance(op, SetCells) and op.col in watched and None in op.values:
                self.stale = True
            return op

        self.seq += 1
        self.state = tick(self.rt, self.state, drawn, n, self.seq, self.touched)
        self.check()
