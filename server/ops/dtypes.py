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


def normalize_frame(df: pl.DataFrame) -> tuple[pl.DataFrame, Catalog]:
    """Make a loaded frame State-ready: supported dtypes, ``_rid`` 0..n-1 first, ids 0..n-1.

    Categorical/Enum and Null become String, Datetime becomes microseconds
    (keeping its zone), Decimal becomes Float64 and Float16 Float32.

    Raises:
        OpError: ``reserved_name`` if the input has a ``_rid`` column;
            ``bad_op`` for an empty or over-long column name; ``bad_dtype``
            naming a column of an unsupported dtype (List, Struct, Binary, ...).
    """
    if RID in df.columns:
        raise OpError(
            ErrorCode.RESERVED_NAME,
            f"the input has a column named '{RID}', which coframe reserves for row ids;"
            " rename or drop it before loading",
            column=RID,
        )
    exprs: list[pl.Expr] = []
    columns: list[Column] = []
    for i, (name, dtype) in enumerate(df.schema.items()):
        check_name(name, what=f"column name {name!r}")
        target = _load_target(name, dtype)
        exprs.append(pl.col(name) if dtype == target else pl.col(name).cast(target))
        columns.append(Column(i, name, dtype_name(target)))
    rid = pl.Series(RID, np.arange(df.height, dtype=np.uint64))
    frame = df.select(exprs).insert_column(0, rid) if exprs else pl.DataFrame([rid])
    return frame, Catalog(tuple(columns), len(columns))
