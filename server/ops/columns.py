"""Column ops: add, drop, rename, cast, and the internal ``restore_column``.

Columns keep their server-assigned id for life; inverses name them by id.
``drop_column`` and ``cast_column`` are undone by ``restore_column``, which
carries the old values as an Arrow table of ``_rid`` plus the column.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from protocol import AddColumn, CastColumn, DropColumn, ErrorCode, RenameColumn, RestoreColumn

from .dtypes import (
    DTYPE_NAMES,
    arrow_column,
    check_name,
    coerce,
    coerce_series,
    dtype_family,
    null_series,
    parse_temporal,
    polars_dtype,
    sample_value,
    storable_dtype,
)
from .exprcost import IN_PROCESS, ExprCost, evaluate_expr
from .sandbox import EXPR_FAILURES
from .state import RID, Applied, Catalog, Column, Effect, OpError, State

__all__ = [
    "cast_values",
    "apply_add_column",
    "apply_drop_column",
    "apply_rename_column",
    "apply_cast_column",
    "apply_restore_column",
]

_EMPTY = np.empty(0, dtype=np.int64)


def _new_nulls(src: pl.Series, out: pl.Series) -> np.ndarray:
    return np.flatnonzero((out.is_null() & src.is_not_null()).to_numpy())


def cast_values(s: pl.Series, dtype: str) -> tuple[pl.Series, np.ndarray]:
    """Cast ``s`` to a dtype name: (values, positions that could not convert, now null).

    Polars cast semantics (floats truncate toward zero into ints; a zone-less
    Datetime is read as UTC when a zone is added), plus: text parses as ISO
    8601 into Date/Datetime and as true/false into Boolean; out-of-range
    numbers, NaN into ints and finite floats that overflow Float32 fail.

    Raises:
        OpError: ``bad_dtype``; ``cast_failed`` for a cast Polars cannot do.
    """
    target = polars_dtype(dtype)
    fam = dtype_family(dtype)
    if s.dtype == target:
        return s, _EMPTY
    is_text = s.dtype == pl.String or isinstance(s.dtype, (pl.Categorical, pl.Enum))
    if is_text and fam in ("date", "datetime"):
        return parse_temporal(s, dtype)
    if is_text and fam == "bool":
        low = s.cast(pl.String).str.strip_chars().str.to_lowercase()
        out = low.replace_strict({"true": True, "false": False}, default=None, return_dtype=pl.Boolean)
        return out, _new_nulls(s, out)
    try:
        out = s.cast(target, strict=False)
    except EXPR_FAILURES as e:  # Polars has no such cast
        raise OpError(
            ErrorCode.CAST_FAILED,
            f"cannot convert {s.dtype} values to {dtype} ({str(e).strip().splitlines()[0][:200]})",
            dtype=dtype,
        ) from None
    bad = _new_nulls(s, out)
    if dtype == "Float32" and s.dtype.is_numeric():
        over = np.flatnonzero((s.cast(pl.Float64).is_finite() & ~out.is_finite()).fill_null(False).to_numpy())
        if len(over):
            out = _null_at(out, over)
            bad = np.union1d(bad, over)
    return out, bad


def _null_at(s: pl.Series, pos: np.ndarray) -> pl.Series:
    out = s.clone()
    out.scatter(pos, pl.Series([None] * len(pos), dtype=s.dtype))
    return out


def _cast_samples(state: State, s: pl.Series, bad: np.ndarray) -> list[dict[str, object]]:
    rids = state.rids()
    return [{"rid": int(rids[p]), "value": sample_value(s[int(p)])} for p in bad[:5]]


def _values_table(state: State, name: str) -> pa.Table:
    return state.frame.select(RID, name).to_arrow()


def _with_column(catalog: Catalog, col: Column) -> Catalog:
    return Catalog(tuple(col if c.id == col.id else c for c in catalog.columns), catalog.next_id)


def _name_free(catalog: Catalog, name: str, *, own_id: int | None = None) -> None:
    for c in catalog.columns:
        if c.name == name and c.id != own_id:
            raise OpError(
                ErrorCode.COLUMN_EXISTS,
                f"a column named '{name}' already exists (id {c.id}); choose another name",
                column=name,
                id=c.id,
            )


def _default_dtype(value: Any) -> str:
    """The dtype a default implies when add_column has no dtype."""
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Int64" if value < 2**63 else "UInt64"
    if isinstance(value, float):
        return "Float64"
    if isinstance(value, str):
        return "String"
    if isinstance(value, dt.datetime):
        return "Datetime" if value.tzinfo is None else "Datetime[UTC]"
    if isinstance(value, dt.date):
        return "Date"
    raise OpError(
        ErrorCode.BAD_VALUE,
        f"the default {value!r} is not a null, boolean, number or string; send one, or pass a dtype",
    )


def apply_add_column(state: State, op: AddColumn, exprs: ExprCost = IN_PROCESS) -> Applied:
    """``add_column``: append a column filled with ``default`` (or null) or computed by ``expr``.

    Without a dtype, the dtype is the expression's (as :func:`storable_dtype`
    maps it) or the default's (bool Boolean, int Int64, float Float64, str
    String). ``exprs`` evaluates the expression and bounds its cost
    (:mod:`.exprcost`).

    Raises:
        OpError: ``bad_op`` (bad name, both default and expr, nothing to
            give the dtype); ``reserved_name``; ``column_exists``;
            ``bad_dtype``; ``bad_value`` (default); ``bad_expr``/
            ``no_such_column`` (expr); ``too_expensive`` (expr over a cost
            limit); ``cast_failed`` when the expression's values do not fit
            the dtype.
    """
    name = check_name(op.name)
    _name_free(state.catalog, name)
    if op.dtype is not None:
        polars_dtype(op.dtype)
    if op.expr is not None and op.default is not None:
        raise OpError(ErrorCode.BAD_OP, "add_column takes a 'default' or an 'expr', not both")
    n = state.frame.height
    if op.expr is not None:
        out = evaluate_expr(state, op.expr, exprs).rename(name)
        dtype = op.dtype or storable_dtype(out.dtype)
        if dtype is None:
            raise OpError(
                ErrorCode.BAD_DTYPE,
                f"{op.expr!r} gives {out.dtype} values, which coframe cannot store;"
                f" pass a dtype ({', '.join(DTYPE_NAMES)}) or change the expression",
                dtype=str(out.dtype),
            )
        values, bad = cast_values(out, dtype)
        if len(bad):
            samples = _cast_samples(state, out, bad)
            raise OpError(
                ErrorCode.CAST_FAILED,
                f"{len(bad)} value{'s' if len(bad) > 1 else ''} of {op.expr!r} cannot be stored as"
                f" {dtype} (first at rid {samples[0]['rid']}: {samples[0]['value']!r});"
                " convert them in the expression or choose another dtype",
                count=int(len(bad)),
                samples=samples,
            )
    elif op.default is not None:
        dtype = op.dtype or _default_dtype(op.default)
        one = coerce([op.default], dtype, what=f"the default for column '{name}'")
        values = one.gather(np.zeros(n, dtype=np.int64))
    elif op.dtype is not None:
        dtype = op.dtype
        values = null_series(dtype, n)
    else:
        raise OpError(
            ErrorCode.BAD_OP, "add_column needs a 'dtype', or an 'expr' or a 'default' that gives one"
        )
    col = Column(state.catalog.next_id, name, dtype)
    catalog = Catalog((*state.catalog.columns, col), col.id + 1)
    frame = state.frame.with_columns(values.rename(name))
    effect = Effect(full={col.id}, schema_changed=True)
    return Applied(State(frame, catalog, state.next_rid), (DropColumn(col.id),), effect)


def apply_drop_column(state: State, op: DropColumn) -> Applied:
    """``drop_column``: the inverse restores it, values and position included.

    Raises:
        OpError: ``no_such_column``.
    """
    col = state.catalog.resolve(op.col)
    pos = state.catalog.position(col.id)
    inverse = RestoreColumn(col.id, col.name, col.dtype, pos, _values_table(state, col.name))
    catalog = Catalog(tuple(c for c in state.catalog.columns if c.id != col.id), state.catalog.next_id)
    new = State(state.frame.drop(col.name), catalog, state.next_rid)
    return Applied(new, (inverse,), Effect(schema_changed=True))


def apply_rename_column(state: State, op: RenameColumn) -> Applied:
    """``rename_column`` (metadata only); renaming to the same name is a no-op.

    Raises:
        OpError: ``no_such_column``; ``bad_op``; ``reserved_name``; ``column_exists``.
    """
    col = state.catalog.resolve(op.col)
    name = check_name(op.name)
    inverse = RenameColumn(col.id, col.name)
    if name == col.name:
        return Applied(state, (inverse,), Effect())
    _name_free(state.catalog, name)
    catalog = _with_column(state.catalog, Column(col.id, name, col.dtype))
    new = State(state.frame.rename({col.name: name}), catalog, state.next_rid)
    return Applied(new, (inverse,), Effect(schema_changed=True))


def apply_cast_column(state: State, op: CastColumn) -> Applied:
    """``cast_column``: change a column's dtype; strict rejects values that cannot convert.

    Raises:
        OpError: ``no_such_column``; ``bad_dtype``; ``cast_failed`` (strict,
            with the count and up to 5 ``{rid, value}`` samples, or a cast
            Polars cannot do).
    """
    col = state.catalog.resolve(op.col)
    polars_dtype(op.dtype)
    s = state.frame.get_column(col.name)
    values, bad = cast_values(s, op.dtype)
    if len(bad) and op.strict:
        samples = _cast_samples(state, s, bad)
        raise OpError(
            ErrorCode.CAST_FAILED,
            f"{len(bad)} value{'s' if len(bad) > 1 else ''} in column '{col.name}' cannot be cast"
            f" from {col.dtype} to {op.dtype} (first at rid {samples[0]['rid']}:"
            f" {samples[0]['value']!r}); fix them, or cast with strict=false to turn them into null",
            count=int(len(bad)),
            samples=samples,
        )
    pos = state.catalog.position(col.id)
    inverse = RestoreColumn(col.id, col.name, col.dtype, pos, _values_table(state, col.name))
    catalog = _with_column(state.catalog, Column(col.id, col.name, op.dtype))
    new = State(state.frame.with_columns(values.rename(col.name)), catalog, state.next_rid)
    return Applied(new, (inverse,), Effect(full={col.id}, schema_changed=True))


def _aligned_values(state: State, op: RestoreColumn) -> pl.Series:
    """The restored column's values in frame row order (rids it lacks are null)."""
    table = op.values
    others = [n for n in table.column_names if n != RID]
    if RID not in table.column_names or not others:
        raise OpError(ErrorCode.BAD_OP, f"restore_column values need '{RID}' and the column")
    value_name = op.name if op.name in others else others[0]
    if len(others) > 1 and op.name not in others:
        raise OpError(ErrorCode.BAD_OP, f"restore_column values have no column '{op.name}'")
    rid_s = coerce_series(arrow_column(table, RID), "UInt64", what=f"column '{RID}'")
    vals = coerce_series(arrow_column(table, value_name), op.dtype, what=f"column '{op.name}'")
    if rid_s.n_unique() != len(rid_s) or rid_s.null_count():
        raise OpError(ErrorCode.BAD_OP, "restore_column values have a null or repeated rid")
    frame_rids = state.frame.get_column(RID)
    if rid_s.equals(frame_rids):
        return vals.rename(op.name)
    right = pl.DataFrame([rid_s.rename(RID), vals.rename("__v")])
    joined = state.frame.select(RID).join(right, on=RID, how="left", maintain_order="left")
    return joined.get_column("__v").rename(op.name)


