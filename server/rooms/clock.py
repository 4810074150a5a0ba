"""Per-cell CRDT metadata: a sparse LWW register per cell, plus tombstones.

PROTOCOL.md §6 "Order and conflicts". Each written cell remembers its last write
as ``(seq, client)``, but only while that write is newer than the room's
low-water mark (the oldest ``base_seq`` a connected client may still send).
Older entries are pruned and count as "before the mark": an op whose
``base_seq`` is below the mark cannot see a conflict with a pruned write.
That is the documented trade-off for memory that stays proportional to
recent writes instead of to the frame (PROTOCOL.md "Conflicts").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["CellClock", "Write", "ColumnFate"]


@dataclass(frozen=True, slots=True)
class Write:
    seq: int
    client: str


@dataclass(frozen=True, slots=True)
class ColumnFate:
    """What happened to a column name: renamed (``new_name``) or dropped."""

    col_id: int
    old_name: str
    new_name: str | None
    seq: int
    client: str


class CellClock:
    """Sparse last-write metadata, row tombstones and column history."""

    def __init__(self, *, max_row_tombstones: int = 1000, max_column_fates: int = 1000) -> None:
        self._cells: dict[int, dict[int, Write]] = {}
        # (seq, col_id, rids) in seq order, for pruning below the mark.
        self._log: deque[tuple[int, int, list[int]]] = deque()
        self._rows: deque[tuple[int, str, np.ndarray]] = deque(maxlen=max_row_tombstones)
        self._columns: deque[ColumnFate] = deque(maxlen=max_column_fates)
        self.mark = 0

    # ------------------------------------------------------------ cell writes

    def record(self, seq: int, client: str, col_id: int, rids: Iterable[int]) -> None:
        rid_list = [int(r) for r in rids]
        w = Write(seq, client)
        self._cells.setdefault(col_id, {}).update(dict.fromkeys(rid_list, w))
        self._log.append((seq, col_id, rid_list))

    def last_write(self, col_id: int, rid: int) -> Write | None:
        col = self._cells.get(col_id)
        return None if col is None else col.get(rid)

    def concurrent(
        self, col_id: int, rids: Iterable[int], base_seq: int, client: str
    ) -> list[tuple[int, Write]]:
        """Writes to these cells by another client after ``base_seq``."""
        col = self._cells.get(col_id)
        if not col:
            return []
        out = []
        for rid in rids:
            w = col.get(int(rid))
            if w is not None and w.seq > base_seq and w.client != client:
                out.append((int(rid), w))
        return out

    def forget_column(self, col_id: int) -> None:
        self._cells.pop(col_id, None)

    def prune(self, mark: int) -> int:
        """Drop writes at or below ``mark``; return how many cells were dropped."""
        self.mark = max(self.mark, mark)
        dropped = 0
        while self._log and self._log[0][0] <= self.mark:
            seq, col_id, rids = self._log.popleft()
            col = self._cells.get(col_id)
            if col is None:
                continue
            for rid in rids:
                w = col.get(rid)
                if w is not None and w.seq == seq:
                    del col[rid]
                    dropped += 1
            if not col:
                del self._cells[col_id]
        return dropped

    def __len__(self) -> int:
        return sum(len(c) for c in self._cells.values())

    # ------------------------------------------------------------ tombstones

    def record_deleted(self, seq: int, client: str, rids: np.ndarray) -> None:
        if len(rids):
            self._rows.append((seq, client, np.sort(np.asarray(rids, dtype=np.uint64))))

    def row_fate(self, rid: int) -> tuple[int, str] | None:
        """(seq, client) of the delete that removed ``rid``, if remembered."""
        needle = np.uint64(rid)
        for seq, client, rids in reversed(self._rows):
            i = np.searchsorted(rids, needle)
            if i < len(rids) and rids[i] == needle:
                return seq, client
        return None

    def record_column(self, fate: ColumnFate) -> None:
        self._columns.append(fate)

    def column_fate(self, ref: int | str) -> ColumnFate | None:
        """The latest rename or drop of the column named or numbered ``ref``."""
        for fate in reversed(self._columns):
            if (fate.col_id == ref) if isinstance(ref, int) else (fate.old_name == ref):
                return fate
        return None
