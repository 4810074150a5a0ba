"""Property tests: for every op, applying it and then its inverse restores the state exactly.

Frames are generated with several dtypes and nulls; ops are drawn against the
frame they apply to (mostly valid, sometimes not: a rejected op must leave
the state untouched). Inverse ops also travel through ``to_wire`` /
``op_from_wire`` first, so undo entries are known to be wire-safe.
"""

from __future__ import annotations

import datetime as dt
import os
import string
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from protocol import (
    FILL_STRATEGIES,
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
    op_from_wire,
)
from server.ops import RID, Applied, Column, OpError, State, apply, normalize_frame, polars_dtype, to_scalars
from server.ops.dtypes import dtype_family

# Per-kind tests share the budget with the sequence test, which mixes every
# kind; together they stay under ~20 s on a 2-core machine. Set
# COFRAME_HYPOTHESIS_SCALE=10 (say) for a longer hunt.
SCALE = max(1, int(os.environ.get("COFRAME_HYPOTHESIS_SCALE", "1")))
SETTINGS = settings(
    max_examples=35 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEQUENCE_SETTINGS = settings(
    max_examples=80 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

UTC = dt.UTC
COLUMNS: dict[str, str] = {
    "i64": "Int64",
    "i32": "Int32",
    "f": "Float64",
    "f32": "Float32",
    "s": "String",
    "b": "Boolean",
    "d": "Date",
    "t": "Datetime",
    "tz": "Datetime[UTC]",
}
CAST_TARGETS = [
    "Int8", "Int32", "Int64", "UInt16", "UInt64", "Float32", "Float64",
    "Boolean", "String", "Date", "Datetime", "Datetime[UTC]", "Datetime[Asia/Tokyo]",
]  # fmt: skip
NAMES = st.text(alphabet=string.ascii_letters + string.digits + " _", min_size=1, max_size=8)


def values_of(dtype: str) -> st.SearchStrategy[Any]:
    """Non-null Python values of a dtype name."""
    fam = dtype_family(dtype)
    if fam == "int":
        lo, hi = {
            "Int8": (-(2**7), 2**7 - 1),
            "Int32": (-(2**31), 2**31 - 1),
            "Int64": (-(2**63), 2**63 - 1),
            "UInt16": (0, 2**16 - 1),
            "UInt64": (0, 2**64 - 1),
        }[dtype]
        return st.integers(lo, hi)
    if fam == "float":
        return st.floats(width=32 if dtype == "Float32" else 64)
    if fam == "bool":
        return st.booleans()
    if fam == "str":
        return st.text(max_size=6)
    if fam == "date":
        return st.dates()
    if dtype == "Datetime":
        return st.datetimes()
    return st.datetimes(timezones=st.just(UTC))


def maybe_null(dtype: str) -> st.SearchStrategy[Any]:
    return st.none() | values_of(dtype)


def wire_form(v: Any) -> Any:
    """How a value arrives in JSON: temporal values as ISO 8601 strings."""
    return v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v


@st.composite
def states(draw: st.DrawFn) -> State:
    n = draw(st.integers(0, 6))
    names = draw(st.permutations(list(COLUMNS)))
    data = {
        name: pl.Series(
            name,
            draw(st.lists(maybe_null(COLUMNS[name]), min_size=n, max_size=n)),
            dtype=polars_dtype(COLUMNS[name]),
        )
        for name in names
    }
    frame, catalog = normalize_frame(pl.DataFrame(list(data.values())))
    rids = sorted(draw(st.lists(st.integers(0, 60), min_size=n, max_size=n, unique=True)))
    frame = frame.with_columns(pl.Series(RID, rids, dtype=pl.UInt64))
    next_rid = (rids[-1] + 1 if rids else 0) + draw(st.integers(0, 3))
    return State(frame, catalog, next_rid)


def pick_rids(draw: st.DrawFn, state: State, *, min_size: int = 0) -> list[int]:
    rids = state.frame.get_column(RID).to_list()
    if not rids:
        return []
    chosen = draw(st.lists(st.sampled_from(rids), unique=True, min_size=min(min_size, len(rids))))
    return chosen


def pick_col(draw: st.DrawFn, state: State) -> Column:
    return draw(st.sampled_from(state.catalog.columns))


def ref(draw: st.DrawFn, col: Column) -> int | str:
    return draw(st.sampled_from([col.id, col.name]))


def new_name(state: State) -> st.SearchStrategy[str]:
    """Mostly fresh names, sometimes a taken one (which must be rejected)."""
    taken = st.sampled_from(state.catalog.names()) if state.catalog.columns else NAMES
    return st.one_of(NAMES, NAMES, NAMES, taken)


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- op generators


def gen_set(draw: st.DrawFn, state: State) -> Op:
    col = pick_col(draw, state)
    rids = pick_rids(draw, state)
    values = [draw(maybe_null(col.dtype)) for _ in rids]
    if draw(st.booleans()):
        values = [wire_form(v) for v in values]
    return SetCells(tuple(rids), ref(draw, col), tuple(values))


def gen_insert(draw: st.DrawFn, state: State) -> Op:
    k = draw(st.integers(1, 4))
    cols = draw(st.lists(st.sampled_from(state.catalog.columns), unique=True, min_size=1))
    if draw(st.booleans()):  # a typed Arrow batch
        series = [
            pl.Series(c.name, [draw(maybe_null(c.dtype)) for _ in range(k)], dtype=polars_dtype(c.dtype))
            for c in cols
        ]
        return Insert(pl.DataFrame(series).to_arrow())
    rows = [{c.name: wire_form(draw(maybe_null(c.dtype))) for c in cols} for _ in range(k)]
    return Insert(pa.Table.from_pylist(rows))


def gen_delete_rids(draw: st.DrawFn, state: State) -> Op:
    return Delete(rows=tuple(pick_rids(draw, state)))


def _predicate(draw: st.DrawFn, col: Column) -> str:
    q = quoted(col.name)
    fam = dtype_family(col.dtype)
    options = {
        "int": [f"{q} > 0", f"{q} % 2 = 0"],
        "float": [f"{q} < 0.5", f"{q} IS NULL"],
        "str": [f"{q} IS NULL", f"length({q}) > 2", f"{q} LIKE 'a%'"],
        "bool": [q, f"NOT {q}"],
        "date": [f"{q} > date '2000-01-01'"],
        "datetime": [f"{q} IS NOT NULL"],
    }[fam]
    return draw(st.sampled_from([*options, "true", "false", f"{quoted(RID)} > 20"]))


def gen_delete_where(draw: st.DrawFn, state: State) -> Op:
    return Delete(where=_predicate(draw, pick_col(draw, state)))


def gen_add_default(draw: st.DrawFn, state: State) -> Op:
    dtype: str | None = draw(st.sampled_from(CAST_TARGETS))
    default = draw(maybe_null(dtype))
    name = draw(new_name(state))
    if default is not None and draw(st.booleans()):
        dtype = None  # inferred from the default
    return AddColumn(name, dtype, default=wire_form(default) if draw(st.booleans()) else default)


def gen_add_expr(draw: st.DrawFn, state: State) -> Op:
    col = pick_col(draw, state)
    q = quoted(col.name)
    fam = dtype_family(col.dtype)
    options = {
        "int": [(f"{q} / 2", "Float64"), (f"coalesce({q}, 0)", col.dtype), (q, "Int8")],
        "float": [(f"{q} * 2", "Float64"), (q, "Int64")],
        "str": [(f"upper({q})", "String"), (q, "Int64"), (f"{q} || 'x'", "String")],
        "bool": [(f"CASE WHEN {q} THEN 1 ELSE 0 END", "Int8"), (f"NOT {q}", "Boolean")],
        "date": [(q, "Datetime"), (q, "String")],
        "datetime": [(q, "Date"), (q, "Datetime[UTC]")],
    }[fam]
    expr, dtype = draw(st.sampled_from([*options, ("1", "Int32"), ("'x'", "String")]))
    return AddColumn(draw(NAMES), draw(st.sampled_from([dtype, None])), expr=expr)


def gen_drop(draw: st.DrawFn, state: State) -> Op:
    return DropColumn(ref(draw, pick_col(draw, state)))


def gen_rename(draw: st.DrawFn, state: State) -> Op:
    col = pick_col(draw, state)
    return RenameColumn(ref(draw, col), draw(new_name(state)))


def gen_cast(strict: bool) -> Callable[[st.DrawFn, State], Op]:
    def gen(draw: st.DrawFn, state: State) -> Op:
        col = pick_col(draw, state)
        return CastColumn(ref(draw, col), draw(st.sampled_from(CAST_TARGETS)), strict=strict)

    return gen


def gen_fill(strategy: str | None) -> Callable[[st.DrawFn, State], Op]:
    def gen(draw: st.DrawFn, state: State) -> Op:
        col = pick_col(draw, state)
        if strategy is None:
            value = draw(values_of(col.dtype))
            return FillNull(ref(draw, col), value=wire_form(value) if draw(st.booleans()) else value)
        return FillNull(ref(draw, col), strategy=strategy)

    return gen


GENERATORS: dict[str, Callable[[st.DrawFn, State], Op]] = {
    "set": gen_set,
    "insert": gen_insert,
    "delete_rids": gen_delete_rids,
    "delete_where": gen_delete_where,
    "add_column_default": gen_add_default,
    "add_column_expr": gen_add_expr,
    "drop_column": gen_drop,
    "rename_column": gen_rename,
    "cast_strict": gen_cast(True),
    "cast_lenient": gen_cast(False),
    "fill_value": gen_fill(None),
    **{f"fill_{s}": gen_fill(s) for s in FILL_STRATEGIES},
}


# --------------------------------------------------------------------------- checks


def assert_state_equal(got: State, want: State) -> None:
    assert_frame_equal(got.frame, want.frame, check_dtypes=True, check_exact=True)
    assert got.catalog.columns == want.catalog.columns


def assert_invariants(state: State) -> None:
    frame = state.frame
    assert frame.columns == [RID, *state.catalog.names()]
    assert frame.schema[RID] == pl.UInt64
    rids = frame.get_column(RID).to_numpy()
    assert (np.diff(rids.astype(np.int64)) > 0).all()
    assert not len(rids) or int(rids[-1]) < state.next_rid
    for c in state.catalog.columns:
        assert frame.schema[c.name] == polars_dtype(c.dtype), c
    ids = [c.id for c in state.catalog.columns]
    assert len(set(ids)) == len(ids) and all(i < state.catalog.next_id for i in ids)


def assert_effect(applied: Applied, before: State) -> None:
    """The effect names exactly what the room must send: rids that exist where they should."""
    old = set(before.frame.get_column(RID).to_list())
    new = set(applied.state.frame.get_column(RID).to_list())
    e = applied.effect
    for arr in (*e.cells.values(), e.inserted, e.deleted):
        assert arr.dtype == np.uint64
    assert set(e.inserted.tolist()) <= new - old
    assert set(e.deleted.tolist()) == old - new
    assert len(new - old) == len(e.inserted)
    ids = {c.id for c in applied.state.catalog.columns}
    for cid, rids in e.cells.items():
        assert cid in ids and set(rids.tolist()) <= new
    assert e.full <= ids
    if applied.state.catalog.columns != before.catalog.columns:
        assert e.schema_changed


def via_wire(op: Op) -> Op:
    return op_from_wire(op.to_wire(), "op", internal=True)


def roundtrip(state: State, op: Op) -> State | None:
    """Apply ``op`` then its inverse; return the applied state (None if rejected)."""
    snapshot = state.frame.clone()
    try:
        applied = apply(state, op)
    except OpError as e:
        assert e.code in ErrorCode.ALL and e.message
        assert_frame_equal(state.frame, snapshot)
        return None
    assert_invariants(applied.state)
    assert_effect(applied, state)
    back = applied.state
    for inv in applied.inverse:
        back = apply(back, via_wire(inv)).state
    assert_state_equal(back, state)
    assert_frame_equal(state.frame, snapshot)  # the input was not mutated
    return applied.state


@pytest.mark.parametrize("kind", list(GENERATORS))
@SETTINGS
@given(state=states(), data=st.data())
def test_apply_then_inverse_restores(kind: str, state: State, data: st.DataObject) -> None:
    roundtrip(state, GENERATORS[kind](data.draw, state))


@SETTINGS
@given(state=states(), data=st.data())
def test_restore_rows_then_inverse(state: State, data: st.DataObject) -> None:
    rids = pick_rids(data.draw, state, min_size=1)
    deleted = apply(state, Delete(rows=tuple(rids)))
    (restore,) = deleted.inverse
    assert isinstance(restore, RestoreRows)
    restored = roundtrip(deleted.state, restore)
    assert restored is not None
    assert_state_equal(restored, state)


@SETTINGS
@given(state=states(), data=st.data())
def test_restore_column_new_id_then_inverse(state: State, data: st.DataObject) -> None:
    col = pick_col(data.draw, state)
    dropped = apply(state, DropColumn(col.id))
    (restore,) = dropped.inverse
    assert isinstance(restore, RestoreColumn)
    restored = roundtrip(dropped.state, restore)
    assert restored is not None
    assert_state_equal(restored, state)


@SETTINGS
@given(state=states(), data=st.data())
def test_restore_column_existing_id_then_inverse(state: State, data: st.DataObject) -> None:
    col = pick_col(data.draw, state)
    dtype = data.draw(st.sampled_from(CAST_TARGETS))
    rids = pick_rids(data.draw, state)  # a subset: the other rows become null
    values = [data.draw(maybe_null(dtype)) for _ in rids]
    table = pl.DataFrame(
        [pl.Series(RID, rids, dtype=pl.UInt64), pl.Series("v", values, dtype=polars_dtype(dtype))]
    ).to_arrow()
    name = data.draw(NAMES)
    op = RestoreColumn(col.id, name, dtype, 0, table)
    after = roundtrip(state, op)
    if after is not None:
        assert after.catalog.position(col.id) == state.catalog.position(col.id)
        got = after.frame.select(RID, pl.col(name).alias("v")).filter(pl.col(RID).is_in(rids))
        want = pl.DataFrame(table).sort(RID)
        assert_frame_equal(got, want)


@SEQUENCE_SETTINGS
@given(state=states(), data=st.data())
def test_random_sequence_then_inverses_in_reverse(state: State, data: st.DataObject) -> None:
    start = state
    undo: list[tuple[Op, ...]] = []
    kinds = list(GENERATORS)
    for _ in range(data.draw(st.integers(1, 8))):
        if not state.catalog.columns:
            op: Op = AddColumn("x", "Int64", default=1)
        else:
            op = GENERATORS[data.draw(st.sampled_from(kinds))](data.draw, state)
        try:
            applied = apply(state, op)
        except OpError:
            continue
        assert_invariants(applied.state)
        undo.append(applied.inverse)
        state = applied.state
    for inverse in reversed(undo):
        for inv in inverse:
            state = apply(state, via_wire(inv)).state
    assert_state_equal(state, start)


def test_to_scalars_roundtrip_through_coerce() -> None:
    """read_cells/to_scalars output is what set accepts back, exactly (inverse of set relies on it)."""
    from server.ops import coerce

    s = pl.Series(
        [
            dt.datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            None,
            dt.datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC),
        ],
        dtype=pl.Datetime("us", "Asia/Tokyo"),
    )
    assert coerce(to_scalars(s), "Datetime[Asia/Tokyo]", what="c").equals(s.rename(""))
