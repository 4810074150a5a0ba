"""Example tests for server.ops: each op's semantics and every rejection path.

A rejected op must raise OpError with a stable code and leave the state (and
the input frame) untouched; the ``rejects`` helper checks both.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from protocol import (
    AddColumn,
    CastColumn,
    Delete,
    DropColumn,
    ErrorCode,
    FillNull,
    Insert,
    Op,
    RenameColumn,
    RestoreColumn,
    RestoreRows,
    SetCells,
)
from server.ops import (
    RID,
    Applied,
    Catalog,
    Column,
    OpError,
    SetPlan,
    State,
    apply,
    apply_all,
    apply_set_plans,
    coerce,
    dtype_name,
    normalize_frame,
    plan_set,
    polars_dtype,
    read_cells,
)

UTC = dt.UTC


def make_state() -> State:
    df = pl.DataFrame(
        {
            "price": [1.5, None, 3.0, 4.0, None],
            "qty": pl.Series([1, 2, None, 4, 2], dtype=pl.Int64),
            "region": ["EU", None, "US", "EU", "APAC"],
            "ok": [True, None, False, True, None],
            "day": [dt.date(2024, 1, 1), None, dt.date(2024, 3, 1), None, dt.date(2024, 2, 1)],
            "ts": pl.Series(
                [dt.datetime(2024, 1, 1, 12, tzinfo=UTC), None, None, None, None],
                dtype=pl.Datetime("us", "UTC"),
            ),
        }
    )
    frame, catalog = normalize_frame(df)
    # rids with gaps, as after deletes: 0, 1, 2, 5, 7
    frame = frame.with_columns(pl.Series(RID, [0, 1, 2, 5, 7], dtype=pl.UInt64))
    return State(frame, catalog, 8)


@pytest.fixture
def state() -> State:
    return make_state()


def col(state: State, name: str) -> list[Any]:
    return state.frame.get_column(name).to_list()


def undo(applied: Applied) -> State:
    s = applied.state
    for inv in applied.inverse:
        s = apply(s, inv).state
    return s


def assert_same(a: State, b: State) -> None:
    assert_frame_equal(a.frame, b.frame)
    assert a.catalog == b.catalog or a.catalog.columns == b.catalog.columns


def rejects(state: State, op: Op, code: str) -> OpError:
    snapshot = state.frame.clone()
    catalog = state.catalog
    with pytest.raises(OpError) as info:
        apply(state, op)
    assert info.value.code == code, info.value.message
    assert info.value.message
    assert_frame_equal(state.frame, snapshot)
    assert state.catalog is catalog
    return info.value


# --------------------------------------------------------------------------- set


def test_set_writes_cells_and_inverse_restores(state: State) -> None:
    before = state.frame.clone()
    a = apply(state, SetCells((1, 7), "price", (9.5, 2)))
    assert col(a.state, "price") == [1.5, 9.5, 3.0, 4.0, 2.0]
    assert list(a.effect.cells) == [0] and a.effect.cells[0].tolist() == [1, 7]
    assert a.effect.cells[0].dtype == np.uint64
    assert a.inverse == (SetCells((1, 7), 0, (None, None)),)
    assert_frame_equal(state.frame, before)  # input not mutated
    assert_same(undo(a), state)


def test_set_by_column_id_and_temporal_inverse_is_wire_safe(state: State) -> None:
    a = apply(state, SetCells((0,), 5, ("2024-06-01T08:00:00+02:00",)))
    assert col(a.state, "ts")[0] == dt.datetime(2024, 6, 1, 6, tzinfo=UTC)
    (inv,) = a.inverse
    assert isinstance(inv, SetCells) and inv.values == ("2024-01-01T12:00:00+00:00",)
    assert_same(undo(a), state)


def test_set_unknown_rid(state: State) -> None:
    e = rejects(state, SetCells((0, 3, 4), "price", (1.0, 2.0, 3.0)), ErrorCode.NO_SUCH_ROW)
    assert e.details["rids"] == [3, 4]
    assert "rid 3, 4" in e.message


def test_set_negative_or_huge_rid(state: State) -> None:
    rejects(state, SetCells((-1,), "price", (1.0,)), ErrorCode.NO_SUCH_ROW)
    rejects(state, SetCells((2**70,), "price", (1.0,)), ErrorCode.NO_SUCH_ROW)


def test_set_duplicate_rid(state: State) -> None:
    e = rejects(state, SetCells((1, 1), "price", (1.0, 2.0)), ErrorCode.BAD_OP)
    assert e.details["rids"] == [1]


def test_set_unknown_column(state: State) -> None:
    rejects(state, SetCells((1,), "nope", (1.0,)), ErrorCode.NO_SUCH_COLUMN)
    rejects(state, SetCells((1,), 99, (1.0,)), ErrorCode.NO_SUCH_COLUMN)


def test_set_bad_value_names_column_value_and_rid(state: State) -> None:
    e = rejects(state, SetCells((0, 5), "region", ("x", 5)), ErrorCode.BAD_VALUE)
    assert "column 'region' is String; send text" in e.message
    assert e.details["samples"] == [{"position": 1, "value": 5, "rid": 5}]


def test_set_values_rows_mismatch(state: State) -> None:
    rejects(state, SetCells((0, 1), "price", (1.0,)), ErrorCode.BAD_OP)


def test_set_empty_is_noop(state: State) -> None:
    a = apply(state, SetCells((), "price", ()))
    assert_same(a.state, state)
    assert a.effect.cells == {}


# --------------------------------------------------------------------------- plans


def test_plan_set_validates_without_touching_frame(state: State) -> None:
    before = state.frame.clone()
    plan = plan_set(state, SetCells((5, 0), "qty", (10, 11.0)))
    assert isinstance(plan, SetPlan)
    assert plan.col == Column(1, "qty", "Int64")
    assert plan.rids.dtype == np.uint64 and plan.rids.tolist() == [5, 0]
    assert plan.positions.tolist() == [3, 0]
    assert plan.values.dtype == pl.Int64 and plan.values.to_list() == [10, 11]
    assert_frame_equal(state.frame, before)
    for op, code in [
        (SetCells((9,), "qty", (1,)), ErrorCode.NO_SUCH_ROW),
        (SetCells((0, 0), "qty", (1, 2)), ErrorCode.BAD_OP),
        (SetCells((0,), "qty", (1.5,)), ErrorCode.BAD_VALUE),
        (SetCells((0,), "zzz", (1,)), ErrorCode.NO_SUCH_COLUMN),
    ]:
        with pytest.raises(OpError) as info:
            plan_set(state, op)
        assert info.value.code == code


def test_apply_set_plans_last_plan_wins_and_one_result_per_column(state: State) -> None:
    plans = [
        plan_set(state, SetCells((0, 1), "qty", (100, 101))),
        plan_set(state, SetCells((1, 2), "qty", (201, 202))),
        plan_set(state, SetCells((0,), "region", ("X",))),
        plan_set(state, SetCells((1,), "qty", (301,))),
    ]
    before = state.frame.clone()
    new = apply_set_plans(state, plans)
    assert col(new, "qty") == [100, 301, 202, 4, 2]
    assert col(new, "region") == ["X", None, "US", "EU", "APAC"]
    assert_frame_equal(state.frame, before)
    assert apply_set_plans(state, []) is state


def test_apply_set_plans_rejects_stale_plan(state: State) -> None:
    plan = plan_set(state, SetCells((0,), "qty", (1,)))
    renamed = apply(state, RenameColumn("qty", "q")).state
    with pytest.raises(ValueError):
        apply_set_plans(renamed, [plan])


def test_read_cells_gives_json_friendly_values(state: State) -> None:
    c = state.catalog.resolve("day")
    assert read_cells(state, c, np.array([0, 1])) == ["2024-01-01", None]
    assert read_cells(state, state.catalog.resolve("ts"), [0]) == ["2024-01-01T12:00:00+00:00"]
    assert read_cells(state, state.catalog.resolve("qty"), [3, 4]) == [4, 2]


# --------------------------------------------------------------------------- insert


def test_insert_assigns_rids_and_fills_missing_columns(state: State) -> None:
    rows = [{"price": 1, "region": "EU", "day": "2024-05-05", "qty": None}, {"qty": 3}]
    table = pa.Table.from_pylist(rows)  # note: from_pylist takes its columns from the first row
    a = apply(state, Insert(table))
    assert a.effect.inserted.tolist() == [8, 9]
    assert a.state.next_rid == 10
    tail = a.state.frame.tail(2)
    assert tail.get_column(RID).to_list() == [8, 9]
    assert tail.get_column("price").to_list() == [1.0, None]
    assert tail.get_column("day").to_list() == [dt.date(2024, 5, 5), None]
    assert tail.get_column("qty").to_list() == [None, 3]
    assert a.inverse == (Delete(rows=(8, 9)),)
    assert_same(undo(a), state)


def test_insert_typed_arrow_batch(state: State) -> None:
    table = pa.table(
        {
            "qty": pa.array([7], pa.int8()),
            "ts": pa.array([dt.datetime(2024, 1, 1)], pa.timestamp("ns")),
            "region": pa.array(["x"], pa.string_view()),
        }
    )
    a = apply(state, Insert(table))
    row = a.state.frame.tail(1)
    assert row.get_column("qty").to_list() == [7]
    assert row.get_column("ts").to_list() == [dt.datetime(2024, 1, 1, tzinfo=UTC)]  # zone-less read as UTC


def test_insert_rejections(state: State) -> None:
    rejects(state, Insert(pa.table({"price": pa.array([], pa.float64())})), ErrorCode.BAD_OP)
    e = rejects(state, Insert(pa.table({"nope": [1]})), ErrorCode.NO_SUCH_COLUMN)
    assert "nope" in e.message
    rejects(state, Insert(pa.table({RID: [1]})), ErrorCode.BAD_OP)
    e = rejects(state, Insert(pa.table({"region": [1, 2]})), ErrorCode.BAD_VALUE)
    assert "region" in e.message
    e = rejects(state, Insert(pa.table({"qty": [1.0, 2.5]})), ErrorCode.BAD_VALUE)
    assert e.details["samples"][0]["position"] == 1
    rejects(state, Insert(pa.table({"ok": [1]})), ErrorCode.BAD_VALUE)
    rejects(state, Insert(pa.table({"day": ["not a date"]})), ErrorCode.BAD_VALUE)
    rejects(state, Insert(pa.table({"price": [[1.0]]})), ErrorCode.BAD_VALUE)


# --------------------------------------------------------------------------- delete


def test_delete_by_rids(state: State) -> None:
    a = apply(state, Delete(rows=(1, 5, 1)))
    assert col(a.state, RID) == [0, 2, 7]
    assert a.effect.deleted.tolist() == [1, 5]
    (inv,) = a.inverse
    assert isinstance(inv, RestoreRows)
    assert inv.rows.column_names == [RID, *state.catalog.names()]
    assert inv.rows.column(RID).to_pylist() == [1, 5]
    assert_same(undo(a), state)


def test_delete_where_null_counts_as_false(state: State) -> None:
    a = apply(state, Delete(where="price > 2"))  # price null in rids 1 and 7
    assert col(a.state, RID) == [0, 1, 7]
    assert_same(undo(a), state)


def test_delete_where_constant_and_nothing(state: State) -> None:
    assert apply(state, Delete(where="true")).state.frame.height == 0
    a = apply(state, Delete(where="region = 'nowhere'"))
    assert a.state is state and len(a.effect.deleted) == 0
    assert_same(undo(a), state)


def test_delete_rejections(state: State) -> None:
    rejects(state, Delete(rows=(3,)), ErrorCode.NO_SUCH_ROW)
    rejects(state, Delete(where="qty + 1"), ErrorCode.BAD_EXPR)
    rejects(state, Delete(where="nope > 1"), ErrorCode.NO_SUCH_COLUMN)
    rejects(state, Delete(where="read_csv('/etc/passwd')"), ErrorCode.BAD_EXPR)
    rejects(state, Delete(where="region > date '2020-01-01' + 'x'"), ErrorCode.BAD_EXPR)
    rejects(state, Delete(), ErrorCode.BAD_OP)
    rejects(state, Delete(rows=(1,), where="true"), ErrorCode.BAD_OP)


# --------------------------------------------------------------------------- add_column


def test_add_column_default(state: State) -> None:
    a = apply(state, AddColumn("note", "String", default="n/a"))
    assert a.state.catalog.columns[-1] == Column(6, "note", "String")
    assert a.state.catalog.next_id == 7
    assert col(a.state, "note") == ["n/a"] * 5
    assert a.inverse == (DropColumn(6),)
    assert a.effect.full == {6} and a.effect.schema_changed
    assert_same(undo(a), state)


def test_add_column_null_and_on_empty_frame(state: State) -> None:
    a = apply(state, AddColumn("n", "Date"))
    assert col(a.state, "n") == [None] * 5
    empty = apply(state, Delete(where="true")).state
    b = apply(empty, AddColumn("x", "Int8", default=1))
    assert b.state.frame.schema["x"] == pl.Int8 and b.state.frame.height == 0
    c = apply(empty, AddColumn("y", "Float64", expr="price * 2"))
    assert c.state.frame.height == 0


def test_add_column_expr(state: State) -> None:
    a = apply(state, AddColumn("total", "Float64", expr="price * qty"))
    assert col(a.state, "total") == [1.5, None, None, 16.0, None]
    b = apply(state, AddColumn("one", "Int32", expr="1"))
    assert col(b.state, "one") == [1] * 5
    c = apply(state, AddColumn("big", "Boolean", expr="qty > 1"))
    assert col(c.state, "big") == [False, True, None, True, True]


@pytest.mark.parametrize(
    ("kwargs", "dtype"),
    [
        ({"expr": "price * qty"}, "Float64"),
        ({"expr": "upper(region)"}, "String"),
        ({"expr": "day"}, "Date"),
        ({"expr": "ts"}, "Datetime[UTC]"),
        ({"expr": "CAST(price AS DECIMAL(10,2))"}, "Float64"),
        ({"expr": "CAST(1 AS TINYINT)"}, "Int8"),
        ({"default": True}, "Boolean"),
        ({"default": 5}, "Int64"),
        ({"default": 2**63}, "UInt64"),
        ({"default": 1.5}, "Float64"),
        ({"default": "2024-01-01"}, "String"),
    ],
)
def test_add_column_infers_dtype(state: State, kwargs: dict[str, Any], dtype: str) -> None:
    a = apply(state, AddColumn("new", **kwargs))
    assert a.state.catalog.columns[-1] == Column(6, "new", dtype)
    assert a.state.frame.schema["new"] == polars_dtype(dtype)
    assert_same(undo(a), state)


def test_add_column_without_dtype_rejections(state: State) -> None:
    rejects(state, AddColumn("x"), ErrorCode.BAD_OP)
    e = rejects(state, AddColumn("x", expr="[1, 2]"), ErrorCode.BAD_DTYPE)
    assert "List" in e.message and "dtype" in e.message
    rejects(state, AddColumn("x", expr="day - day"), ErrorCode.BAD_DTYPE)
    rejects(state, AddColumn("x", default=2**64), ErrorCode.BAD_VALUE)


def test_add_column_expr_cast_failure_lists_samples(state: State) -> None:
    e = rejects(state, AddColumn("r", "Int64", expr="region"), ErrorCode.CAST_FAILED)
    assert e.details["count"] == 4
    assert e.details["samples"][0] == {"rid": 0, "value": "EU"}
    assert len(e.details["samples"]) == 4


def test_add_column_rejections(state: State) -> None:
    rejects(state, AddColumn("", "Int64"), ErrorCode.BAD_OP)
    rejects(state, AddColumn("x" * 129, "Int64"), ErrorCode.BAD_OP)
    rejects(state, AddColumn(RID, "Int64"), ErrorCode.RESERVED_NAME)
    e = rejects(state, AddColumn("price", "Int64"), ErrorCode.COLUMN_EXISTS)
    assert "price" in e.message
    e = rejects(state, AddColumn("x", "int64"), ErrorCode.BAD_DTYPE)
    assert "Int64" in e.message
    rejects(state, AddColumn("x", "Int64", default="five"), ErrorCode.BAD_VALUE)
    rejects(state, AddColumn("x", "Int64", default=1, expr="qty"), ErrorCode.BAD_OP)
    rejects(state, AddColumn("x", "Int64", expr="nope + 1"), ErrorCode.NO_SUCH_COLUMN)
    rejects(state, AddColumn("x", "Int64", expr="(SELECT 1)"), ErrorCode.BAD_EXPR)
    rejects(state, AddColumn("x", "Int64", expr="region * 2"), ErrorCode.BAD_EXPR)


# --------------------------------------------------------------------------- drop / rename


def test_drop_column_and_ids_are_not_reused(state: State) -> None:
    a = apply(state, DropColumn("qty"))
    assert a.state.catalog.names() == ["price", "region", "ok", "day", "ts"]
    assert "qty" not in a.state.frame.columns
    (inv,) = a.inverse
    assert isinstance(inv, RestoreColumn)
    assert (inv.id, inv.name, inv.dtype, inv.position) == (1, "qty", "Int64", 1)
    assert inv.values.column_names == [RID, "qty"]
    assert a.effect.schema_changed
    assert_same(undo(a), state)
    b = apply(a.state, AddColumn("qty", "Int64"))
    assert b.state.catalog.columns[-1].id == 6
    rejects(state, DropColumn("nope"), ErrorCode.NO_SUCH_COLUMN)


def test_rename_column(state: State) -> None:
    a = apply(state, RenameColumn("region", "area"))
    assert a.state.catalog.names()[2] == "area" and a.state.frame.columns[3] == "area"
    assert a.inverse == (RenameColumn(2, "region"),)
    assert_same(undo(a), state)
    same = apply(state, RenameColumn(2, "region"))
    assert same.state is state and same.inverse == (RenameColumn(2, "region"),)
    rejects(state, RenameColumn("region", "price"), ErrorCode.COLUMN_EXISTS)
    rejects(state, RenameColumn("region", RID), ErrorCode.RESERVED_NAME)
    rejects(state, RenameColumn("region", ""), ErrorCode.BAD_OP)
    rejects(state, RenameColumn("nope", "x"), ErrorCode.NO_SUCH_COLUMN)


# --------------------------------------------------------------------------- cast


def test_cast_strict_failure_reports_count_and_samples(state: State) -> None:
    e = rejects(state, CastColumn("region", "Int64"), ErrorCode.CAST_FAILED)
    assert e.details["count"] == 4
    assert e.details["samples"][:2] == [{"rid": 0, "value": "EU"}, {"rid": 2, "value": "US"}]
    assert "4 values" in e.message and "strict=false" in e.message


def test_cast_lenient_nulls_failures(state: State) -> None:
    s = apply(state, SetCells((0, 1), "region", ("12", " 7 "))).state
    a = apply(s, CastColumn("region", "Int64", strict=False))
    assert col(a.state, "region") == [12, None, None, None, None]
    assert a.state.catalog.resolve("region").dtype == "Int64"
    assert a.effect.full == {2} and a.effect.schema_changed
    assert_same(undo(a), s)


def test_cast_string_to_temporal_and_bool() -> None:
    frame, catalog = normalize_frame(
        pl.DataFrame({"s": ["2024-01-02", "2024-01-03T04:05:06", None, "2024-01-02 10:00:00+02:00"]})
    )
    st = State(frame, catalog, 4)
    d = apply(st, CastColumn("s", "Date", strict=False)).state
    assert col(d, "s") == [dt.date(2024, 1, 2), None, None, None]
    t = apply(st, CastColumn("s", "Datetime[UTC]")).state
    assert col(t, "s") == [
        dt.datetime(2024, 1, 2, tzinfo=UTC),
        dt.datetime(2024, 1, 3, 4, 5, 6, tzinfo=UTC),
        None,
        dt.datetime(2024, 1, 2, 8, tzinfo=UTC),
    ]
    rejects(st, CastColumn("s", "Datetime"), ErrorCode.CAST_FAILED)  # an offset into a zone-less column
    b = State(*normalize_frame(pl.DataFrame({"b": ["true", "False", None]})), 3)
    assert col(apply(b, CastColumn("b", "Boolean")).state, "b") == [True, False, None]


def test_cast_numeric(state: State) -> None:
    a = apply(state, CastColumn("price", "Int32"))
    assert col(a.state, "price") == [1, None, 3, 4, None]  # Polars cast: truncates toward zero
    assert a.state.frame.schema["price"] == pl.Int32
    assert_same(undo(a), state)
    b = apply(state, CastColumn("qty", "String"))
    assert col(b.state, "qty") == ["1", "2", None, "4", "2"]
    big = apply(state, SetCells((0,), "qty", (300,))).state
    rejects(big, CastColumn("qty", "Int8"), ErrorCode.CAST_FAILED)
    rejects(state, CastColumn("qty", "Decimal"), ErrorCode.BAD_DTYPE)
    rejects(state, CastColumn("nope", "Int8"), ErrorCode.NO_SUCH_COLUMN)


def test_cast_same_dtype_is_valid(state: State) -> None:
    a = apply(state, CastColumn("qty", "Int64"))
    assert_same(a.state, state)
    assert_same(undo(a), state)


# --------------------------------------------------------------------------- fill_null


@pytest.mark.parametrize(
    ("column", "strategy", "expected"),
    [
        ("price", "forward", [1.5, 1.5, 3.0, 4.0, 4.0]),
        ("price", "backward", [1.5, 3.0, 3.0, 4.0, None]),
        ("price", "mean", [1.5, 8.5 / 3, 3.0, 4.0, 8.5 / 3]),
        ("price", "median", [1.5, 3.0, 3.0, 4.0, 3.0]),
        ("price", "min", [1.5, 1.5, 3.0, 4.0, 1.5]),
        ("price", "max", [1.5, 4.0, 3.0, 4.0, 4.0]),
        ("price", "zero", [1.5, 0.0, 3.0, 4.0, 0.0]),
        ("qty", "mean", [1, 2, 2, 4, 2]),  # 9/4 = 2.25 -> 2
        ("qty", "mode", [1, 2, 2, 4, 2]),
        ("ok", "zero", [True, False, False, True, False]),
        ("ok", "mode", [True, True, False, True, True]),
        ("region", "mode", ["EU", "EU", "US", "EU", "APAC"]),
        ("region", "min", ["EU", "APAC", "US", "EU", "APAC"]),
        (
            "day",
            "max",
            [
                dt.date(2024, 1, 1),
                dt.date(2024, 3, 1),
                dt.date(2024, 3, 1),
                dt.date(2024, 3, 1),
                dt.date(2024, 2, 1),
            ],
        ),
    ],
)
def test_fill_null_strategies(state: State, column: str, strategy: str, expected: list[Any]) -> None:
    a = apply(state, FillNull(column, strategy=strategy))
    assert col(a.state, column) == expected
    c = state.catalog.resolve(column)
    was_null = state.frame.get_column(column).is_null()
    changed = state.frame.filter(was_null & a.state.frame.get_column(column).is_not_null())
    assert a.effect.cells.get(c.id, np.empty(0)).tolist() == changed.get_column(RID).to_list()
    (inv,) = a.inverse
    assert isinstance(inv, SetCells) and inv.col == c.id and set(inv.values) <= {None}
    assert_same(undo(a), state)


def test_fill_null_rounding_and_mode_ties() -> None:
    st = State(*normalize_frame(pl.DataFrame({"n": [1, 2, None, 3, 4, None]})), 6)
    assert col(apply(st, FillNull("n", strategy="mean")).state, "n") == [1, 2, 3, 3, 4, 3]  # 2.5 -> 3
    tie = State(*normalize_frame(pl.DataFrame({"s": ["b", "a", None, "b", "a"]})), 5)
    assert col(apply(tie, FillNull("s", strategy="mode")).state, "s")[2] == "a"
    big = State(*normalize_frame(pl.DataFrame({"n": [2**63 - 1, 2**63 - 1, None]})), 3)
    assert col(apply(big, FillNull("n", strategy="mean")).state, "n")[2] == 2**63 - 1


def test_fill_null_value_and_nothing_to_fill(state: State) -> None:
    a = apply(state, FillNull("day", value="2000-01-01"))
    assert col(a.state, "day")[1] == dt.date(2000, 1, 1)
    assert a.effect.cells[4].tolist() == [1, 5]
    full = apply(a.state, FillNull("day", value="2001-01-01"))
    assert full.state is a.state and full.effect.cells == {}
    all_null = apply(state, AddColumn("e", "Float64")).state
    m = apply(all_null, FillNull("e", strategy="mean"))
    assert m.state is all_null


def test_fill_null_rejections(state: State) -> None:
    e = rejects(state, FillNull("region", strategy="mean"), ErrorCode.BAD_OP)
    assert "forward" in e.message and "mean" not in e.details["strategies"]
    rejects(state, FillNull("day", strategy="zero"), ErrorCode.BAD_OP)
    rejects(state, FillNull("ok", strategy="median"), ErrorCode.BAD_OP)
    rejects(state, FillNull("qty", strategy="average"), ErrorCode.BAD_OP)
    rejects(state, FillNull("qty"), ErrorCode.BAD_OP)
    rejects(state, FillNull("qty", value=1, strategy="zero"), ErrorCode.BAD_OP)
    rejects(state, FillNull("qty", value="one"), ErrorCode.BAD_VALUE)
    rejects(state, FillNull("nope", value=1), ErrorCode.NO_SUCH_COLUMN)


# --------------------------------------------------------------------------- restore ops


def test_restore_rows_merges_in_rid_order(state: State) -> None:
    a = apply(state, Delete(rows=(1, 5)))
    restored = apply(a.state, a.inverse[0])
    assert col(restored.state, RID) == [0, 1, 2, 5, 7]
    assert restored.effect.inserted.tolist() == [1, 5]
    assert restored.inverse == (Delete(rows=(1, 5)),)
    assert_same(restored.state, state)


def test_restore_rows_rejections(state: State) -> None:
    table = state.frame.head(1).to_arrow()
    e = rejects(state, RestoreRows(table), ErrorCode.BAD_OP)
    assert "exists" in e.message
    rejects(state, RestoreRows(pa.table({RID: pa.array([3], pa.uint64())})), ErrorCode.BAD_OP)
    assert apply(state, RestoreRows(state.frame.head(0).to_arrow())).state is state


def test_restore_column_existing_id_replaces_in_place(state: State) -> None:
    values = pa.table({RID: pa.array([7, 0], pa.uint64()), "v": ["seven", "zero"]})
    a = apply(state, RestoreColumn(1, "label", "String", 99, values))
    assert a.state.catalog.names() == ["price", "label", "region", "ok", "day", "ts"]
    assert col(a.state, "label") == ["zero", None, None, None, "seven"]
    (inv,) = a.inverse
    assert isinstance(inv, RestoreColumn)
    assert (inv.id, inv.name, inv.dtype, inv.position) == (1, "qty", "Int64", 1)
    assert a.effect.full == {1} and a.effect.schema_changed
    assert_same(undo(a), state)


def test_restore_column_new_id_inserts_at_position(state: State) -> None:
    values = pa.table({RID: pa.array([2], pa.uint64()), "z": [1.25]})
    a = apply(state, RestoreColumn(40, "z", "Float32", 2, values))
    assert a.state.catalog.names() == ["price", "qty", "z", "region", "ok", "day", "ts"]
    assert a.state.frame.columns[3] == "z" and a.state.frame.schema["z"] == pl.Float32
    assert a.state.catalog.next_id == 41
    assert a.inverse == (DropColumn(40),)
    rejects(state, RestoreColumn(40, "price", "Float32", 0, values), ErrorCode.COLUMN_EXISTS)
    rejects(state, RestoreColumn(40, "z", "Float17", 0, values), ErrorCode.BAD_DTYPE)
    rejects(state, RestoreColumn(40, "z", "Float32", 0, pa.table({"z": [1.0]})), ErrorCode.BAD_OP)


def test_apply_all_returns_inverse_in_undo_order(state: State) -> None:
    ops: list[Op] = [
        AddColumn("t", "Float64", expr="price * 2"),
        SetCells((0,), "t", (1.0,)),
        RenameColumn("t", "u"),
        Delete(rows=(2,)),
    ]
    new, inverse = apply_all(state, ops)
    assert new.catalog.names()[-1] == "u"
    back, _ = apply_all(new, list(inverse))
    assert_same(back, state)


def test_unknown_op_type(state: State) -> None:
    with pytest.raises(OpError) as info:
        apply(state, object())  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.BAD_OP


# --------------------------------------------------------------------------- dtypes


def test_polars_dtype_and_dtype_name_round_trip() -> None:
    names = ["Int8", "UInt64", "Float32", "Boolean", "String", "Date", "Datetime", "Datetime[Europe/Paris]"]
    for name in names:
        assert dtype_name(polars_dtype(name)) == name
    assert polars_dtype("Datetime[UTC]") == pl.Datetime("us", "UTC")
    for bad in ["Decimal", "Datetime[Mars/Olympus]", "Datetime[../../etc/passwd]", "", "Utf8"]:
        with pytest.raises(OpError) as info:
            polars_dtype(bad)
        assert info.value.code == ErrorCode.BAD_DTYPE
    with pytest.raises(OpError) as info:
        polars_dtype("Int65")
    assert "Int64" in info.value.message and "Datetime[<tz>]" in info.value.message
    with pytest.raises(OpError):
        dtype_name(pl.Datetime("ns"))


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([1, 2.0, None], "Int64", [1, 2, None]),
        ([-128, 127], "Int8", [-128, 127]),
        ([2**64 - 1], "UInt64", [2**64 - 1]),
        ([1, 2.5], "Float64", [1.0, 2.5]),
        ([True, None], "Boolean", [True, None]),
        (["a", ""], "String", ["a", ""]),
        (["2024-01-02", dt.date(2024, 1, 3), None], "Date", [dt.date(2024, 1, 2), dt.date(2024, 1, 3), None]),
        (
            ["2024-01-02T03:04:05.000006", "2024-01-02 03:04", "2024-01-02", dt.date(2024, 1, 1)],
            "Datetime",
            [
                dt.datetime(2024, 1, 2, 3, 4, 5, 6),
                dt.datetime(2024, 1, 2, 3, 4),
                dt.datetime(2024, 1, 2),
                dt.datetime(2024, 1, 1),
            ],
        ),
        (
            [
                "2024-01-02T03:04:05Z",
                "2024-01-02T03:04:05+01:00",
                "2024-01-02T03:04:05",
                dt.datetime(2024, 1, 2, tzinfo=UTC),
            ],
            "Datetime[UTC]",
            [
                dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                dt.datetime(2024, 1, 2, 2, 4, 5, tzinfo=UTC),
                dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                dt.datetime(2024, 1, 2, tzinfo=UTC),
            ],
        ),
        ([None, None], "Date", [None, None]),
        ([], "String", []),
    ],
)
def test_coerce_accepts(values: list[Any], dtype: str, expected: list[Any]) -> None:
    s = coerce(values, dtype, what="column 'c'")
    assert s.dtype == polars_dtype(dtype)
    assert s.to_list() == expected


@pytest.mark.parametrize(
    ("values", "dtype", "position"),
    [
        ([1, 1.5], "Int64", 1),
        ([True], "Int64", 0),
        ([128], "Int8", 0),
        ([-1], "UInt8", 0),
        ([2**64], "UInt64", 0),
        ([float("nan")], "Int32", 0),
        (["1"], "Int64", 0),
        ([True], "Float64", 0),
        (["1.5"], "Float64", 0),
        ([1e300], "Float32", 0),
        ([10**400], "Float64", 0),
        ([1], "Boolean", 0),
        (["true"], "Boolean", 0),
        (["a", 5], "String", 1),
        ([1.5], "String", 0),
        ([dt.datetime(2024, 1, 1)], "Date", 0),
        (["2024-13-01"], "Date", 0),
        ([20240101], "Date", 0),
        (["2024-01-01T00:00:00+00:00"], "Datetime", 0),
        ([dt.datetime(2024, 1, 1, tzinfo=UTC)], "Datetime", 0),
        (["yesterday"], "Datetime[UTC]", 0),
    ],
)
def test_coerce_rejects(values: list[Any], dtype: str, position: int) -> None:
    with pytest.raises(OpError) as info:
        coerce(values, dtype, what="column 'c'")
    e = info.value
    assert e.code == ErrorCode.BAD_VALUE
    assert e.message.startswith(f"column 'c' is {dtype}; send")
    assert f"at position {position}" in e.message
    assert e.details["samples"][0]["position"] == position
    assert e.details["dtype"] == dtype


def test_coerce_message_and_samples() -> None:
    with pytest.raises(OpError) as info:
        coerce([5], "String", what="column 'region'")
    assert info.value.message == "column 'region' is String; send text: got 5 at position 0"
    with pytest.raises(OpError) as info:
        coerce(["a", *range(10)], "String", what="column 'region'")
    assert info.value.details["count"] == 10 and len(info.value.details["samples"]) == 5
    assert "and 9 more bad values" in info.value.message


def test_coerce_large_input_fast_paths() -> None:
    n = 100_000
    assert coerce(list(range(n)), "Int64", what="c").len() == n
    assert coerce([float(i) for i in range(n)], "Int32", what="c").dtype == pl.Int32
    times = [f"2024-01-01T00:00:{i % 60:02d}" for i in range(n)]
    assert coerce(times, "Datetime", what="c").null_count() == 0


# --------------------------------------------------------------------------- normalize_frame


def test_normalize_frame_maps_dtypes_and_assigns_ids() -> None:
    df = pl.DataFrame(
        {
            "cat": pl.Series(["a", "b"], dtype=pl.Categorical),
            "enum": pl.Series(["x", "y"], dtype=pl.Enum(["x", "y"])),
            "ns": pl.Series([dt.datetime(2024, 1, 1), None], dtype=pl.Datetime("ns", "Europe/Paris")),
            "ms": pl.Series([dt.datetime(2024, 1, 1), None], dtype=pl.Datetime("ms")),
            "dec": pl.Series([Decimal("1.25"), None], dtype=pl.Decimal(10, 2)),
            "nul": pl.Series([None, None], dtype=pl.Null),
            "i16": pl.Series([1, 2], dtype=pl.Int16),
        }
    )
    frame, catalog = normalize_frame(df)
    assert frame.columns == [RID, *df.columns]
    assert frame.get_column(RID).to_list() == [0, 1] and frame.schema[RID] == pl.UInt64
    assert [c.dtype for c in catalog.columns] == [
        "String", "String", "Datetime[Europe/Paris]", "Datetime", "Float64", "String", "Int16"
    ]  # fmt: skip
    assert [c.id for c in catalog.columns] == list(range(7)) and catalog.next_id == 7
    assert frame.get_column("dec").to_list() == [1.25, None]
    State(frame, catalog, 2)  # State-ready


def test_normalize_frame_rejections() -> None:
    with pytest.raises(OpError) as info:
        normalize_frame(pl.DataFrame({RID: [1], "a": [2]}))
    assert info.value.code == ErrorCode.RESERVED_NAME
    for bad in [
        pl.Series("tags", [[1, 2]]),
        pl.Series("blob", [b"x"]),
        pl.Series("span", [dt.timedelta(1)]),
        pl.Series("tod", [dt.time(1)]),
        pl.Series("rec", [{"a": 1}]),
    ]:
        with pytest.raises(OpError) as info:
            normalize_frame(pl.DataFrame([bad, pl.Series("ok", [1])]))
        assert info.value.code == ErrorCode.BAD_DTYPE
        assert f"column '{bad.name}'" in info.value.message
    empty, catalog = normalize_frame(pl.DataFrame())
    assert empty.columns == [RID] and catalog == Catalog((), 0)
