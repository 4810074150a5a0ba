"""Perspective tables per room: type mapping round-trips and delta application.

Perspective 5.5.1 is synchronous through a local client: updates are queued
and applied by ``Server.poll()``, which ``RoomTables.apply_delta`` calls once.
No sleeps and no event loop are needed.
"""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import psutil
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from protocol import AddColumn, CastColumn, Delete, DropColumn, Insert, Op, RenameColumn, SetCells
from server.ops import RID, State, apply, normalize_frame
from server.perspective import RoomTables, read_arrow, to_perspective
from server.perspective.types import perspective_type
from server.rooms.deltas import DeltaBuilder, frame_to_arrow

ROOM = "sales/main"


def make_state(n: int = 6) -> State:
    df = pl.DataFrame(
        {
            "region": (["EU", "US", None, "APAC"] * n)[:n],
            "price": [float(i) + 0.5 if i % 5 else None for i in range(n)],
            "qty": pl.Series([i if i % 4 else None for i in range(n)], dtype=pl.Int64),
            "small": pl.Series([i % 100 for i in range(n)], dtype=pl.UInt8),
            "ok": [bool(i % 2) if i % 3 else None for i in range(n)],
            "day": [dt.date(2024, 1, 1 + i % 28) for i in range(n)],
            "ts": pl.Series(
                [dt.datetime(2024, 1, 1, 12, 0, i % 60, 123456) for i in range(n)], dtype=pl.Datetime("us")
            ),
            "zts": pl.Series(
                [dt.datetime(2024, 6, 1, 12, i % 60, tzinfo=dt.UTC) for i in range(n)],
                dtype=pl.Datetime("us", "Europe/Paris"),
            ),
        }
    )
    frame, catalog = normalize_frame(df)
    return State(frame, catalog, n)


@pytest.fixture
def rt() -> Iterator[RoomTables]:
    tables = RoomTables()
    yield tables
    tables.close_all()


def expected(state: State) -> pl.DataFrame:
    """The room frame as Perspective should hold it (mapped types), sorted by rid."""
    return pl.from_arrow(to_perspective(frame_to_arrow(state.frame))).sort(RID)  # type: ignore[union-attr]


def content(rt: RoomTables, room: str = ROOM) -> pl.DataFrame:
    """The table's rows through a plain view, sorted by rid, in frame column order."""
    return rt.query(room).sort(RID)


def assert_matches(rt: RoomTables, state: State, room: str = ROOM) -> None:
    want = expected(state)
    got = content(rt, room).select(want.columns)
    assert_frame_equal(got, want, check_dtypes=False)
    assert rt.table(room).size() == state.frame.height


def run_tick(rt: RoomTables, state: State, ops: list[Op], seq: int = 1) -> State:
    """Apply ``ops`` to ``state`` as one tick; push the built delta to Perspective."""
    builder = DeltaBuilder()
    after = state
    for op in ops:
        applied = apply(after, op)
        builder.add(applied.effect)
        after = applied.state
    delta = builder.build(state, after, seq, seq + len(ops) - 1, ("u1",), None)
    rt.apply_delta(ROOM, delta, after)
    return after


# -- type mapping ----------------------------------------------------------------


def round_trip(arr: pa.Array) -> tuple[pa.DataType, list[Any]]:
    """Through a real Perspective table; returns the mapped type and values read back."""
    rt = RoomTables()
    data = to_perspective(pa.table({RID: pa.array(range(len(arr)), pa.uint64()), "x": arr}))
    table = rt.client.table(data, index=RID, name="t")
    view = table.view()
    try:
        got = read_arrow(view.to_arrow()).sort(RID)
    finally:
        view.delete()
        table.delete()
    assert rt.names() == []
    return data.schema.field("x").type, got["x"].to_list()


