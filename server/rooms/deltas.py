"""One delta per tick, encoded once, and the log of recent deltas for resume.

PROTOCOL.md "delta": a delta carries the *net* effect of its seq range as
final values. Applying it is idempotent: re-applying upserts sets the same
values, and deleting an absent rid is a no-op. That is what lets a client
that joined mid-range, or resumed with ``since``, apply it safely.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from protocol import Delta, encode
from protocol.dtypes import frame_to_arrow

from ..ops.arrays import unique_sorted
from ..ops.cells import SetPlan, take_wire, written_wire
from ..ops.state import RID, Effect, State

# frame_to_arrow is the dtype vocabulary's (protocol.dtypes), re-exported for its callers here.
__all__ = ["DeltaBuilder", "DeltaLog", "EncodedDelta", "frame_to_arrow", "row_positions"]


_EMPTY = np.empty(0, dtype=np.uint64)


def _member(values: np.ndarray, sorted_rids: np.ndarray) -> np.ndarray:
    """Mask of ``values`` present in the ascending ``sorted_rids``.

    O(k log n) with searchsorted; ``np.isin`` would sort all n rids per tick.
    """
    n = len(sorted_rids)
    if n == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(sorted_rids, values)
    return sorted_rids[np.minimum(pos, n - 1)] == values


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return _EMPTY
    return unique_sorted(np.concatenate([np.asarray(p, dtype=np.uint64) for p in parts]))


def row_positions(state: State, rids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, positions)``: which ``rids`` are in ``state`` and the row positions of those."""
    base = state.dense_base()
    if base is not None:
        pos = rids - base  # a rid below the first wraps around to a huge position
        found = pos < state.frame.height
        return found, pos[found].astype(np.int64)
    found = _member(rids, state.rids())
    return found, np.searchsorted(state.rids(), rids[found]).astype(np.int64)


@dataclass(slots=True)
class DeltaBuilder:
    """Accumulates op effects over one tick."""

    cells: dict[int, list[np.ndarray]] = field(default_factory=dict)
    full: set[int] = field(default_factory=set)
    inserted: list[np.ndarray] = field(default_factory=list)
    deleted: list[np.ndarray] = field(default_factory=list)
    schema_changed: bool = False
    # The tick's set plans by column, while every change came from one (then
    # the delta is read from them, not the frame); None once another op ran.
    plans: dict[int, list[SetPlan]] | None = field(default_factory=dict)

    def add(self, effect: Effect) -> None:
        self.plans = None
        for col_id, rids in effect.cells.items():
            self.cells.setdefault(col_id, []).append(rids)
        self.full |= effect.full
        if len(effect.inserted):
            self.inserted.append(effect.inserted)
        if len(effect.deleted):
            self.deleted.append(effect.deleted)
        self.schema_changed |= effect.schema_changed

    def add_cells(self, col_id: int, rids: np.ndarray) -> None:
        self.plans = None
        self.cells.setdefault(col_id, []).append(rids)

    def add_plan(self, plan: SetPlan) -> None:
        """A planned ``set`` (the room's fast path)."""
        self.cells.setdefault(plan.col.id, []).append(plan.rids)
        if self.plans is not None:
            self.plans.setdefault(plan.col.id, []).append(plan)

    def _from_plans(self, after: State) -> pa.Table | None:
        """The upserts of a tick of ``set`` plans to one column, from the plans (None: not that case)."""
        if self.plans is None or len(self.plans) != 1 or self.full or self.inserted or self.deleted:
            return None
        ((col_id, plans),) = self.plans.items()
        col = plans[0].col
        if after.catalog.columns[after.catalog.position(col_id)] != col:
            return None  # the column changed since it was planned
        rids, values = written_wire(plans)
        return pa.Table.from_arrays([pa.array(rids), values], [RID, col.name]) if len(rids) else None

    def empty(self) -> bool:
        return not (self.cells or self.full or self.inserted or self.deleted or self.schema_changed)

    def build(
        self, before: State, after: State, seq_from: int, seq_to: int, by: tuple[str, ...], meta: bytes | None
    ) -> Delta:
        if not self.schema_changed and before.catalog is after.catalog:
            upserts = self._from_plans(after)
            if upserts is not None:
                return Delta(seq_from, seq_to, by, upserts, (), None, meta)
        after_rids = after.rids()
        deleted = _cat(self.deleted)
        if len(deleted):
            # Only rows that existed before the tick and are gone after it.
            deleted = deleted[_member(deleted, before.rids()) & ~_member(deleted, after_rids)]
        ids = {c.id for c in after.catalog.columns}
        full = self.full & ids
        inserted = _cat(self.inserted)
        if inserted.size:
            cols = [c for c in after.catalog.columns]
        else:
            touched = (set(self.cells) | full) & ids
            cols = [c for c in after.catalog.columns if c.id in touched]
        upserts: pa.Table | None = None
        names = [RID, *(c.name for c in cols)]
        if full:
            upserts = frame_to_arrow(after.frame.select(names))
        elif cols:
            rids = _cat([inserted, *(r for parts in self.cells.values() for r in parts)])
            found, pos = row_positions(after, rids)  # without rows deleted later in the tick
            if len(pos):
                # Arrow takes, not a Polars frame: no query plan per tick (issue 9).
                frame = after.frame
                columns = [pa.array(rids[found]), *(take_wire(frame.get_column(n), pos) for n in names[1:])]
                upserts = pa.Table.from_arrays(columns, names)
        schema = None
        if self.schema_changed or before.catalog.columns != after.catalog.columns:
            schema = tuple(after.catalog.to_wire())
        return Delta(
            seq_from,
            seq_to,
            by,
            None if upserts is None or upserts.num_rows == 0 else upserts,
            tuple(int(r) for r in deleted),
            schema,
            meta,
        )


