"""Per-cell CRDT metadata: a last-writer register per cell, plus tombstones.

PROTOCOL.md §6 "Order and conflicts". Each written cell remembers its last write
as ``(seq, writer)``, but only while that write is newer than the room's
low-water mark (the oldest ``base_seq`` a connected client may still send).
Older entries are pruned and count as "before the mark": an op whose
``base_seq`` is below the mark cannot see a conflict with a pruned write.

The registers are whole numpy arrays per column, indexed by rid: ``seq``
(int64, 0 = no write remembered) and ``writer`` (int32, 0 = none), where a
writer id is a small integer mapped to the client id in a side table. So
recording, checking and pruning a batch of cells is a few vectorised array
operations, never Python work per cell (issue 9, the tick's hot path). A
column's arrays exist only while it has remembered writes: a prune that
leaves a column empty frees them, so an idle room holds none.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from protocol import Error, ErrorCode

from ..ops.arrays import unique_sorted
from ..ops.state import OpError

__all__ = ["CellClock", "Write", "ColumnFate", "Writers"]

_NO_RIDS = np.empty(0, dtype=np.int64)


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


class Writers:
    """The side table of writer ids: a small integer per client (later: per user), from 1."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._names: list[str] = [""]  # id 0 = no writer

    def id(self, client: str) -> int:
        """The writer id of ``client``, assigned on first use."""
        wid = self._ids.get(client)
        if wid is None:
            wid = self._ids[client] = len(self._names)
            self._names.append(client)
        return wid

    def known(self, client: str) -> int:
        """The writer id of ``client``, or 0 if it never wrote."""
        return self._ids.get(client, 0)

    def name(self, wid: int) -> str:
        return self._names[wid]


class _Registers:
    """One column's registers: ``seq`` and ``writer`` per rid, grown on demand."""

    __slots__ = ("seq", "writer", "live")

    def __init__(self, size: int) -> None:
        self.seq = np.zeros(size, dtype=np.int64)
        self.writer = np.zeros(size, dtype=np.int32)
        self.live = 0  # cells with a remembered write

    def reserve(self, top: int) -> None:
        """Make room for rids below ``top``."""
        size = len(self.seq)
        if top <= size:
            return
        new = max(top, 2 * size)
        self.seq = np.concatenate([self.seq, np.zeros(new - size, dtype=np.int64)])
        self.writer = np.concatenate([self.writer, np.zeros(new - size, dtype=np.int32)])


def _as_rids(rids: Iterable[int] | np.ndarray) -> np.ndarray:
    if isinstance(rids, np.ndarray):
        return rids.astype(np.int64, copy=False)
    return np.fromiter((int(r) for r in rids), dtype=np.int64)


