"""Pure operations on a room's frame (PROTOCOL.md §4 "Ops").

Frame, catalog and op in; new state, inverse ops and effect out. No I/O and
no room. The room's hot path coalesces many small ``set`` ops with
:func:`plan_set` + :func:`apply_set_plans` (one scatter per column per tick).
"""

from ._names import NAME_RE, check_ref_name, is_ref_name
from .apply import apply, apply_all
from .cells import SetPlan, apply_set_plans, locate, plan_set, prior_values, read_cells
from .columns import cast_values
from .dtypes import (
    DTYPE_NAMES,
    RID_MODES,
    check_name,
    coerce,
    coerce_series,
    dtype_name,
    next_rid_of,
    normalize_frame,
    polars_dtype,
    to_scalars,
)
from .exprcost import IN_PROCESS, TRUSTED, ExprCost
from .sandbox import compile_expr
from .state import RID, Applied, Catalog, Column, Effect, OpError, State

__all__ = [
    "RID",
    "Column",
    "Catalog",
    "State",
    "Effect",
    "Applied",
    "OpError",
    "apply",
    "apply_all",
    "SetPlan",
    "plan_set",
    "apply_set_plans",
    "read_cells",
    "prior_values",
    "locate",
    "cast_values",
    "DTYPE_NAMES",
    "polars_dtype",
    "dtype_name",
    "check_name",
    "NAME_RE",
    "is_ref_name",
    "check_ref_name",
    "normalize_frame",
    "next_rid_of",
    "RID_MODES",
    "coerce",
    "coerce_series",
    "to_scalars",
    "compile_expr",
    "ExprCost",
    "IN_PROCESS",
    "TRUSTED",
]