def apply_restore_column(state: State, op: RestoreColumn) -> Applied:
    """``restore_column`` (internal, undo of drop/cast): put a column back as it was.

    If the id exists its name, dtype and values are replaced in place;
    otherwise the column is inserted at ``position`` with that id.

    Raises:
        OpError: ``bad_dtype``; ``bad_op``; ``reserved_name``;
            ``column_exists``; ``bad_value``.
    """
    polars_dtype(op.dtype)
    name = check_name(op.name)
    values = _aligned_values(state, op)
    current = next((c for c in state.catalog.columns if c.id == op.id), None)
    _name_free(state.catalog, name, own_id=op.id)
    col = Column(op.id, name, op.dtype)
    if current is not None:
        pos = state.catalog.position(op.id)
        inverse: RestoreColumn | DropColumn = RestoreColumn(
            current.id, current.name, current.dtype, pos, _values_table(state, current.name)
        )
        frame = state.frame.with_columns(values.rename(current.name)).rename({current.name: name})
        catalog = _with_column(state.catalog, col)
    else:
        pos = min(max(op.position, 0), len(state.catalog.columns))
        inverse = DropColumn(op.id)
        frame = state.frame.clone()
        frame.insert_column(pos + 1, values)
        cols = list(state.catalog.columns)
        cols.insert(pos, col)
        catalog = Catalog(tuple(cols), max(state.catalog.next_id, op.id + 1))
    new = State(frame, catalog, state.next_rid)
    return Applied(new, (inverse,), Effect(full={op.id}, schema_changed=True))
