"""The ``fill_null`` op (PROTOCOL.md "Ops"): fill a column's nulls with a value or a strategy.

Its inverse is a ``set`` of the filled cells back to null, so undo works
like any other op's.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from protocol import FILL_STRATEGIES, ErrorCode, FillNull, SetCells

from .dtypes import coerce, dtype_family
from .state import Applied, Column, Effect, OpError, State

__all__ = ["apply_fill_null"]


_NUMERIC_ONLY = ("mean", "median")


def _fits(strategy: str, fam: str) -> bool:
    if strategy in _NUMERIC_ONLY:
        return fam in ("int", "float")
    if strategy == "zero":
        return fam in ("int", "float", "bool")
    return True


def _fill_value(s: pl.Series, strategy: str, col: Column) -> pl.Series | None:
    """A one-value Series of the column dtype to fill with; None if there is none."""
    dtype = s.dtype
    fam = dtype_family(col.dtype)
    values = s.drop_nulls()
    if strategy == "zero":
        return pl.Series([False if fam == "bool" else 0]).cast(dtype)
    if not len(values):
        return None
    if strategy == "mode":
        counts = values.rename("v").value_counts(name="n")
        return counts.sort(["n", "v"], descending=[True, False]).get_column("v").head(1).cast(dtype)
    if fam == "int" and strategy in _NUMERIC_ONLY:
        # Exact integer arithmetic: a float mean of values near 2**63 rounds out of range.
        n = len(values)
        if strategy == "mean":
            num, den = values.cast(pl.Int128).sum(), n
        else:
            ordered = values.sort()
            num, den = int(ordered[(n - 1) // 2]) + int(ordered[n // 2]), 2
        return pl.Series([_round_half_away(num, den)]).cast(dtype)
    # min, max, and float mean/median: aggregate in Polars so the value keeps its dtype.
    return values.to_frame("v").select(getattr(pl.col("v"), strategy)()).to_series().cast(dtype)


def _round_half_away(num: int, den: int) -> int:
    """num/den rounded to the nearest integer, halves away from zero (2.5 -> 3, -2.5 -> -3)."""
    q, r = divmod(abs(num), den)
    q += 2 * r >= den
    return -q if num < 0 else q


def apply_fill_null(state: State, op: FillNull) -> Applied:
    """``fill_null``: fill nulls with a value or a strategy; the inverse nulls them again.

    Raises:
        OpError: ``no_such_column``; ``bad_op`` (neither or both of value and
            strategy, an unknown strategy, or one that does not fit the
            dtype); ``bad_value`` for a value of the wrong type.
    """
    col = state.catalog.resolve(op.col)
    if (op.value is None) == (op.strategy is None):
        raise OpError(ErrorCode.BAD_OP, "fill_null needs exactly one of 'value' (not null) or 'strategy'")
    s = state.frame.get_column(col.name)
    fam = dtype_family(col.dtype)
    if op.strategy is not None:
        if op.strategy not in FILL_STRATEGIES:
            raise OpError(
                ErrorCode.BAD_OP,
                f"unknown fill strategy {op.strategy!r}; use one of {', '.join(FILL_STRATEGIES)}",
            )
        if not _fits(op.strategy, fam):
            fitting = [st for st in FILL_STRATEGIES if _fits(st, fam)]
            raise OpError(
                ErrorCode.BAD_OP,
                f"strategy '{op.strategy}' does not fit column '{col.name}' ({col.dtype});"
                f" for this column use {', '.join(fitting)}, or a value",
                strategies=fitting,
            )
    null_mask = s.is_null()
    if op.strategy in ("forward", "backward"):
        filled = s.fill_null(strategy=op.strategy)  # type: ignore[arg-type]
        changed = np.flatnonzero((null_mask & filled.is_not_null()).to_numpy())
    else:
        one = (
            coerce([op.value], col.dtype, what=f"fill value for column '{col.name}'")
            if op.strategy is None
            else _fill_value(s, op.strategy, col)
        )
        changed = np.flatnonzero(null_mask.to_numpy()) if one is not None else np.empty(0, np.int64)
        filled = s
        if len(changed):
            filled = s.clone()
            filled.scatter(changed, one.gather(np.zeros(len(changed), dtype=np.int64)))
    rids = np.asarray(state.rids(), dtype=np.uint64)[changed]
    inverse = SetCells(tuple(rids.tolist()), col.id, (None,) * len(rids))
    if not len(changed):
        return Applied(state, (inverse,), Effect())
    new = State(state.frame.with_columns(filled.rename(col.name)), state.catalog, state.next_rid)
    return Applied(new, (inverse,), Effect(cells={col.id: rids}))
