"""Cell writes: ``set`` (planned and coalesced for the room's hot path) and ``fill_null``.

The room drains its queue once per tick; it validates each ``set`` with
:func:`plan_set` and writes every touched column with one scatter in
:func:`apply_set_plans` (PROTOCOL.md §4 "Ops": one scatter of 1,000
cells costs about what one single-cell write does), which copies only the
chunks of the column that hold a written row (:mod:`.chunks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from protocol import ErrorCode, SetCells
from protocol.dtypes import WIRE_COMPAT

from . import chunks
from .arrays import last_of_each
from .coerce import json_values
from .dtypes import coerce
from .state import Applied, Column, Effect, OpError, State

__all__ = [
    "SetPlan",
    "locate",
    "missing_rows",
    "plan_set",
    "apply_set_plans",
    "read_cells",
    "prior_values",
    "gather",
    "take_wire",
    "written_wire",
    "arrow_scalars",
    "plain_floats",
    "apply_set",
]


@dataclass(frozen=True, slots=True)
class SetPlan:
    """A validated ``set``: where to write which values; the frame is untouched.

    ``positions`` index the frame the plan was made against; apply it to
    that same state (or one with the same rows and column).
    """

    col: Column
    rids: np.ndarray  # uint64
    positions: np.ndarray  # int64 row positions
    data: pl.Series | np.ndarray  # one value per rid: a Series of the column dtype, or float64s

    def value_at(self, i: int) -> Any:
        """The value written to ``rids[i]``, JSON-friendly (as :func:`read_cells` gives values)."""
        if isinstance(self.data, np.ndarray):
            return float(self.data[i])
        return json_values(self.data.slice(i, 1).to_list(), self.data.dtype)[0]

    @property
    def values(self) -> pl.Series:
        """The values as a Series of the column dtype (named like the column)."""
        if isinstance(self.data, np.ndarray):
            return pl.Series(self.col.name, self.data, dtype=pl.Float64)
        return self.data


def plain_floats(values: Sequence[Any], dtype_name: str) -> np.ndarray | None:
    """Values for a Float64 column that are all Python floats, as a float64 array; else None.

    They need no check and no Polars Series per op: the flush builds one
    Series per column for every parked plan (:func:`apply_set_plans`).
    """
    if dtype_name == "Float64" and values and set(map(type, values)) == _FLOAT_ONLY:
        return np.array(values, dtype=np.float64)
    return None


_FLOAT_ONLY = {float}


def _concat_values(plans: Sequence[SetPlan]) -> pl.Series:
    """The values of ``plans`` (one column) end to end, built once when all are float arrays."""
    if len(plans) == 1:
        return plans[0].values
    if all(isinstance(p.data, np.ndarray) for p in plans):
        arr = np.concatenate([p.data for p in plans])  # type: ignore[misc]
        return pl.Series(plans[0].col.name, arr, dtype=pl.Float64)
    return pl.concat([p.values for p in plans])


def written_wire(plans: Sequence[SetPlan]) -> tuple[np.ndarray, pa.Array]:
    """The cells ``plans`` (one column, in order) leave behind: ascending rids and their final values.

    The values are an Arrow array of the column's wire type; a cell written
    by several plans keeps the last one's value. Read from the plans alone,
    never from the frame (the room's delta for a tick of ``set`` ops).
    """
    rids = np.concatenate([p.rids for p in plans]) if len(plans) > 1 else plans[0].rids
    order = last_of_each(rids) if len(plans) > 1 else np.arange(len(rids))
    order = order[np.argsort(rids[order], kind="stable")]
    if all(isinstance(p.data, np.ndarray) for p in plans):
        data = np.concatenate([p.data for p in plans]) if len(plans) > 1 else plans[0].data
        return rids[order], pa.array(data[order], type=pa.float64())  # type: ignore[index]
    values = _concat_values(plans).to_arrow(compat_level=WIRE_COMPAT)
    return rids[order], values.take(pa.array(order))


def _rid_array(rows: Sequence[int]) -> np.ndarray:
    try:
        return np.asarray(rows, dtype=np.uint64)
    except (OverflowError, ValueError, TypeError):
        bad = [r for r in rows if not (isinstance(r, int) and 0 <= r < 2**64)]
        raise OpError(
            ErrorCode.NO_SUCH_ROW,
            f"{bad[0]!r} is not a row id; rids are non-negative integers from the frame's '_rid'",
            rids=[str(r) for r in bad[:5]],
        ) from None


def locate(state: State, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The rids (uint64) and their row positions in ``state.frame``.

    Raises:
        OpError: ``no_such_row`` listing up to 5 rids that are not in the frame.
    """
    req = _rid_array(rows)
    rids = state.rids()
    base = state.dense_base()
    if base is not None and len(req):
        pos = req - base  # a rid below the first wraps around to a huge position
        if int(pos.max()) < len(rids):
            return req, pos.astype(np.int64)
    pos = np.searchsorted(rids, req)
    n = len(rids)
    found = pos < n
    if n:
        found &= rids[np.minimum(pos, n - 1)] == req
    if not found.all():
        raise missing_rows(req[~found])
    return req, pos.astype(np.int64)


def missing_rows(missing: np.ndarray) -> OpError:
    """The ``no_such_row`` error for rids that are not in the frame (up to 5 named)."""
    shown = ", ".join(str(int(r)) for r in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return OpError(
        ErrorCode.NO_SUCH_ROW,
        f"{len(missing)} row{'s' if len(missing) > 1 else ''} not found (rid {shown}{more}):"
        " deleted, or never inserted; refresh your copy and retry",
        rids=[int(r) for r in missing[:5]],
        count=int(len(missing)),
    )


def plan_set(state: State, op: SetCells) -> SetPlan:
    """Validate a ``set`` exactly as :func:`apply` does, without touching the frame.

    Raises:
        OpError: ``no_such_column``; ``bad_op`` (values/rows mismatch, a rid
            twice); ``no_such_row``; ``bad_value`` (samples carry the rid).
    """
    col = state.catalog.resolve(op.col)
    if len(op.values) != len(op.rows):
        raise OpError(
            ErrorCode.BAD_OP,
            f"set has {len(op.values)} values for {len(op.rows)} rows; send one value per row",
        )
    rids, pos = locate(state, op.rows)
    if len(rids) > 1:
        ordered = np.sort(rids)
        if (ordered[1:] == ordered[:-1]).any():
            uniq, counts = np.unique(rids, return_counts=True)
            dups = [int(r) for r in uniq[counts > 1][:5]]
            raise OpError(
                ErrorCode.BAD_OP,
                f"rid {dups[0]} appears more than once in one set; send each row once",
                rids=dups,
            )
    fast = plain_floats(op.values, col.dtype)
    if fast is not None:
        return SetPlan(col, rids, pos, fast)
    try:
        values = coerce(op.values, col.dtype, what=f"column '{col.name}'")
    except OpError as e:
        samples = e.details.get("samples", [])
        for s in samples:
            s["rid"] = int(rids[s["position"]])
        if samples:
            e.message += f" (rid {samples[0]['rid']})"
            e.args = (e.message,)
        raise
    return SetPlan(col, rids, pos, values.rename(col.name))


def apply_set_plans(state: State, plans: Sequence[SetPlan]) -> State:
    """Write many planned sets: one scatter per touched column (copying only its touched chunks).

    When several plans write the same cell the last plan wins.

    Raises:
        ValueError: a plan's column is no longer in the catalog as planned.
    """
    by_col: dict[int, list[SetPlan]] = {}
    for p in plans:
        if len(p.positions):
            by_col.setdefault(p.col.id, []).append(p)
    if not by_col:
        return state
    height = state.frame.height
    frame = state.frame.clone()  # shallow: columns are shared until replaced
    for ps in by_col.values():
        col = ps[0].col
        current = next((c for c in state.catalog.columns if c.id == col.id), None)
        if current != col:
            raise ValueError(f"stale set plan: column {col} is now {current}")
        pos = np.concatenate([p.positions for p in ps]) if len(ps) > 1 else ps[0].positions
        vals = _concat_values(ps)
        if len(ps) > 1:
            keep = last_of_each(pos)
            if len(keep) != len(pos):
                pos, vals = pos[keep], vals.gather(keep)
        if int(pos.max()) >= height:
            raise ValueError("stale set plan: a position is past the end of the frame")
        s = chunks.scatter(state.frame.get_column(col.name), pos, vals)  # copies the touched chunks
        # replace_column: ~1 us where with_columns plans a query (~17 us).
        frame.replace_column(frame.get_column_index(col.name), s)
    return state.with_frame(frame)


def prior_values(state: State, plans: Sequence[SetPlan]) -> list[pa.Array]:
    """The value each cell of each plan held just before that plan, per plan, in order.

    That is the frame's value, unless an earlier plan in ``plans`` wrote the
    same cell: then that write's value. So writing these back plan by plan, in
    reverse order, undoes ``apply_set_plans(state, plans)``. Whole columns:
    one Arrow take per touched column (no Polars Series per tick), no Python
    work per cell; :func:`arrow_scalars` reads them when an undo needs them.
    """
    out: list[pa.Array | None] = [None] * len(plans)
    by_col: dict[int, list[int]] = {}
    for i, p in enumerate(plans):
        by_col.setdefault(p.col.id, []).append(i)
    for idxs in by_col.values():
        ps = [plans[i] for i in idxs]
        pos = np.concatenate([p.positions for p in ps]) if len(ps) > 1 else ps[0].positions
        s = state.frame.get_column(ps[0].col.name)
        old = take_wire(s, pos)
        if len(ps) > 1 and len(pos) > 1:
            # An earlier write of the same cell in this run: its value, not the frame's.
            order = np.argsort(pos, kind="stable")
            same = pos[order[1:]] == pos[order[:-1]]
            if same.any():
                vals = _concat_values(ps)
                later, earlier = order[1:][same], order[:-1][same]
                patched = pl.Series(s.name, old, dtype=s.dtype)
                patched.scatter(later, gather(vals, earlier))
                old = patched.to_arrow(compat_level=WIRE_COMPAT)
        off = 0
        for i, p in zip(idxs, ps, strict=True):
            n = len(p.positions)
            out[i] = old.slice(off, n)
            off += n
    return out  # type: ignore[return-value]


SMALL_GATHER = 128
TINY_GATHER = 4


def _arrow_ok(s: pl.Series) -> bool:
    """``s`` exports to Arrow without a copy: one chunk, and not String (a view type in Polars)."""
    return s.dtype != pl.String and s.n_chunks() == 1


def gather(s: pl.Series, positions: np.ndarray | Sequence[int]) -> pl.Series:
    """``s`` at ``positions``.

    Polars 2 routes every ``gather`` through its query engine (~200 us
    fixed). A one-chunk column of a fixed-width dtype is taken in Arrow
    instead (zero-copy export, ~15 us whatever the size); others use scalar
    reads (~1.5 us each) up to SMALL_GATHER positions.
    """
    n = len(positions)
    if n > TINY_GATHER and _arrow_ok(s):
        return pl.Series(s.name, take_wire(s, positions))
    if n > SMALL_GATHER:
        return s.gather(np.asarray(positions, dtype=np.int64))
    return pl.Series(s.name, [s[int(i)] for i in positions], dtype=s.dtype)


def take_wire(s: pl.Series, positions: np.ndarray | Sequence[int]) -> pa.Array:
    """``s`` at ``positions`` as an Arrow array of its wire type (``frame_to_arrow``'s).

    A few positions are read as scalars: the first Arrow export of a column
    written in the last tick costs ~50 us, a scalar read ~1.5 us.
    """
    if len(positions) <= TINY_GATHER:
        return pa.array([s[int(i)] for i in positions], type=_wire_type(s.dtype))
    if _arrow_ok(s):
        return s.to_arrow(compat_level=WIRE_COMPAT).take(pa.array(np.asarray(positions, dtype=np.int64)))
    return gather(s, positions).to_arrow(compat_level=WIRE_COMPAT)


_WIRE_TYPES: dict[pl.DataType, pa.DataType] = {}


def _wire_type(dtype: pl.DataType) -> pa.DataType:
    """The Arrow type a column of ``dtype`` has on the wire."""
    t = _WIRE_TYPES.get(dtype)
    if t is None:
        t = _WIRE_TYPES[dtype] = pl.Series([], dtype=dtype).to_arrow(compat_level=WIRE_COMPAT).type
    return t


def _gather_values(s: pl.Series, positions: np.ndarray | Sequence[int]) -> list[Any]:
    """Like :func:`gather`, as Python values, without building a Series (hot path)."""
    n = len(positions)
    if n > TINY_GATHER and _arrow_ok(s):
        return take_wire(s, positions).to_pylist()  # type: ignore[no-any-return]
    if n > SMALL_GATHER:
        return gather(s, positions).to_list()
    return [s[int(i)] for i in positions]


def read_cells(state: State, col: Column, positions: np.ndarray | Sequence[int]) -> list[Any]:
    """Current values at ``positions`` of ``col``, as JSON-friendly scalars.

    Dates and datetimes come back as ISO 8601 strings, which :func:`coerce`
    (and so a ``set``) reads back to the exact same value.
    """
    s = state.frame.get_column(col.name)
    return json_values(_gather_values(s, positions), s.dtype)


def arrow_scalars(values: pa.Array) -> list[Any]:
    """JSON-friendly Python values of an Arrow array, as :func:`read_cells` gives them.

    Dates and datetimes become ISO 8601 text (with the UTC offset when zoned),
    which :func:`coerce` reads back to the exact same value.
    """
    vals = values.to_pylist()
    if pa.types.is_date(values.type) or pa.types.is_timestamp(values.type):
        return [None if v is None else v.isoformat() for v in vals]
    return vals  # type: ignore[no-any-return]


def apply_set(state: State, op: SetCells) -> Applied:
    """``set`` (PROTOCOL.md "Ops"): write cells; the inverse writes the old values back."""
    plan = plan_set(state, op)
    old = read_cells(state, plan.col, plan.positions)
    new = apply_set_plans(state, [plan])
    inverse = SetCells(tuple(plan.rids.tolist()), plan.col.id, tuple(old))
    effect = Effect(cells={plan.col.id: plan.rids} if len(plan.rids) else {})
    return Applied(new, (inverse,), effect)
