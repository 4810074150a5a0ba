"""Row ops: ``insert``, ``delete`` and the internal ``restore_rows`` (undo of delete).

Rows are addressed by rid and the frame stays sorted by rid: inserts get
fresh rids at the end, and restored rows are merged back into rid order.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from protocol import Delete, ErrorCode, Insert, RestoreRows

from . import chunks
from .cells import locate
from .dtypes import arrow_column, coerce_series, null_series
from .exprcost import IN_PROCESS, ExprCost, evaluate_expr
from .state import RID, Applied, Catalog, Effect, OpError, State

__all__ = ["apply_insert", "apply_delete", "apply_restore_rows"]


def _column_series(table: pa.Table, name: str, dtype: str) -> pl.Series:
    """One Arrow column as a Series of the catalog dtype (strict)."""
    return coerce_series(arrow_column(table, name), dtype, what=f"column '{name}'").rename(name)


def _rows_frame(table: pa.Table, catalog: Catalog, rids: pl.Series) -> pl.DataFrame:
    """A State-shaped frame of ``table``'s rows: ``_rid`` then every catalog column."""
    n = table.num_rows
    cols = [rids.rename(RID)]
    present = set(table.column_names)
    for c in catalog.columns:
        if c.name in present:
            cols.append(_column_series(table, c.name, c.dtype))
        else:
            cols.append(null_series(c.dtype, n).rename(c.name))
    return pl.DataFrame(cols)


def _check_names(table: pa.Table, catalog: Catalog, what: str) -> None:
    names = table.column_names
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise OpError(ErrorCode.BAD_OP, f"{what} has column '{dup}' twice; send each column once")
    known = set(catalog.names())
    for n in names:
        if n != RID and n not in known:
            raise OpError(
                ErrorCode.NO_SUCH_COLUMN,
                f"{what} has column '{n}', which does not exist;"
                f" columns are {', '.join(catalog.names()) or '(none)'}",
                column=n,
            )


def _compact(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` after an append, which added a chunk to every column.

    The rid column is made contiguous again at once (every set reads it as a
    zero-copy NumPy view); in the other columns, runs of small chunks are
    merged once a column holds more than ``chunks.max_chunks`` (its big
    chunks stay shared: see :mod:`.chunks`).
    """
    if frame.n_chunks("all")[0] > 1:
        frame = frame.with_columns(frame.get_column(RID).rechunk())
    limit = chunks.max_chunks(frame.height)
    if max(frame.n_chunks("all")) <= limit:
        return frame
    return frame.with_columns([chunks.compact(s) for s in frame.get_columns() if s.n_chunks() > limit])


def apply_insert(state: State, op: Insert) -> Applied:
    """``insert``: append rows with fresh rids; missing columns are null.

    Raises:
        OpError: ``bad_op`` (no rows, a ``_rid`` column, a column twice);
            ``no_such_column``; ``bad_value`` (samples give the row position).
    """
    table = op.rows
    if table.num_rows == 0:
        raise OpError(ErrorCode.BAD_OP, "insert has no rows; send at least one row")
    if RID in table.column_names:
        raise OpError(ErrorCode.BAD_OP, f"insert has a '{RID}' column; the server assigns rids, drop it")
    _check_names(table, state.catalog, "insert")
    n = table.num_rows
    rids = np.arange(state.next_rid, state.next_rid + n, dtype=np.uint64)
    new_rows = _rows_frame(table, state.catalog, pl.Series(RID, rids))
    frame = _compact(pl.concat([state.frame, new_rows], how="vertical"))
    new = State(frame, state.catalog, state.next_rid + n)
    return Applied(new, (Delete(rows=tuple(rids.tolist())),), Effect(inserted=rids))


def _where_mask(state: State, where: str, exprs: ExprCost) -> np.ndarray:
    m = evaluate_expr(state, where, exprs)
    if m.dtype != pl.Boolean and m.dtype != pl.Null:
        raise OpError(
            ErrorCode.BAD_EXPR,
            f"where must be a condition (true or false per row), but {where!r} gives {m.dtype} values",
        )
    return m.cast(pl.Boolean).fill_null(False).to_numpy()


def apply_delete(state: State, op: Delete, exprs: ExprCost = IN_PROCESS) -> Applied:
    """``delete``: by rids, or every row where a sandboxed predicate is true (null is false).

    The inverse is ``restore_rows`` with the deleted rows (``_rid`` and all
    columns). Deleting the same rid twice in one op deletes it once.
    ``exprs`` evaluates ``where`` and bounds its cost (:mod:`.exprcost`).

    Raises:
        OpError: ``bad_op`` (neither or both of rows and where);
            ``no_such_row``; ``bad_expr``; ``no_such_column``; ``too_expensive``.
    """
    if (op.rows is None) == (op.where is None):
        raise OpError(ErrorCode.BAD_OP, "delete needs exactly one of 'rows' or 'where'")
    if op.rows is not None:
        _, pos = locate(state, op.rows)
        mask = np.zeros(state.frame.height, dtype=bool)
        mask[pos] = True
    else:
        assert op.where is not None
        mask = _where_mask(state, op.where, exprs)
    sel = pl.Series(mask)
    gone = state.frame.filter(sel)
    inverse = RestoreRows(gone.to_arrow())
    if not gone.height:
        return Applied(state, (inverse,), Effect())
    rids = gone.get_column(RID).to_numpy().astype(np.uint64, copy=True)
    new = State(state.frame.filter(~sel), state.catalog, state.next_rid)
    return Applied(new, (inverse,), Effect(deleted=rids))


def apply_restore_rows(state: State, op: RestoreRows) -> Applied:
    """``restore_rows`` (internal, undo of delete): put rows back with their rids, in rid order.

    Raises:
        OpError: ``bad_op`` if the table lacks ``_rid`` or a catalog column,
            has a null or repeated rid, or a rid that already exists;
            ``no_such_column``; ``bad_value``.
    """
    table = op.rows
    _check_names(table, state.catalog, "restore_rows")
    missing = [n for n in (RID, *state.catalog.names()) if n not in table.column_names]
    if missing:
        raise OpError(
            ErrorCode.BAD_OP,
            f"restore_rows needs '{RID}' and every column; missing {', '.join(missing)}",
        )
    if table.num_rows == 0:
        return Applied(state, (Delete(rows=()),), Effect())
    rid_s = coerce_series(arrow_column(table, RID), "UInt64", what=f"column '{RID}'")
    if rid_s.null_count():
        raise OpError(ErrorCode.BAD_OP, f"restore_rows has a null '{RID}'")
    new_rows = _rows_frame(table.drop_columns([RID]), state.catalog, rid_s).sort(RID)
    rids = new_rows.get_column(RID).to_numpy().astype(np.uint64, copy=True)
    if len(np.unique(rids)) != len(rids):
        raise OpError(ErrorCode.BAD_OP, "restore_rows has the same rid twice")
    existing = np.asarray(state.rids(), dtype=np.uint64)
    clash = np.isin(rids, existing, assume_unique=True)
    if clash.any():
        raise OpError(
            ErrorCode.BAD_OP,
            f"cannot restore rid {int(rids[clash][0])}: a row with that rid exists",
            rids=[int(r) for r in rids[clash][:5]],
        )
    if not len(existing) or rids[0] > existing[-1]:
        frame = pl.concat([state.frame, new_rows], how="vertical")
    else:
        frame = state.frame.merge_sorted(new_rows, key=RID)
    new = State(_compact(frame), state.catalog, max(state.next_rid, int(rids[-1]) + 1))
    return Applied(new, (Delete(rows=tuple(rids.tolist())),), Effect(inserted=rids))