class CellClock:
    """Last-write registers, row tombstones and column history."""

    def __init__(self, *, max_row_tombstones: int = 1000, max_column_fates: int = 1000) -> None:
        self.writers = Writers()
        self._cells: dict[int, _Registers] = {}
        # (seq, col_id, rids) in seq order, for pruning below the mark.
        self._log: deque[tuple[int, int, np.ndarray]] = deque()
        self._rows: deque[tuple[int, str, np.ndarray]] = deque(maxlen=max_row_tombstones)
        self._columns: deque[ColumnFate] = deque(maxlen=max_column_fates)
        self.mark = 0

    # ------------------------------------------------------------ cell writes

    def record(self, seq: int, client: str, col_id: int, rids: Iterable[int] | np.ndarray) -> None:
        """``client`` wrote these cells (distinct rids) of ``col_id`` at ``seq``."""
        arr = _as_rids(rids)
        if not len(arr):
            self._log.append((seq, col_id, _NO_RIDS))
            return
        reg = self._cells.get(col_id)
        top = int(arr.max()) + 1
        if reg is None:
            reg = self._cells[col_id] = _Registers(top)
        reg.reserve(top)
        reg.live += len(arr) - int(np.count_nonzero(reg.writer[arr]))
        reg.seq[arr] = seq
        reg.writer[arr] = self.writers.id(client)
        self._log.append((seq, col_id, arr))

    def record_run(self, col_id: int, seqs: list[int], clients: list[str], rids: list[np.ndarray]) -> None:
        """Many writes to ``col_id`` in seq order, as :meth:`record` one by one would leave them.

        ``seqs[i]``, ``clients[i]`` and ``rids[i]`` (distinct rids) describe one
        write. The registers are updated with one scatter for the whole run
        (a rid written several times keeps its last write).
        """
        if not seqs:
            return
        for seq, arr in zip(seqs, rids, strict=True):
            self._log.append((seq, col_id, arr))
        lengths = np.fromiter((len(a) for a in rids), dtype=np.int64, count=len(rids))
        flat = np.concatenate(rids).astype(np.int64, copy=False) if len(rids) > 1 else rids[0]
        if not len(flat):
            return
        wid = self.writers.id
        seq_of = np.repeat(np.asarray(seqs, dtype=np.int64), lengths)
        wids = np.fromiter((wid(c) for c in clients), dtype=np.int32, count=len(clients))
        wid_of = np.repeat(wids, lengths)
        # The last write of each rid: unique over the reversed run.
        uniq, first_in_reversed = np.unique(flat[::-1], return_index=True)
        last = len(flat) - 1 - first_in_reversed
        top = int(uniq[-1]) + 1
        reg = self._cells.get(col_id)
        if reg is None:
            reg = self._cells[col_id] = _Registers(top)
        reg.reserve(top)
        reg.live += len(uniq) - int(np.count_nonzero(reg.writer[uniq]))
        reg.seq[uniq] = seq_of[last]
        reg.writer[uniq] = wid_of[last]

    def last_write(self, col_id: int, rid: int) -> Write | None:
        reg = self._cells.get(col_id)
        if reg is None or not 0 <= rid < len(reg.seq) or not reg.writer[rid]:
            return None
        return Write(int(reg.seq[rid]), self.writers.name(int(reg.writer[rid])))

    def concurrent_at(
        self, col_id: int, rids: np.ndarray, base_seq: int, client: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Writes to these cells by another client after ``base_seq``, vectorised.

        Returns ``(index, seq, writer)``: the indices into ``rids`` (in order)
        of the concurrent cells, and the seq and writer id of each one's write.
        """
        reg = self._cells.get(col_id)
        if reg is None or not len(rids):
            return _NO_RIDS, _NO_RIDS, _NO_RIDS
        if int(rids.max()) >= len(reg.seq):  # rids never written in this column (yet)
            inside = np.flatnonzero(rids < len(reg.seq))
            idx, s, w = self.concurrent_at(col_id, rids[inside], base_seq, client)
            return inside[idx], s, w
        s = reg.seq[rids]
        # seq 0 is "no write": every write has a seq >= 1.
        hit = s > max(base_seq, 0)
        if not hit.any():
            return _NO_RIDS, _NO_RIDS, _NO_RIDS
        idx = np.flatnonzero(hit)
        w = reg.writer[rids[idx]]
        mine = w == self.writers.known(client)
        if mine.any():
            idx, w = idx[~mine], w[~mine]
        return idx, s[idx], w

    def concurrent_cells(
        self, col_id: int, rids: np.ndarray, base_seqs: np.ndarray, wids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`concurrent_at` for many writers at once: ``(index, seq, writer)`` of the hits.

        Cell ``i`` is written by writer id ``wids[i]`` (0: one that never
        wrote) from ``base_seqs[i]``; a hit is a write to it by another
        writer after that.
        """
        reg = self._cells.get(col_id)
        if reg is None or not len(rids):
            return _NO_RIDS, _NO_RIDS, _NO_RIDS
        inside = rids < len(reg.seq)
        if not inside.all():
            idx = np.flatnonzero(inside)
            i, s, w = self.concurrent_cells(col_id, rids[idx], base_seqs[idx], wids[idx])
            return idx[i], s, w
        s = reg.seq[rids]
        w = reg.writer[rids]
        idx = np.flatnonzero((s > np.maximum(base_seqs, 0)) & (w != wids))
        return idx, s[idx], w[idx]

    def concurrent(
        self, col_id: int, rids: Iterable[int], base_seq: int, client: str
    ) -> list[tuple[int, Write]]:
        """Writes to these cells by another client after ``base_seq``, as ``(rid, Write)``."""
        arr = _as_rids(rids)
        idx, seqs, wids = self.concurrent_at(col_id, arr, base_seq, client)
        name = self.writers.name
        return [
            (r, Write(s, name(w)))
            for r, s, w in zip(arr[idx].tolist(), seqs.tolist(), wids.tolist(), strict=True)
        ]

    def forget_column(self, col_id: int) -> None:
        self._cells.pop(col_id, None)

    def prune(self, mark: int) -> int:
        """Drop writes at or below ``mark``; return how many cells were dropped."""
        self.mark = max(self.mark, mark)
        by_col: dict[int, tuple[list[np.ndarray], list[int], list[int]]] = {}
        log = self._log
        while log and log[0][0] <= self.mark:
            seq, col_id, rids = log.popleft()
            if len(rids):
                parts, seqs, counts = by_col.setdefault(col_id, ([], [], []))
                parts.append(rids)
                seqs.append(seq)
                counts.append(len(rids))
        dropped = 0
        for col_id, (parts, seqs, counts) in by_col.items():
            reg = self._cells.get(col_id)
            if reg is None:
                continue
            rids = np.concatenate(parts) if len(parts) > 1 else parts[0]
            at = np.repeat(np.asarray(seqs, dtype=np.int64), counts)
            # Still this write (no later one)? A rid written twice in the range
            # matches only its latest write, so each cell is dropped once.
            gone = rids[(reg.seq[rids] == at) & (reg.writer[rids] != 0)]
            gone = unique_sorted(gone)
            reg.seq[gone] = 0
            reg.writer[gone] = 0
            reg.live -= len(gone)
            dropped += len(gone)
            if reg.live <= 0:
                del self._cells[col_id]
        return dropped

    def __len__(self) -> int:
        return sum(reg.live for reg in self._cells.values())

    # ------------------------------------------------------------ explaining errors

    def explain(self, e: OpError) -> Error:
        """``e`` as an ``error`` reply that names what happened: the rename, drop or delete behind it."""
        message = e.message
        details = dict(e.details)
        if e.code == ErrorCode.NO_SUCH_COLUMN and "column" in details:
            fate = self.column_fate(details["column"])
            if fate is not None:
                ref = details["column"]
                what = f"'{ref}'" if isinstance(ref, str) else f"id {ref}"
                if fate.new_name is not None:
                    message = (
                        f"column {what} was renamed to '{fate.new_name}' at seq {fate.seq} by {fate.client};"
                        f" use its new name or its id {fate.col_id}"
                    )
                    details.update(renamed_to=fate.new_name, at_seq=fate.seq, by=fate.client, id=fate.col_id)
                else:
                    message = f"column {what} was dropped at seq {fate.seq} by {fate.client}"
                    details.update(dropped_at_seq=fate.seq, by=fate.client)
        elif e.code == ErrorCode.NO_SUCH_ROW and details.get("rids"):
            rid = int(details["rids"][0])
            fate_row = self.row_fate(rid)
            if fate_row is not None:
                message = f"row {rid} was deleted at seq {fate_row[0]} by {fate_row[1]}; it cannot be edited"
                details.update(deleted_at_seq=fate_row[0], by=fate_row[1])
        if "op_index" in details:
            message = f"ops[{details['op_index']}]: {message}"
        return Error(e.code, message, details)

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
