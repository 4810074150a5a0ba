"""Per-client undo and redo stacks; a set-only batch's entry reads its prior values at the flush.

Reading a batch's prior values when it is applied would cost a gather per
message; the overlay's flush reads them for the whole tick with one gather
per column (:func:`server.ops.prior_values`) and hands each entry its slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from protocol import Op, SetCells

from ..ops import SetPlan
from ..ops.cells import arrow_scalars

__all__ = ["Stacks", "LazyInverse", "UndoEntry", "entry_ops"]


@dataclass(slots=True)
class Stacks:
    """A client's undo and redo entries (a set-only batch's entry is a :class:`LazyInverse`)."""

    undo: list[Any] = field(default_factory=list)
    redo: list[Any] = field(default_factory=list)


class LazyInverse:
    """The undo entry of a set-only batch: its prior values are read at the next flush.

    Reading them per batch would cost a gather per message; at the flush they
    come from one gather per column for the whole tick (:func:`server.ops.prior_values`).
    """

    __slots__ = ("plans", "prior")

    def __init__(self, plans: tuple[SetPlan, ...]) -> None:
        self.plans = plans
        self.prior: list[pa.Array] | None = None

    def ops(self) -> tuple[Op, ...]:
        """The inverse batch: each set written back with its prior values, last op first."""
        assert self.prior is not None, "an undo entry read before the overlay was flushed"
        return tuple(
            SetCells(tuple(p.rids.tolist()), p.col.id, tuple(arrow_scalars(old)))
            for p, old in zip(reversed(self.plans), reversed(self.prior), strict=True)
        )


UndoEntry = tuple[Op, ...] | LazyInverse


def entry_ops(entry: UndoEntry) -> tuple[Op, ...]:
    """The ops of an undo entry (a lazy one must have its prior values by now)."""
    return entry.ops() if isinstance(entry, LazyInverse) else entry
