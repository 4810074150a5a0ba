"""diff_states against a brute-force row-by-row comparison, plus schema change detection."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from hypothesis import event, given, settings
from hypothesis import strategies as st

from protocol import AddColumn, CastColumn, Delete, DropColumn, Insert, Op, RenameColumn, SetCells
from server.ops import RID, Catalog, Column, OpError, State, apply, normalize_frame, polars_dtype
from server.storage.diff import CHANGED_SCHEMA, Diff, diff_states

DTYPES = ("Int64", "Int32", "Float64", "Float32", "String", "Boolean", "Date", "Datetime", "Datetime[UTC]")


def values_for(dtype: str) -> st.SearchStrategy[Any]:
    """Python values a column of ``dtype`` accepts (small ranges, so edits collide with old values)."""
    if dtype.startswith("Int"):
        v: st.SearchStrategy[Any] = st.integers(-3, 3)
    elif dtype.startswith("Float"):
        v = st.sampled_from([0.0, -0.0, 1.5, 2.0, -1.0, float("nan"), float("inf"), 1e20, 1e-7])
    elif dtype == "String":
        v = st.sampled_from(["", "a", "b", "1", "2.0", "true", "2024-01-02", "null"])
    elif dtype == "Boolean":
        v = st.booleans()
    elif dtype == "Date":
        v = st.dates(dt.date(2024, 1, 1), dt.date(2024, 1, 4))
    else:
        tz = dt.UTC if dtype == "Datetime[UTC]" else None
        v = st.datetimes(dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)).map(
            lambda x: x.replace(second=0, tzinfo=tz)
        )
    return st.one_of(st.none(), v)


@st.composite
def states(draw: st.DrawFn) -> State:
    n = draw(st.integers(0, 8))
    dtypes = draw(st.lists(st.sampled_from(DTYPES), min_size=0, max_size=4))
    cols = {
        f"c{i}": pl.Series(draw(st.lists(values_for(d), min_size=n, max_size=n)), dtype=polars_dtype(d))
        for i, d in enumerate(dtypes)
    }
    if not cols:  # rows without columns
        return State(pl.DataFrame({RID: pl.Series(range(n), dtype=pl.UInt64)}), Catalog((), 0), n)
    frame, catalog = normalize_frame(pl.DataFrame(cols))
    return State(frame, catalog, n)


def draw_op(data: st.DataObject, state: State, serial: int) -> Op:
    cols = state.catalog.columns
    rids = state.rids().tolist()
    kinds = ["add"]
    if rids and cols:
        kinds += ["set", "set", "set", "set"]
    if rids:
        kinds += ["delete"]
    if cols:
        kinds += ["insert", "rename", "drop", "cast", "cast"]
    kind = data.draw(st.sampled_from(kinds))
    if kind == "set":
        col = data.draw(st.sampled_from(cols))
        rows = data.draw(st.lists(st.sampled_from(rids), min_size=1, max_size=3, unique=True))
        vals = data.draw(st.lists(values_for(col.dtype), min_size=len(rows), max_size=len(rows)))
        return SetCells(tuple(rows), col.id, tuple(vals))
    if kind == "delete":
        return Delete(
            rows=tuple(data.draw(st.lists(st.sampled_from(rids), min_size=1, max_size=3, unique=True)))
        )
    if kind == "insert":
        k = data.draw(st.integers(1, 3))
        col = data.draw(st.sampled_from(cols))
        vals = data.draw(st.lists(values_for(col.dtype), min_size=k, max_size=k))
        return Insert(pl.DataFrame({col.name: pl.Series(vals, dtype=polars_dtype(col.dtype))}).to_arrow())
    if kind == "add":
        dtype = data.draw(st.sampled_from(DTYPES))
        return AddColumn(f"n{serial}", dtype, data.draw(values_for(dtype)))
    col = data.draw(st.sampled_from(cols))
    if kind == "rename":
        return RenameColumn(col.id, f"r{serial}")
    if kind == "drop":
        return DropColumn(col.id)
    return CastColumn(col.id, data.draw(st.sampled_from(DTYPES)), strict=False)


# --------------------------------------------------------------------------- brute force


def text(value: Any, dtype: str) -> str | None:
    """One value as text, the same way the diff renders it (a Polars cast to String)."""
    return pl.Series([value], dtype=polars_dtype(dtype)).cast(pl.String)[0]


def same(x: Any, y: Any) -> bool:
    if x is None or y is None:
        return x is None and y is None
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return bool(x == y)


def rows_of(state: State) -> dict[int, dict[int, Any]]:
    ids = [c.id for c in state.catalog.columns]
    return {int(r[0]): dict(zip(ids, r[1:], strict=True)) for r in state.frame.iter_rows()}


def brute_force(a: State, b: State) -> dict[str, Any]:
    ra, rb = rows_of(a), rows_of(b)
    ca: dict[int, Column] = {c.id: c for c in a.catalog.columns}
    cells = []
    for rid in sorted(set(ra) & set(rb)):
        for c in b.catalog.columns:
            o = ca.get(c.id)
            if o is None:
                continue
            va, vb = ra[rid][c.id], rb[rid][c.id]
            ta, tb = text(va, o.dtype), text(vb, c.dtype)
            changed = not same(va, vb) if o.dtype == c.dtype else ta != tb
            if changed:
                cells.append({"rid": rid, "column_id": c.id, "column": c.name, "old": ta, "new": tb})
    return {
        "added": sorted(set(rb) - set(ra)),
        "deleted": sorted(set(ra) - set(rb)),
        "changed": cells,
    }


def parse(t: str, dtype: str) -> Any:
    if dtype.startswith(("Int", "UInt")):
        return int(t)
    if dtype.startswith("Float"):
        return float(t)
    if dtype == "Boolean":
        return {"true": True, "false": False}[t]
    if dtype == "Date":
        return dt.date.fromisoformat(t)
    if dtype.startswith("Datetime"):
        return dt.datetime.fromisoformat(t)
    return t


def check_texts_parse_back(d: Diff, a: State, b: State) -> None:
    """Rendered texts mean the values: each parses back to the value it renders."""
    sides = [({c.id: c.dtype for c in s.catalog.columns}, rows_of(s)) for s in (a, b)]
    for cell in d.changed.to_pylist():
        for key, (dtypes, rows) in zip(("old", "new"), sides, strict=True):
            t, value = cell[key], rows[cell["rid"]][cell["column_id"]]
            assert (t is None) == (value is None)
            if t is not None:
                back = parse(t, dtypes[cell["column_id"]])
                if isinstance(value, float) and dtypes[cell["column_id"]] == "Float32":
                    back = float(np.float32(back))
                assert same(back, value), (t, value)


@settings(max_examples=250, deadline=None)
@given(a=states(), data=st.data())
def test_diff_matches_brute_force(a: State, data: st.DataObject) -> None:
    b = a
    for i in range(data.draw(st.integers(0, 6))):
        try:
            b = apply(b, draw_op(data, b, i)).state
        except OpError:
            pass
    d = diff_states(a, b)
    want = brute_force(a, b)
    event("cells changed" if want["changed"] else "no cell changed")
    event("rows added/deleted" if want["added"] or want["deleted"] else "same rows")
    for change in sorted({s["change"] for s in d.schema}):
        event(f"schema: {change}")
    assert d.added.dtype == np.uint64 and d.deleted.dtype == np.uint64
    assert d.added.tolist() == want["added"]
    assert d.deleted.tolist() == want["deleted"]
    assert d.changed.schema == CHANGED_SCHEMA
    assert d.changed.to_pylist() == want["changed"]
    check_texts_parse_back(d, a, b)

    ids_a = {c.id: c for c in a.catalog.columns}
    ids_b = {c.id: c for c in b.catalog.columns}
    kinds = {(s["change"], s["id"]) for s in d.schema}
    assert kinds == (
        {("added", i) for i in ids_b.keys() - ids_a.keys()}
        | {("dropped", i) for i in ids_a.keys() - ids_b.keys()}
        | {("renamed", i) for i in ids_a.keys() & ids_b.keys() if ids_a[i].name != ids_b[i].name}
        | {("recast", i) for i in ids_a.keys() & ids_b.keys() if ids_a[i].dtype != ids_b[i].dtype}
    )
    s = d.summary()
    assert (s["added"], s["deleted"], s["changed_cells"]) == (
        len(want["added"]),
        len(want["deleted"]),
        len(want["changed"]),
    )
    assert s["changed_rows"] == len({c["rid"] for c in want["changed"]})

    # The reverse diff mirrors this one.
    r = diff_states(b, a)
    assert r.added.tolist() == want["deleted"] and r.deleted.tolist() == want["added"]
    assert r.changed.num_rows == d.changed.num_rows
    assert diff_states(b, b).summary()["changed_cells"] == 0


# --------------------------------------------------------------------------- examples


def sample() -> State:
    frame, catalog = normalize_frame(
        pl.DataFrame(
            {
                "qty": pl.Series([1, 2, None, 4], dtype=pl.Int64),
                "name": ["a", None, "c", "d"],
                "price": [1.5, 2.0, None, float("nan")],
                "when": pl.Series([dt.date(2024, 1, d) for d in (1, 2, 3, 4)], dtype=pl.Date),
            }
        )
    )
    return State(frame, catalog, frame.height)


def run(state: State, *ops: Op) -> State:
    for op in ops:
        state = apply(state, op).state
    return state


def test_schema_changes_are_reported() -> None:
    a = sample()
    b = run(
        a,
        RenameColumn("name", "label"),
        DropColumn("when"),
        AddColumn("flag", "Boolean", True),
        CastColumn("qty", "Float64"),
        RenameColumn("qty", "amount"),
        CastColumn("price", "String"),
    )
    d = diff_states(a, b)
    assert d.schema == [
        {"change": "renamed", "id": 0, "name": "amount", "old_name": "qty"},
        {"change": "recast", "id": 0, "name": "amount", "old_dtype": "Int64", "dtype": "Float64"},
        {"change": "renamed", "id": 1, "name": "label", "old_name": "name"},
        {"change": "recast", "id": 2, "name": "price", "old_dtype": "Float64", "dtype": "String"},
        {"change": "added", "id": 4, "name": "flag", "dtype": "Boolean"},
        {"change": "dropped", "id": 3, "name": "when", "dtype": "Date"},
    ]
    # Int64 -> Float64 changes each value's text (1 -> 1.0); Float64 -> String keeps it.
    assert d.changed.to_pylist() == [
        {"rid": r, "column_id": 0, "column": "amount", "old": o, "new": n}
        for r, o, n in ((0, "1", "1.0"), (1, "2", "2.0"), (3, "4", "4.0"))
    ]
    assert d.added.size == d.deleted.size == 0
    tables = d.to_arrow()
    assert set(tables) == {"added", "deleted", "changed", "schema"}
    assert tables["schema"].column("change").to_pylist() == [s["change"] for s in d.schema]
    assert tables["schema"].column("old_name").to_pylist() == ["qty", None, "name", None, None, None]


def test_rows_and_cells() -> None:
    a = sample()
    b = run(
        a,
        SetCells((0, 2), "qty", (10, 7)),
        SetCells((3,), "price", (float("nan"),)),  # NaN -> NaN is no change
        SetCells((1,), "name", (None,)),  # null -> null is no change
        SetCells((2,), "name", (None,)),
        Delete(rows=(1,)),
        Insert(pl.DataFrame({"name": ["new"]}).to_arrow()),
    )
    d = diff_states(a, b)
    assert d.added.tolist() == [4] and d.deleted.tolist() == [1]
    assert d.changed.to_pylist() == [
        {"rid": 0, "column_id": 0, "column": "qty", "old": "1", "new": "10"},
        {"rid": 2, "column_id": 0, "column": "qty", "old": None, "new": "7"},
        {"rid": 2, "column_id": 1, "column": "name", "old": "c", "new": None},
    ]
    j = d.to_json()
    assert j["added"] == [4] and j["deleted"] == [1] and j["changed"] == d.changed.to_pylist()
    assert j["summary"] == {
        "added": 1,
        "deleted": 1,
        "changed_cells": 3,
        "changed_rows": 2,
        "changed_by_column": {"qty": 2, "name": 1},
        "schema": 0,
    }
    assert d.to_arrow()["added"].column("rid").type == pa.uint64()


def test_identical_and_empty_states() -> None:
    a = sample()
    d = diff_states(a, a)
    assert d.added.size == d.deleted.size == d.changed.num_rows == 0 and d.schema == []
    empty = run(a, Delete(rows=(0, 1, 2, 3)))
    d = diff_states(a, empty)
    assert d.deleted.tolist() == [0, 1, 2, 3] and d.changed.num_rows == 0
    assert diff_states(empty, a).added.tolist() == [0, 1, 2, 3]
