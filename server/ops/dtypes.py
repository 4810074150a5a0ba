"""Column dtypes: the supported names, loading a frame, and strict value coercion.

A column's dtype is one of :data:`DTYPE_NAMES` (``Datetime[<tz>]`` takes any
IANA zone, e.g. ``Datetime[UTC]``). This module is the server's public face of
the dtype helpers: the vocabulary is :mod:`protocol.dtypes` (re-exported here,
with lookups raising :class:`OpError`), name checks live in ``_names`` and the
coercion in ``coerce``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from protocol import ErrorCode
from protocol.dtypes import RID, storable_dtype

from ._names import (
    DTYPE_NAMES,
    MAX_NAME_LEN,
    check_name,
    dtype_family,
    dtype_name,
    polars_dtype,
    time_zone,
)
from .coerce import (
    arrow_column,
    bad_value_error,
    coerce,
    coerce_series,
    jsonable,
    null_series,
    parse_temporal,
    sample_value,
    to_scalars,
)
from .state import Catalog, Column, OpError

__all__ = [
    "DTYPE_NAMES",
    "MAX_NAME_LEN",
    "polars_dtype",
    "dtype_name",
    "dtype_family",
    "time_zone",
    "check_name",
    "normalize_frame",
    "next_rid_of",
    "RID_MODES",
    "storable_dtype",
    "coerce",
    "coerce_series",
    "arrow_column",
    "parse_temporal",
    "to_scalars",
    "jsonable",
    "sample_value",
    "bad_value_error",
    "null_series",
]


def _load_target(name: str, dtype: pl.DataType) -> pl.DataType:
    """The supported dtype a loaded column becomes.

    Raises:
        OpError: ``bad_dtype`` naming the column and what to do.
    """
    target = storable_dtype(dtype)
    if target is None:
        raise OpError(
            ErrorCode.BAD_DTYPE,
            f"column '{name}' has dtype {dtype}, which coframe cannot store;"
            f" convert it to one of {', '.join(DTYPE_NAMES)} (for example cast it to String)"
            " or drop it before loading",
            column=name,
            dtype=str(dtype),
        )
    return polars_dtype(target)


RID_MODES = ("keep", "new")  # what a load does with a ``_rid`` column (PROTOCOL.md §13)


def normalize_frame(df: pl.DataFrame, *, rids: str | None = None) -> tuple[pl.DataFrame, Catalog]:
    """Make a loaded frame State-ready: supported dtypes, ``_rid`` first, column ids 0..n-1.

    Categorical/Enum and Null become String, Datetime becomes microseconds
    (keeping its zone), Decimal becomes Float64 and Float16 Float32.

    ``rids`` says what to do with a ``_rid`` column (a file coframe exported
    has one): ``"new"`` drops it and numbers the rows 0..n-1 in file order, as
    for a file without one; ``"keep"`` keeps its values as the row ids (unique
    non-negative whole numbers; rows sorted by them); None refuses it. The
    caller's next rid is one past the largest (:func:`next_rid_of`).

    Raises:
        OpError: ``reserved_name`` for a ``_rid`` column when ``rids`` is None;
            ``bad_op`` for kept rids that are not unique non-negative whole
            numbers, or an empty or over-long column name; ``bad_dtype``
            naming a column of an unsupported dtype (List, Struct, Binary, ...).
    """
    kept: pl.Series | None = None
    if RID in df.columns:
        if rids is None:
            raise OpError(
                ErrorCode.RESERVED_NAME,
                f"the input has a column named '{RID}', which coframe reserves for row ids;"
                " rename or drop it before loading, or load it with rids=keep or rids=new",
                column=RID,
            )
        if rids not in RID_MODES:
            raise OpError(ErrorCode.BAD_OP, f"rids is {rids!r}; use 'keep' or 'new'", rids=str(rids))
        if rids == "keep":
            kept = _kept_rids(df.get_column(RID))
        df = df.drop(RID)
    exprs: list[pl.Expr] = []
    columns: list[Column] = []
    for i, (name, dtype) in enumerate(df.schema.items()):
        check_name(name, what=f"column name {name!r}")
        target = _load_target(name, dtype)
        exprs.append(pl.col(name) if dtype == target else pl.col(name).cast(target))
        columns.append(Column(i, name, dtype_name(target)))
    rid = kept if kept is not None else pl.Series(RID, np.arange(df.height, dtype=np.uint64))
    frame = df.select(exprs).insert_column(0, rid) if exprs else pl.DataFrame([rid])
    if kept is not None:
        frame = frame.sort(RID)
    return frame, Catalog(tuple(columns), len(columns))


def next_rid_of(frame: pl.DataFrame) -> int:
    """The first unused rid of a normalized frame: one past its largest ``_rid`` (0 when empty)."""
    top = frame.get_column(RID).max()
    return 0 if top is None else int(top) + 1  # type: ignore[arg-type]


def _kept_rids(col: pl.Series) -> pl.Series:
    """A ``_rid`` column kept as row ids, as UInt64.

    Raises:
        OpError: ``bad_op``: not whole numbers, a null, a negative or a repeated value.
    """

    def bad(why: str, **details: object) -> OpError:
        return OpError(
            ErrorCode.BAD_OP,
            f"the '{RID}' column cannot be kept as row ids: {why}; fix the file, or load it with rids=new"
            " to number the rows afresh",
            column=RID,
            **details,
        )

    if not col.dtype.is_integer():
        raise bad(f"its values are {col.dtype}, not whole numbers")
    if col.null_count():
        raise bad(f"{col.null_count()} rows have no value")
    low = col.min()
    if col.len() and int(low) < 0:  # type: ignore[arg-type]
        raise bad(f"it has negative values (the smallest is {low})")
    dups = col.filter(col.is_duplicated()).unique().sort().head(5).to_list()
    if dups:
        raise bad(f"values repeat ({', '.join(str(d) for d in dups)})", repeated=dups)
    return col.cast(pl.UInt64).alias(RID)
