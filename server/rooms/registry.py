"""The room registry: one live Room per open (dataset, branch).

Every registry has storage (PROTOCOL.md section 13, "Durability and
versions"): on disk, or in memory with ``--memory``, which runs the same code
over an in-memory catalog and chunk store. Opening a room is recovery (the
branch head commit, then a replay of the WAL after it); an idle room commits
its WAL tail and unloads.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

import polars as pl

from protocol import CloseCode, ErrorCode

from ..ops.state import OpError, State
from .config import RoomConfig
from .listeners import ViewsFactory
from .recovery import recover
from .room import Room

if TYPE_CHECKING:
    from ..storage.service import Storage
    from ..storage.types import Manifest

__all__ = ["Registry", "NAME_RE", "check_name"]

log = logging.getLogger("coframe.registry")

# Always used with fullmatch: ``$`` would let a name end in a newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(name: str) -> str:
    """Validate a dataset name (never a path).

    Raises:
        OpError: ``bad_field``.
    """
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise OpError(
            ErrorCode.BAD_FIELD,
            f"invalid dataset name {name!r}: use 1-128 letters, digits, '_', '.' or '-',"
            " starting with a letter or digit",
        )
    return name


class Registry:
    """Datasets known to this node and the rooms open on them."""

    def __init__(
        self,
        config: RoomConfig | None = None,
        *,
        storage: Storage,
        idle_unload: float = 300.0,
        views: ViewsFactory | None = None,
    ) -> None:
        self.config = config or RoomConfig()
        self.views = views  # each room's live views (server.perspective.service.LiveViews in the app)
        self.idle_unload = idle_unload
        self.storage = storage
        self.rooms: dict[tuple[str, str], Room] = {}
        self._unloaders: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._unloading: set[asyncio.Task[None]] = set()  # idle unloads under way; close() awaits them
        self._lock = asyncio.Lock()

    async def exists(self, dataset: str) -> bool:
        return dataset in await self.storage.catalog.list_datasets()

    async def names(self) -> list[str]:
        return sorted(await self.storage.catalog.list_datasets())

    async def create(
        self, name: str, frame: pl.DataFrame, *, author: str = "coframe", message: str = "import"
    ) -> Manifest:
        """Add a dataset: its first commit, on branch ``main``.

        Raises:
            OpError: a bad name or frame. AlreadyExists: the name is taken.
        """
        check_name(name)
        return await self.storage.create_dataset(name, frame, author=author, message=message)

    async def open(self, dataset: str, branch: str = "main") -> Room:
        """The live room for (dataset, branch), loading it if needed.

        Loading is recovery: the branch head commit, then a replay of the
        WAL after it.

        Raises:
            NotFound: no such dataset or branch.
        """
        key = (dataset, branch)
        async with self._lock:
            room = self.rooms.get(key)
            if room is not None and room.broken:
                del self.rooms[key]
                await room.close()
                room = None
            if room is not None:
                self._keep(key)
                return room
            room = await self._recover(dataset, branch)
            room.start()
            self.rooms[key] = room
            return room

    async def _recover(self, dataset: str, branch: str) -> Room:
        handle, core, replayed = await recover(self.storage, dataset, branch)
        room = Room(
            dataset, branch, core.state, core.seq, config=self.config, on_empty=self._schedule_unload,
            durable=handle, core=core, views=self.views,
        )  # fmt: skip
        room.durability.uncommitted = replayed
        log.info(
            "recovered %s/%s: commit %s (seq %d) + %d WAL entries",
            dataset, branch, handle.head.id[:12], handle.head.seq, replayed,
        )  # fmt: skip
        return room

    async def open_at(self, dataset: str, ref: str) -> Room:
        """A read-only room at a past version (a commit id or prefix, a tag or a branch).

        Raises:
            NotFound: no such version.
        """
        manifest = await self.storage.resolve(dataset, ref)
        key = (dataset, "@" + manifest.id)
        async with self._lock:
            room = self.rooms.get(key)
            if room is None:
                state = await self.storage.state_of(manifest)
                room = Room(
                    dataset, "@" + manifest.id[:12], state, manifest.seq, config=self.config, read_only=True,
                    on_empty=self._schedule_unload, views=self.views, storage=self.storage,
                )  # fmt: skip
                room.start()
                self.rooms[key] = room
            else:
                self._keep(key)
            return room

    def _keep(self, key: tuple[str, str]) -> None:
        """Cancel a pending idle unload of the room at ``key``."""
        timer = self._unloaders.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _key(self, room: Room) -> tuple[str, str]:
        for key, r in self.rooms.items():
            if r is room:
                return key
        return (room.dataset, room.branch)

    def _schedule_unload(self, room: Room) -> None:
        key = self._key(room)
        if key in self._unloaders or self.rooms.get(key) is not room:
            return
        loop = asyncio.get_running_loop()
        self._unloaders[key] = loop.call_later(self.idle_unload, self._unload_idle, room)

    def _unload_idle(self, room: Room) -> None:
        """Start the idle unload of ``room`` as a task the registry owns."""
        task = asyncio.get_running_loop().create_task(self.unload(room), name=f"unload:{room.name}")
        self._unloading.add(task)
        task.add_done_callback(self._unloaded)

    def _unloaded(self, task: asyncio.Task[None]) -> None:
        self._unloading.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("idle unload failed", exc_info=task.exception())

    async def unload(self, room: Room) -> None:
        key = self._key(room)
        async with self._lock:
            self._unloaders.pop(key, None)
            if self.rooms.get(key) is not room or room.sessions or room.views.watchers:
                return
            del self.rooms[key]
        await room.close()
        log.info("unloaded room %s at seq %d", room.name, room.core.seq)

    async def close(self) -> None:
        for timer in self._unloaders.values():
            timer.cancel()
        self._unloaders.clear()
        # An unload under way is flushing its room: let it finish (_unloaded logged any failure).
        await asyncio.gather(*self._unloading, return_exceptions=True)
        for room in list(self.rooms.values()):
            await room.close()
        self.rooms.clear()
        try:
            if self.views is not None:
                await self.views.close()
        finally:
            await self.storage.close()

    async def describe(self) -> list[dict[str, object]]:
        """Every dataset: rows, columns and seq of ``main`` (live if open), branches and tags."""
        out: list[dict[str, object]] = []
        for name in await self.names():
            room = self.rooms.get((name, "main"))
            if room is not None:
                rows, columns, seq = room.state.frame.height, room.state.catalog.to_wire(), room.seq
            else:
                ref = await self.storage.catalog.get_ref(name, "main", "branch")
                head = await self.storage.catalog.get_commit(name, ref.commit)
                rows, columns, seq = head.rows, list(head.schema), head.seq
            branches = [r.name for r in await self.storage.catalog.list_refs(name, "branch")]
            tags = [r.name for r in await self.storage.catalog.list_refs(name, "tag")]
            out.append(
                {
                    "name": name,
                    "rows": rows,
                    "columns": columns,
                    "seq": seq,
                    "live": room is not None,
                    "clients": len(room.sessions) if room is not None else 0,
                    "branches": branches,
                    "tags": tags,
                }
            )
        return out

    async def live_state(self, dataset: str, branch: str = "main") -> State:
        """The branch's current state: the open room's, or recovered (commit + WAL).

        Raises:
            NotFound: no such dataset or branch.
        """
        room = self.rooms.get((dataset, branch))
        if room is not None:
            return room.state
        _, core, _ = await recover(self.storage, dataset, branch)
        return core.state

    async def revert(self, dataset: str, branch: str, to: str, *, author: str) -> Manifest:
        """Make a new commit on ``branch`` whose data is version ``to``.

        Holds the registry lock throughout: the branch's room (opened if
        needed, so its WAL tail is committed first) closes with 1012, the
        revert commit is written, and only then can a reconnecting client
        load the branch again, at the reverted commit.

        Raises:
            NotFound: no such branch or version.
        """
        target = await self.storage.resolve(dataset, to)
        async with self._lock:
            room = self.rooms.pop((dataset, branch), None)
            self._keep((dataset, branch))
            if room is None:
                room = await self._recover(dataset, branch)  # not started: just to commit its WAL tail
            await room.close(CloseCode.RELOADING, f"reverted to {target.id[:12]}; reconnect")
            return await self.storage.revert(
                dataset, branch, target.id, author=author, live_seq=room.core.seq
            )
