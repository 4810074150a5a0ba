"""The room registry: one live Room per open (dataset, branch).

Until durable storage lands (issue 3), datasets live in memory: a room that
unloads after its last client left writes its state back here, together
with its seq, so a reopened room continues where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import polars as pl

from protocol import ErrorCode

from ..ops import normalize_frame
from ..ops.state import OpError, State
from .room import Room, RoomConfig

__all__ = ["Registry", "DatasetEntry", "NAME_RE", "check_name"]

log = logging.getLogger("coframe.registry")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str) -> str:
    """Validate a dataset name (never a path).

    Raises:
        OpError: ``bad_field``.
    """
    if not NAME_RE.match(name) or ".." in name:
        raise OpError(
            ErrorCode.BAD_FIELD,
            f"invalid dataset name {name!r}: use 1-128 letters, digits, '_', '.' or '-',"
            " starting with a letter or digit",
        )
    return name


@dataclass(slots=True)
class DatasetEntry:
    name: str
    state: State
    seq: int = 0


class Registry:
    """Datasets known to this node and the rooms open on them."""

    def __init__(self, config: RoomConfig | None = None, *, idle_unload: float = 300.0) -> None:
        self.config = config or RoomConfig()
        self.idle_unload = idle_unload
        self.datasets: dict[str, DatasetEntry] = {}
        self.rooms: dict[tuple[str, str], Room] = {}
        self._unloaders: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._lock = asyncio.Lock()

    def add_frame(self, name: str, frame: pl.DataFrame) -> DatasetEntry:
        """Register a dataset from a plain frame (dtypes normalized, rids assigned).

        Raises:
            OpError: bad name, existing name, or unsupported dtypes.
        """
        check_name(name)
        if name in self.datasets:
            raise OpError(ErrorCode.COLUMN_EXISTS, f"dataset '{name}' already exists")
        df, catalog = normalize_frame(frame)
        entry = DatasetEntry(name, State(df, catalog, df.height))
        self.datasets[name] = entry
        return entry

    async def open(self, dataset: str, branch: str = "main") -> Room:
        """The live room for (dataset, branch), loading it if needed.

        Raises:
            KeyError: no such dataset.
        """
        key = (dataset, branch)
        async with self._lock:
            room = self.rooms.get(key)
            if room is not None:
                timer = self._unloaders.pop(key, None)
                if timer is not None:
                    timer.cancel()
                return room
            if branch != "main":
                raise KeyError(f"dataset '{dataset}' has no branch '{branch}' (branches come with storage)")
            entry = self.datasets[dataset]
            room = Room(
                dataset, branch, entry.state, entry.seq, config=self.config, on_empty=self._schedule_unload
            )
            room.start()
            self.rooms[key] = room
            return room

    def _schedule_unload(self, room: Room) -> None:
        key = (room.dataset, room.branch)
        if key in self._unloaders or self.rooms.get(key) is not room:
            return
        loop = asyncio.get_running_loop()
        self._unloaders[key] = loop.call_later(self.idle_unload, lambda: loop.create_task(self.unload(room)))

    async def unload(self, room: Room) -> None:
        key = (room.dataset, room.branch)
        async with self._lock:
            self._unloaders.pop(key, None)
            if self.rooms.get(key) is not room or room.sessions:
                return
            del self.rooms[key]
        state = await room.close()
        self.datasets[room.dataset] = DatasetEntry(room.dataset, state, room.core.seq)
        log.info("unloaded room %s at seq %d", room.name, room.core.seq)

    async def close(self) -> None:
        for timer in self._unloaders.values():
            timer.cancel()
        self._unloaders.clear()
        for room in list(self.rooms.values()):
            state = await room.close()
            self.datasets[room.dataset] = DatasetEntry(room.dataset, state, room.core.seq)
        self.rooms.clear()

    def describe(self) -> list[dict[str, object]]:
        out = []
        for name, entry in sorted(self.datasets.items()):
            room = self.rooms.get((name, "main"))
            state = room.state if room is not None else entry.state
            out.append(
                {
                    "name": name,
                    "rows": state.frame.height,
                    "columns": [c.to_wire() for c in state.catalog.columns],
                    "seq": room.seq if room is not None else entry.seq,
                    "live": room is not None,
                    "clients": len(room.sessions) if room is not None else 0,
                }
            )
        return out
