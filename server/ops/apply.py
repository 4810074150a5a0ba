"""``apply(state, op)``: the one entry point that applies any op to a room's state.

Pure: the input frame is never mutated. The result carries the new state,
the inverse ops (which, applied in order to the new state, restore the old
frame and catalog exactly; they name columns by id) and the effect the room
turns into a delta (PROTOCOL.md §4 "Ops").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol import (
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
)

from .cells import SetPlan, apply_set, apply_set_plans, plan_set, read_cells
from .columns import (
    apply_add_column,
    apply_cast_column,
    apply_drop_column,
    apply_rename_column,
    apply_restore_column,
)
from .exprcost import IN_PROCESS, ExprCost
from .fill import apply_fill_null
from .rows import apply_delete, apply_insert, apply_restore_rows
from .state import Applied, OpError, State

__all__ = ["apply", "apply_all", "SetPlan", "plan_set", "apply_set_plans", "read_cells"]

_HANDLERS: dict[type, Callable[[State, Any], Applied]] = {
    SetCells: apply_set,
    Insert: apply_insert,
    Delete: apply_delete,
    AddColumn: apply_add_column,
    DropColumn: apply_drop_column,
    RenameColumn: apply_rename_column,
    CastColumn: apply_cast_column,
    FillNull: apply_fill_null,
    RestoreRows: apply_restore_rows,
    RestoreColumn: apply_restore_column,
}


def apply(state: State, op: Op, exprs: ExprCost = IN_PROCESS) -> Applied:
    """Apply one op to ``state``; ``exprs`` evaluates expressions and bounds their cost.

    Raises:
        OpError: the op cannot apply (its ``code`` is a ``protocol.ErrorCode``
            and its message says what to do); ``state`` is unchanged.
    """
    handler = _HANDLERS.get(type(op))
    if handler is None:
        raise OpError(ErrorCode.BAD_OP, f"{type(op).__name__} is not an op this server applies")
    if isinstance(op, AddColumn):
        return apply_add_column(state, op, exprs)
    if isinstance(op, Delete):
        return apply_delete(state, op, exprs)
    return handler(state, op)


def apply_all(
    state: State, ops: tuple[Op, ...] | list[Op], exprs: ExprCost = IN_PROCESS
) -> tuple[State, tuple[Op, ...]]:
    """Apply ops in order, all or nothing: (final state, inverse ops to undo them all in order).

    Handy for undo entries and for applying an op batch atomically: if any op
    fails the error propagates and nothing is kept (``state`` is immutable).

    Raises:
        OpError: from the first op that fails.
    """
    inverses: list[tuple[Op, ...]] = []
    for op in ops:
        applied = apply(state, op, exprs)
        state = applied.state
        inverses.append(applied.inverse)
    return state, tuple(inv for group in reversed(inverses) for inv in group)