class EncodedDelta:
    """A delta encoded at most once per envelope, shared by every subscriber."""

    __slots__ = ("delta", "seq_from", "seq_to", "_binary", "_text")

    def __init__(self, delta: Delta) -> None:
        self.delta = delta
        self.seq_from = delta.seq_from
        self.seq_to = delta.seq_to
        self._binary: bytes | None = None
        self._text: str | None = None

    def payload(self, binary: bool) -> bytes | str:
        if binary:
            if self._binary is None:
                self._binary = encode(self.delta, binary=True)  # type: ignore[assignment]
            return self._binary  # type: ignore[return-value]
        if self._text is None:
            self._text = encode(self.delta, binary=False)  # type: ignore[assignment]
        return self._text  # type: ignore[return-value]

    def size(self) -> int:
        """Bytes this entry holds: its encodings once made, else an estimate of its Arrow rows."""
        encoded = len(self._binary or b"") + len(self._text or "")
        if encoded:
            return encoded
        upserts = self.delta.upserts
        return (0 if upserts is None else upserts.nbytes) + 8 * len(self.delta.deleted)


class DeltaLog:
    """The most recent deltas, bounded by count and bytes, for ``since=`` resume."""

    def __init__(self, *, max_entries: int = 4096, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: deque[EncodedDelta] = deque()
        self._sizes: deque[int] = deque()  # each entry's size when it was appended
        self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def append(self, d: EncodedDelta) -> None:
        """Keep ``d`` (call after it was delivered, so its encodings count); drop the oldest over a bound."""
        size = d.size()
        self._entries.append(d)
        self._sizes.append(size)
        self._bytes += size
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            self._entries.popleft()
            self._bytes -= self._sizes.popleft()

    def clear(self) -> None:
        """Forget every delta: a resume from before now gets a snapshot."""
        self._entries.clear()
        self._sizes.clear()
        self._bytes = 0

    def since(self, seq: int, current: int) -> list[EncodedDelta] | None:
        """Deltas after ``seq`` up to ``current``; None if the log no longer reaches back."""
        if seq == current:
            return []
        if seq > current or not self._entries:
            return None
        out = [d for d in self._entries if d.seq_to > seq]
        if not out or out[0].seq_from != seq + 1:
            return None
        return out
