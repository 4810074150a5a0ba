"""What the fast view engines share (:mod:`.fast` plain views, :mod:`.fastgroup` grouped views).

The refusal at read time (:class:`NotServable`), filter clauses
(:func:`parse_clause`, :func:`filter_mask`), the schema check a plan makes
before it reads a frame, and the payload conversion: a Polars result as
:func:`.payload.view_table` returns Perspective's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from protocol.dtypes import RID, dtype_name, frame_to_arrow

from .fastexpr import FILTER_OPS, check_value, column_expr, filter_expr, has_nul, ptype
from .types import to_perspective

__all__ = [
    "NotServable",
    "Clause",
    "parse_clause",
    "filter_mask",
    "check_schema",
    "nul_columns",
    "view_arrow",
]


class NotServable(Exception):
    """The frame holds values this engine cannot order as Perspective does (NaN, ``-0.0`` beside
    ``0.0`` in a float sort key), or no longer has the columns the plan was made for.

    Not a :class:`protocol.CoframeError`: it never reaches a user (the
    caller serves the view with Perspective instead), so it has no error
    code. ``column`` names the column at fault.
    """

    def __init__(self, message: str, *, column: str) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True, slots=True)
class Clause:
    """A filter clause the engines serve: ``value`` is checked (a tuple for ``in``/``not in``)."""

    column: str
    dtype: str
    op: str
    value: Any


def parse_clause(clause: Any, dtypes: dict[str, str]) -> Clause | None:
    """``clause`` (``[column, op, value]`` of a view config) if the engines serve it, else None."""
    if not isinstance(clause, list) or len(clause) != 3 or clause[0] not in dtypes:
        return None
    name, op, value = clause
    dtype = dtypes[name]
    pt = ptype(dtype)
    if pt is None:
        return None
    if op in ("is null", "is not null"):
        return Clause(name, dtype, op, None)
    if op not in FILTER_OPS[pt]:
        return None
    if op in ("in", "not in"):
        if not isinstance(value, list) or not all(check_value(pt, v) for v in value):
            return None
        value = tuple(value)
    elif not check_value(pt, value):
        return None
    return Clause(name, dtype, op, value)


def filter_mask(filters: Iterable[Clause], nul: set[str]) -> pl.Expr:
    """The rows Perspective keeps for every clause (and-ed); ``nul``: string columns holding a NUL."""
    mask = pl.lit(True)
    for c in filters:
        x = column_expr(c.column, c.dtype, nul=c.column in nul)
        mask = mask & filter_expr(x, ptype(c.dtype) or "", c.op, c.value)
    return mask


def check_schema(frame: pl.DataFrame, dtypes: Iterable[tuple[str, str]]) -> None:
    """Raise :class:`NotServable` unless ``frame`` has each (column, dtype) a plan was made for."""
    schema = frame.schema
    for name, dtype in dtypes:
        got = schema.get(name)
        if got is None or dtype_name(got) != dtype:
            raise NotServable(f"column '{name}' is no longer {dtype}; plan the view again", column=name)


def nul_columns(frame: pl.DataFrame, names: Iterable[str]) -> set[str]:
    """The string columns of ``names`` that hold a NUL (Perspective cuts strings there)."""
    names = sorted(set(names))
    if not names:
        return set()
    found = frame.select(has_nul(n) for n in names).row(0)
    return {n for n, hit in zip(names, found, strict=True) if hit}


def view_arrow(df: pl.DataFrame, columns: list[str]) -> pa.Table:
    """``df``'s ``columns`` as :func:`.payload.view_table` returns Perspective's.

    Each column goes through :func:`.types.to_perspective` (the types and
    values Perspective holds), then what ``view_table`` does: ``_rid`` back
    to uint64, strings plain (and cut at a NUL), zoned timestamps in their
    zone again.
    """
    if not columns:
        return pa.Table.from_arrays([], names=[])
    mapped = to_perspective(frame_to_arrow(df.select(columns)))
    arrays: list[pa.ChunkedArray] = []
    for name, col in zip(mapped.column_names, mapped.columns, strict=True):
        typ = df.schema[name]
        if name == RID:
            col = col.cast(pa.uint64())
        elif isinstance(typ, pl.String):
            col = _cut_nul(col).cast(pa.string())
        elif isinstance(typ, pl.Datetime) and typ.time_zone is not None:
            col = col.cast(pa.timestamp("ms", "UTC")).cast(pa.timestamp("ms", typ.time_zone))
        arrays.append(col)
    return pa.Table.from_arrays(arrays, names=columns)


def _cut_nul(col: pa.ChunkedArray) -> pa.ChunkedArray:
    values = col.to_pylist()  # a viewport or a grouped result: small
    if not any(v is not None and "\x00" in v for v in values):
        return col
    return pa.chunked_array([pa.array([v if v is None else v.split("\x00", 1)[0] for v in values], col.type)])