@pytest.mark.parametrize(
    ("arr", "mapped", "back"),
    [
        (pa.array(["a", None], pa.string()), pa.large_string(), ["a", None]),
        (pa.array(["a", None], pa.large_string()), pa.large_string(), ["a", None]),
        (pa.array(["a", None], pa.string_view()), pa.large_string(), ["a", None]),
        (pa.array(["b", "a"]).dictionary_encode(), pa.large_string(), ["b", "a"]),
        (pa.array([-128, None], pa.int8()), pa.int32(), [-128, None]),
        (pa.array([-(2**15), 7], pa.int16()), pa.int32(), [-(2**15), 7]),
        (pa.array([-(2**31), 7], pa.int32()), pa.int32(), [-(2**31), 7]),
        (pa.array([-(2**63) + 1, 2**63 - 1], pa.int64()), pa.int64(), [-(2**63) + 1, 2**63 - 1]),
        (pa.array([255, None], pa.uint8()), pa.int32(), [255, None]),
        (pa.array([65535, 0], pa.uint16()), pa.int32(), [65535, 0]),
        (pa.array([2**32 - 1, 0], pa.uint32()), pa.int64(), [2**32 - 1, 0]),
        (pa.array([2**53, 1], pa.uint64()), pa.float64(), [float(2**53), 1.0]),
        (pa.array([1.5, None], pa.float32()), pa.float64(), [1.5, None]),
        (pa.array([1.25, None], pa.float64()), pa.float64(), [1.25, None]),
        (pa.array([True, None, False], pa.bool_()), pa.bool_(), [True, None, False]),
        (pa.array([dt.date(2024, 2, 29), None], pa.date32()), pa.date32(), [dt.date(2024, 2, 29), None]),
        (pa.array([dt.date(2024, 2, 29)], pa.date64()), pa.date32(), [dt.date(2024, 2, 29)]),
        (
            pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 123456), None], pa.timestamp("us")),
            pa.timestamp("ms"),
            [dt.datetime(2024, 1, 2, 3, 4, 5, 123000), None],
        ),
        (
            pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 999999)], pa.timestamp("ns")),
            pa.timestamp("ms"),
            [dt.datetime(2024, 1, 2, 3, 4, 5, 999000)],
        ),
        (
            # Zoned: same instant, shown as naive UTC wall time.
            pa.array([dt.datetime(2024, 6, 1, 10, 0, tzinfo=dt.UTC)], pa.timestamp("us", "Asia/Tokyo")),
            pa.timestamp("ms"),
            [dt.datetime(2024, 6, 1, 10, 0)],
        ),
    ],
    ids=lambda v: str(v.type) if isinstance(v, pa.Array) else None,
)
def test_type_round_trip(arr: pa.Array, mapped: pa.DataType, back: list[Any]) -> None:
    typ, got = round_trip(arr)
    assert typ == mapped
    assert got == back


@pytest.mark.parametrize(
    "arr",
    [
        pa.array([1, 2], pa.duration("us")),
        pa.array([1, 2], pa.time64("us")),
        pa.array([None, None], pa.null()),
        pa.array([[1], [2]], pa.list_(pa.int64())),
        pa.array([b"a", b"b"], pa.binary()),
    ],
    ids=lambda a: str(a.type),
)
def test_unsupported_types_name_the_column(arr: pa.Array) -> None:
    with pytest.raises(ValueError, match="'bad'"):
        to_perspective(pa.table({RID: pa.array([0, 1], pa.uint64()), "bad": arr}))


def test_rid_mapping() -> None:
    assert perspective_type(RID, pa.uint64()) == pa.float64()
    with pytest.raises(ValueError, match="2\\*\\*53"):
        to_perspective(pa.table({RID: pa.array([2**53], pa.uint64())}))
    with pytest.raises(ValueError, match=RID):
        perspective_type(RID, pa.bool_())


# -- tables --------------------------------------------------------------------


def test_open_equals_state(rt: RoomTables) -> None:
    state = make_state(50)
    rt.open(ROOM, state)
    assert rt.names() == [ROOM]
    assert_matches(rt, state)
    with pytest.raises(ValueError, match="already"):
        rt.open(ROOM, state)


def test_cell_row_deltas(rt: RoomTables) -> None:
    state = make_state(20)
    rt.open(ROOM, state)
    state = run_tick(
        rt,
        state,
        [
            SetCells((0, 3, 5), "price", (9.5, None, 1.0)),
            SetCells((1,), "region", ("XX",)),
            SetCells((2,), "ok", (True,)),
            SetCells((4,), "ts", ("2025-01-01T00:00:00.5",)),
        ],
    )
    assert_matches(rt, state)
    rows = pa.table({"region": ["NEW", None], "price": [1.0, 2.0], "qty": pa.array([7, None], pa.int64())})
    state = run_tick(rt, state, [Insert(rows), Delete((0, 7)), SetCells((8,), "qty", (None,))], seq=5)
    assert state.frame.height == 20
    assert_matches(rt, state)
    # Insert then delete in the same tick: net nothing for that row.
    state = run_tick(rt, state, [Insert(pa.table({"region": ["tmp"]})), Delete((22,))], seq=8)
    assert_matches(rt, state)
    state = run_tick(rt, state, [Delete(where="region = 'EU'")], seq=10)
    assert_matches(rt, state)


