"""The pure data the ops work on: column catalog, room state and op effects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from protocol import CoframeError, ColRef, ErrorCode, Op
from protocol.dtypes import RID

__all__ = ["Column", "Catalog", "State", "Effect", "Applied", "OpError", "RID"]


class OpError(CoframeError):
    """An op cannot apply; the state is unchanged.

    ``code`` is a :class:`protocol.ErrorCode`; ``message`` says what was wrong
    and what to do; ``details`` is JSON-friendly. Over HTTP it is a 400.
    """

    code = ErrorCode.BAD_OP
    status = 400

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message, code=code, details=details)


@dataclass(frozen=True, slots=True)
class Column:
    id: int
    name: str
    dtype: str  # a dtype name from server.ops.dtypes (e.g. "Int64", "String")

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "dtype": self.dtype}


@dataclass(frozen=True, slots=True)
class Catalog:
    """Columns in display order. Ids are stable and never reused."""

    columns: tuple[Column, ...]
    next_id: int

    def resolve(self, ref: ColRef) -> Column:
        """The column named (str) or numbered (int) by ``ref``.

        Raises:
            OpError: ``no_such_column``.
        """
        for c in self.columns:
            if (c.id == ref) if isinstance(ref, int) else (c.name == ref):
                return c
        what = f"id {ref}" if isinstance(ref, int) else f"'{ref}'"
        raise OpError(
            ErrorCode.NO_SUCH_COLUMN,
            f"no column {what}; columns are {', '.join(c.name for c in self.columns) or '(none)'}",
            column=ref,
        )

    def position(self, col_id: int) -> int:
        for i, c in enumerate(self.columns):
            if c.id == col_id:
                return i
        raise KeyError(col_id)

    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def to_wire(self) -> list[dict[str, Any]]:
        return [c.to_wire() for c in self.columns]


@dataclass(frozen=True, slots=True)
class State:
    """A room's data: the frame, its catalog and the next rid to assign.

    Invariants: ``frame`` columns are ``_rid`` (UInt64, unique, ascending)
    followed by the catalog's columns, by name, in catalog order, each with
    the catalog dtype; every rid in the frame is < ``next_rid``.
    """

    frame: pl.DataFrame
    catalog: Catalog
    next_rid: int
    # One-slot cache for rids(): the frame never changes, so neither does it.
    _rid_cache: list[np.ndarray] = field(default_factory=list, compare=False, repr=False)

    def rids(self) -> np.ndarray:
        """The ascending rid array as uint64 (computed once per state; read-only)."""
        if not self._rid_cache:
            arr = np.asarray(self.frame.get_column(RID).to_numpy(), dtype=np.uint64)
            arr.flags.writeable = False
            dense = len(arr) > 0 and int(arr[-1]) - int(arr[0]) == len(arr) - 1
            self._rid_cache.extend([arr, np.uint64(arr[0]) if dense else None])
        return self._rid_cache[0]

    def with_frame(self, frame: pl.DataFrame) -> State:
        """This state with ``frame`` in place of its own: same rows and ``_rid``, other values.

        The rid cache is shared, so the next state need not rebuild it.
        """
        return State(frame, self.catalog, self.next_rid, self._rid_cache)

    def dense_base(self) -> np.uint64 | None:
        """The first rid if the rids are exactly ``first .. first + height - 1`` (no gaps), else None.

        Then a rid's row position is ``rid - first``: no search (the common case,
        a frame with no deletes yet).
        """
        self.rids()
        base: np.uint64 | None = self._rid_cache[1]
        return base


@dataclass(slots=True)
class Effect:
    """What an op changed, so the room can build one delta per tick.

    ``cells`` maps column id → rids whose value in that column changed.
    ``full`` holds ids of columns whose every value must be re-sent (added,
    cast or restored columns). ``inserted``/``deleted`` are rids.
    """

    cells: dict[int, np.ndarray] = field(default_factory=dict)
    full: set[int] = field(default_factory=set)
    inserted: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    deleted: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    schema_changed: bool = False


@dataclass(frozen=True, slots=True)
class Applied:
    """The result of one op: the new state, ops that undo it, and its effect."""

    state: State
    inverse: tuple[Op, ...]
    effect: Effect
