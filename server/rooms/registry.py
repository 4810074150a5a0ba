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
import time
from typing import TYPE_CHECKING

import polars as pl

from protocol import CloseCode

from ..ops import NAME_RE, check_ref_name
from ..ops.state import State
from ..storage.types import NotFound, StorageCorrupt
from .config import RoomConfig
from .exprpool import ExprPool
from .listeners import ViewsFactory
from .recovery import recover
from .room import Room

if TYPE_CHECKING:
    from ..storage.service import Storage
    from ..storage.types import Manifest

__all__ = ["Registry", "NAME_RE", "check_name", "CORRUPT_RETRY"]

log = logging.getLogger("coframe.registry")

# A room whose storage is corrupt is not loaded again for this long (unless its
# branch moves): joiners get the remembered ``storage_corrupt`` at once.
CORRUPT_RETRY = 60.0


def check_name(name: str) -> str:
    """Validate a dataset name (never a path; the rule of :func:`server.ops.check_ref_name`).

    Raises:
        OpError: ``bad_name``.
    """
    return check_ref_name(name, "dataset")


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
        # Expressions run in worker processes under memory and time limits, started on first use.
        self.exprs = ExprPool(memory_bytes=self.config.expr_memory_bytes, timeout=self.config.expr_timeout)
        self._expr_cost = self.exprs.cost(self.config.expr_max_literal)
        # (dataset, branch or "@commit") → (head commit, when, error) of a load that found corruption
        self.corrupt: dict[tuple[str, str], tuple[str, float, StorageCorrupt]] = {}

    async def exists(self, dataset: str) -> bool:
        return dataset in await self.storage.catalog.list_datasets()

    async def names(self) -> list[str]:
        return sorted(await self.storage.catalog.list_datasets())

    async def create(
        self,
        name: str,
        frame: pl.DataFrame,
        *,
        author: str = "coframe",
        message: str = "import",
        rids: str = "new",
    ) -> Manifest:
        """Add a dataset: its first commit, on branch ``main`` (one catalog transaction).

        ``rids`` says what to do with a ``_rid`` column: ``new`` or ``keep``.

        Raises:
            OpError: a bad name or frame. AlreadyExists: the name is taken.
        """
        check_name(name)
        return await self.storage.create_dataset(name, frame, author=author, message=message, rids=rids)

    async def open(self, dataset: str, branch: str = "main") -> Room:
        """The live room for (dataset, branch), loading it if needed.

        Loading is recovery: the branch head commit, then a replay of the
        WAL after it.

        Raises:
            OpError: a bad name. NotFound: no such dataset or branch.
            StorageCorrupt: a chunk of the head commit is missing or corrupt (remembered
                for :data:`CORRUPT_RETRY` seconds, or until the branch moves).
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
            head = await self._known_corrupt(key, dataset, branch)
            try:
                room = await self._recover(dataset, branch)
            except StorageCorrupt as e:
                raise self._corrupt(key, head, e) from None
            room.start()
            self.rooms[key] = room
            return room

    async def _known_corrupt(self, key: tuple[str, str], dataset: str, branch: str) -> str:
        """The branch head; raises the remembered corruption if a load of that head failed lately."""
        check_ref_name(dataset, "dataset")
        ref = await self.storage.catalog.get_ref(dataset, check_ref_name(branch, "branch"), "branch")
        head = ref.commit
        known = self.corrupt.get(key)
        if known is not None:
            commit, when, error = known
            if commit == head and time.monotonic() - when < CORRUPT_RETRY:
                raise error
            del self.corrupt[key]
        return head

    def _corrupt(self, key: tuple[str, str], head: str, e: StorageCorrupt) -> StorageCorrupt:
        """Remember a corrupt load and log it: one line per failed load, no traceback."""
        self.corrupt[key] = (head, time.monotonic(), e)
        log.error("cannot load %s/%s: %s", key[0], key[1], e.message)
        return e

    async def _recover(self, dataset: str, branch: str) -> Room:
        handle, core, replayed = await recover(self.storage, dataset, branch)
        room = Room(
            dataset, branch, core.state, core.seq, config=self.config, on_empty=self._schedule_unload,
            durable=handle, core=core, views=self.views, exprs=self._expr_cost,
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
                known = self.corrupt.get(key)
                if known is not None and time.monotonic() - known[1] < CORRUPT_RETRY:
                    raise known[2]
                try:
                    state = await self.storage.state_of(manifest)
                except StorageCorrupt as e:
                    raise self._corrupt(key, manifest.id, e) from None
                room = Room(
                    dataset, "@" + manifest.id[:12], state, manifest.seq, config=self.config, read_only=True,
                    on_empty=self._schedule_unload, views=self.views, storage=self.storage,
                    exprs=self._expr_cost,
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

    async def delete(self, dataset: str) -> None:
        """Close the dataset's open rooms (4004, "deleted") and delete it from storage.

        Its chunks go at the next chunk GC. Raises NotFound for an unknown dataset.
        """
        async with self._lock:
            keys = [k for k in self.rooms if k[0] == dataset]
            for key in keys:
                timer = self._unloaders.pop(key, None)
                if timer is not None:
                    timer.cancel()
            rooms = [self.rooms.pop(k) for k in keys]
            reason = f"dataset '{dataset}' was deleted"
            closing = (r.close(CloseCode.NO_SUCH_DATASET, reason) for r in rooms)
            await asyncio.gather(*closing, return_exceptions=True)
            await self.storage.delete_dataset(dataset)

    async def close_rooms(self, code: int = CloseCode.GOING_AWAY, reason: str = "room unloading") -> None:
        """Close every open room at once: each commits its WAL tail and closes its sessions.

        The rooms close concurrently, so one that cannot finish (its tick waits
        on a stuck worker) holds back no other; the caller bounds the wait.
        """
        for timer in self._unloaders.values():
            timer.cancel()
        self._unloaders.clear()
        rooms = list(self.rooms.values())
        self.rooms.clear()
        results = await asyncio.gather(*(room.close(code, reason) for room in rooms), return_exceptions=True)
        for room, result in zip(rooms, results, strict=True):
            if isinstance(result, BaseException):
                log.error("closing room %s failed", room.name, exc_info=result)

    async def close(self) -> None:
        for timer in self._unloaders.values():
            timer.cancel()
        self._unloaders.clear()
        # An unload under way is flushing its room: let it finish (_unloaded logged any failure).
        await asyncio.gather(*self._unloading, return_exceptions=True)
        try:
            await self.close_rooms()
        finally:
            try:
                await asyncio.to_thread(self.exprs.close)  # kills and reaps the expression workers
            except RuntimeError:  # the default executor is already shut down (a late shutdown)
                self.exprs.close()
            try:
                if self.views is not None:
                    await self.views.close()
            finally:
                await self.storage.close()

    async def describe(self) -> list[dict[str, object]]:
        """Every dataset: rows, columns and seq of ``main`` (live if open), branches and tags.

        A dataset that cannot be described (no ``main``, a commit the catalog
        cannot read, a room that found corrupt chunks) is listed with
        ``"broken"``: the reason, and what to do. It never fails the listing.
        """
        out: list[dict[str, object]] = []
        for name in await self.names():
            try:
                entry = await self._describe(name)
            except NotFound as e:
                if e.details.get("missing") == "dataset":
                    continue  # deleted meanwhile
                entry = _broken(name, e.message)
            except Exception as e:  # one broken dataset must not hide the others
                log.warning("cannot describe dataset %s: %s: %s", name, type(e).__name__, e)
                entry = _broken(name, f"{type(e).__name__}: {e}; run coframe fsck {name}")
            known = self.corrupt.get((name, "main"))
            if known is not None and "broken" not in entry:
                entry["broken"] = known[2].message
            out.append(entry)
        return out

    async def _describe(self, name: str) -> dict[str, object]:
        room = self.rooms.get((name, "main"))
        if room is not None:
            rows, columns, seq = room.state.frame.height, room.state.catalog.to_wire(), room.seq
        else:
            try:
                ref = await self.storage.catalog.get_ref(name, "main", "branch")
            except NotFound:
                if name not in await self.storage.catalog.list_datasets():
                    raise NotFound(f"dataset {name} is gone", missing="dataset") from None
                raise NotFound(
                    f"dataset '{name}' has no branch 'main'; run coframe fsck {name},"
                    f" or coframe delete {name} to remove it",
                    missing="branch",
                ) from None
            head = await self.storage.catalog.get_commit(name, ref.commit)
            rows, columns, seq = head.rows, list(head.schema), head.seq
        branches = [r.name for r in await self.storage.catalog.list_refs(name, "branch")]
        tags = [r.name for r in await self.storage.catalog.list_refs(name, "tag")]
        return {
            "name": name,
            "rows": rows,
            "columns": columns,
            "seq": seq,
            "live": room is not None,
            "clients": len(room.sessions) if room is not None else 0,
            "branches": branches,
            "tags": tags,
        }

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


def _broken(name: str, reason: str) -> dict[str, object]:
    """The listing entry of a dataset that cannot be described: ``broken`` says why."""
    return {
        "name": name,
        "rows": None,
        "columns": [],
        "seq": None,
        "live": False,
        "clients": 0,
        "branches": [],
        "tags": [],
        "broken": reason,
    }