def test_group_by_sum_reflects_one_delta(rt: RoomTables) -> None:
    state = make_state(40)
    rt.open(ROOM, state)
    view = rt.view(ROOM, group_by=["region"], columns=["price"], aggregates={"price": "sum"})
    before = view.read()
    key = "region (Group by 1)"
    eu = state.frame.filter(pl.col("region") == "EU")
    assert before.filter(pl.col(key) == "EU")["price"].item() == pytest.approx(eu["price"].sum())
    rid = int(eu[RID][1])
    old = eu["price"][1] or 0.0
    state = run_tick(rt, state, [SetCells((rid,), "price", (1000.0,))])
    after = view.read()
    delta = (
        after.filter(pl.col(key) == "EU")["price"].item() - before.filter(pl.col(key) == "EU")["price"].item()
    )
    assert delta == pytest.approx(1000.0 - old)
    # Total row (null group) is first and moved by the same amount.
    assert after["price"][0] - before["price"][0] == pytest.approx(1000.0 - old)
    # Filter and sort pass straight through.
    top = rt.query(ROOM, columns=[RID, "price"], filter=[["price", ">", 500.0]], sort=[["price", "desc"]])
    assert top[RID].to_list() == [rid]


def test_on_update_fires_once_per_tick(rt: RoomTables) -> None:
    state = make_state(10)
    rt.open(ROOM, state)
    view = rt.view(ROOM, group_by=["region"], columns=["qty"], aggregates={"qty": "sum"})
    calls: list[Any] = []
    view.handle.on_update(lambda *a: calls.append(a))
    run_tick(rt, state, [SetCells((0,), "qty", (5,)), SetCells((1,), "qty", (6,))])
    assert len(calls) == 1
    assert not rt.poll_requested


@pytest.mark.parametrize(
    "ops",
    [
        [AddColumn("note", "String", default="n/a")],
        [AddColumn("double", "Float64", expr="price * 2")],
        [RenameColumn("price", "cost")],
        [CastColumn("qty", "Float64")],
        [CastColumn("small", "String")],
        [DropColumn("region")],
        [
            SetCells((1,), "price", (3.0,)),
            DropColumn("ok"),
            RenameColumn("qty", "n"),
            Insert(pa.table({"n": [1]})),
        ],
    ],
    ids=["add", "add-expr", "rename", "cast-float", "cast-string", "drop", "mixed"],
)
def test_schema_change_rebuilds(rt: RoomTables, ops: list[Op]) -> None:
    state = make_state(12)
    rt.open(ROOM, state)
    old_view = rt.view(ROOM, group_by=["day"], columns=["price"], aggregates={"price": "sum"})
    old_table = rt.table(ROOM)
    state = run_tick(rt, state, ops)
    assert rt.table(ROOM) is not old_table
    assert old_view.closed
    assert rt.names() == [ROOM]
    assert_matches(rt, state)
    # And it keeps taking in-place deltas afterwards.
    state = run_tick(rt, state, [SetCells((2,), "day", ("2030-01-01",))], seq=50)
    assert_matches(rt, state)


def test_schema_change_needs_state(rt: RoomTables) -> None:
    state = make_state(3)
    rt.open(ROOM, state)
    a = apply(state, DropColumn("ok"))
    b = DeltaBuilder()
    b.add(a.effect)
    with pytest.raises(ValueError, match="schema"):
        rt.apply_delta(ROOM, b.build(state, a.state, 1, 1, (), None))


def test_close_leaves_no_tables(rt: RoomTables) -> None:
    rt.open(ROOM, make_state(5))
    rt.open("other/main", make_state(3))
    v = rt.view(ROOM, group_by=["region"])
    assert sorted(rt.names()) == ["other/main", ROOM]
    rt.close(ROOM)
    assert v.closed
    assert rt.names() == ["other/main"]
    rt.close("other/main")
    rt.close("other/main")  # idempotent
    assert rt.names() == []
    with pytest.raises(KeyError):
        rt.table(ROOM)


def test_create_close_does_not_leak(rt: RoomTables) -> None:
    state = make_state(20_000)
    proc = psutil.Process()

    def cycle(k: int) -> None:
        for i in range(k):
            rt.open(f"leak/{i}", state)
            rt.view(f"leak/{i}", group_by=["region"], columns=["price"], aggregates={"price": "sum"}).read()
            rt.close(f"leak/{i}")

    cycle(10)  # warm-up
    gc.collect()
    base = proc.memory_info().rss
    cycle(50)
    gc.collect()
    growth = proc.memory_info().rss - base
    assert rt.names() == []
    assert growth < 50 * 2**20, f"RSS grew {growth / 2**20:.1f} MB over 50 create/close cycles"


def test_rids_above_int32(rt: RoomTables) -> None:
    state = make_state(4)
    big = State(
        state.frame.with_columns(pl.Series(RID, np.array([1, 2, 2**40, 2**52], np.uint64))),
        state.catalog,
        2**52 + 1,
    )
    rt.open(ROOM, big)
    after = run_tick(rt, big, [SetCells((2**40,), "price", (4.0,)), Delete((2**52,))])
    assert_matches(rt, after)
