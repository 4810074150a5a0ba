"""The storage facade: catalog + chunk store, in the terms rooms and the API use.

Storage is always there: on disk (:meth:`Storage.open`: chunk files plus a
SQLite or PostgreSQL catalog) or in memory (:meth:`Storage.memory`, for
``--memory``: the same code over :class:`.catalog_memory.MemoryCatalog` and a
:class:`.chunks.MemoryFS` chunk store, kept for the life of the process).

A dataset is created with one commit on branch ``main``. A room on a branch
loads the branch head commit, then replays the WAL after it. A commit
writes the changed chunks (in a worker thread), stores the manifest, moves
the branch with a compare-and-set, then trims the WAL it covers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..ops import normalize_frame
from ..ops.state import Catalog, State
from .catalog import open_catalog
from .catalog_memory import MemoryCatalog
from .chunks import ChunkStore
from .commits import ChunkPool, dirty_ranges, load_state, write_commit
from .types import CatalogStore, Manifest, NotFound, Ref, WalEntry

__all__ = ["Storage", "BranchHandle", "WAL_REPLY_TAIL"]

# WAL entries kept below a commit so resends still get their original ack.
WAL_REPLY_TAIL = 10_000


@dataclass(slots=True)
class BranchHandle:
    """What a room needs to stay durable on one branch."""

    storage: Storage
    dataset: str
    branch: str
    head: Manifest

    async def append(self, entries: list[WalEntry]) -> None:
        await self.storage.catalog.append_wal(self.dataset, self.branch, entries)

    async def commit(
        self,
        state: State,
        seq: int,
        dirty: np.ndarray | None,
        *,
        author: str,
        message: str,
        clients: dict[str, int],
    ) -> Manifest:
        manifest = await self.storage.write(
            self.dataset, state, parent=self.head, dirty=dirty, author=author, message=message, seq=seq,
            clients=clients,
        )  # fmt: skip
        await self.storage.catalog.move_branch(self.dataset, self.branch, manifest.id, self.head.id)
        self.head = manifest
        await self.storage.catalog.trim_wal(self.dataset, self.branch, seq - WAL_REPLY_TAIL)
        return manifest


class Storage:
    """A catalog (SQLite, PostgreSQL or memory) plus a chunk store (files or memory)."""

    def __init__(self, catalog: CatalogStore, chunks: ChunkStore) -> None:
        self.catalog = catalog
        self.chunks = chunks
        self.pool = ChunkPool()  # chunk encode/decode threads, stopped by close()

    @classmethod
    async def open(cls, data_dir: Path, catalog_url: str | None = None) -> Storage:
        """Chunk files under ``data_dir/chunks``; the catalog ``catalog_url`` names (see ``open_catalog``).

        Raises:
            ValueError: an unknown catalog URL. StorageError: a catalog newer than this coframe.
            OSError: the directory or the database cannot be reached.
        """
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        catalog = await open_catalog(catalog_url, data_dir)
        return cls(catalog, ChunkStore(data_dir / "chunks"))

    @classmethod
    def memory(cls) -> Storage:
        """Storage in this process's memory: every feature works, nothing outlives the process."""
        return cls(MemoryCatalog(), ChunkStore.memory())

    @classmethod
    async def for_settings(cls, data_dir: str | None, catalog_url: str | None = None) -> Storage:
        """:meth:`memory` when ``data_dir`` is None (or empty), else :meth:`open` on it.

        Raises:
            As :meth:`open`.
        """
        if not data_dir:
            return cls.memory()
        return await cls.open(Path(data_dir), catalog_url)

    @property
    def kind(self) -> str:
        """What ``/healthz`` reports: ``memory``, or the catalog's class name."""
        return "memory" if isinstance(self.catalog, MemoryCatalog) else type(self.catalog).__name__

    async def close(self) -> None:
        try:
            await self.catalog.close()
        finally:
            await asyncio.to_thread(self.pool.close)

    async def write(
        self,
        dataset: str,
        state: State,
        *,
        parent: Manifest | None,
        dirty: np.ndarray | None,
        author: str,
        message: str,
        seq: int,
        clients: dict[str, int] | None = None,
    ) -> Manifest:
        """Write the chunks and the manifest of a commit (not moving any ref)."""
        ranges = None if dirty is None or parent is None else dirty_ranges(dirty)
        manifest = await asyncio.to_thread(
            write_commit,
            self.chunks,
            state,
            dataset=dataset,
            parent=parent,
            dirty=ranges,
            author=author,
            message=message,
            seq=seq,
            time=time.time(),
            clients=dict(clients or {}),
            pool=self.pool,
        )
        await self.catalog.put_commit(manifest)
        return manifest

    async def create_dataset(self, name: str, frame: pl.DataFrame, *, author: str, message: str) -> Manifest:
        """A new dataset with one commit on ``main``.

        Raises:
            AlreadyExists: the name is taken (nothing is written).
            OpError: the frame has a ``_rid`` column or an unsupported dtype.
        """
        df, catalog = normalize_frame(frame)
        state = State(df, catalog, df.height)
        await self.catalog.create_dataset(name)
        try:
            manifest = await self.write(
                name, state, parent=None, dirty=None, author=author, message=message, seq=0
            )
            await self.catalog.create_ref(Ref(name, "main", manifest.id, "branch"))
        except BaseException:
            await self.catalog.drop_dataset(name)
            raise
        return manifest

    async def state_of(self, manifest: Manifest) -> State:
        return await asyncio.to_thread(load_state, self.chunks, manifest, pool=self.pool)

    async def open_branch(
        self, dataset: str, branch: str
    ) -> tuple[BranchHandle, State, list[WalEntry], list[WalEntry]]:
        """The branch head's state, the WAL entries to replay after it, and the
        older entries kept only for their replies.

        Raises:
            NotFound: no such dataset or branch.
        """
        ref = await self.catalog.get_ref(dataset, branch, "branch")
        head = await self.catalog.get_commit(dataset, ref.commit)
        state = await self.state_of(head)
        wal = await self.catalog.read_wal(dataset, branch, 0)
        replay = [e for e in wal if e.seq > head.seq]
        tail = [e for e in wal if e.seq <= head.seq]
        return BranchHandle(self, dataset, branch, head), state, replay, tail

    async def resolve(self, dataset: str, ref: str) -> Manifest:
        """A commit by tag, branch or (prefix of) commit id.

        Raises:
            NotFound: nothing by that name.
        """
        for kind in ("tag", "branch"):
            try:
                r = await self.catalog.get_ref(dataset, ref, kind)
                return await self.catalog.get_commit(dataset, r.commit)
            except NotFound:
                pass
        return await self.catalog.get_commit(dataset, ref)

    # ------------------------------------------------------------ refs and history

    async def create_branch(self, dataset: str, name: str, source: str = "main") -> Manifest:
        """Create branch ``name`` at ``source`` (a branch, tag or commit).

        A branch made from a branch starts at that branch's last commit:
        uncommitted live edits stay on their branch.

        Raises:
            NotFound: no such source. AlreadyExists: the branch exists.
        """
        manifest = await self.resolve(dataset, source)
        await self.catalog.create_ref(Ref(dataset, name, manifest.id, "branch"))
        return manifest

    async def create_tag(self, dataset: str, name: str, at: str = "main") -> Manifest:
        """Tag ``at`` (a branch, tag or commit). Tags never move.

        Raises:
            NotFound: no such version. AlreadyExists: the tag exists.
        """
        manifest = await self.resolve(dataset, at)
        await self.catalog.create_ref(Ref(dataset, name, manifest.id, "tag"))
        return manifest

    async def log(self, dataset: str, ref: str = "main", limit: int = 100) -> list[Manifest]:
        """Commits reachable from ``ref`` by first parents, newest first."""
        head = await self.resolve(dataset, ref)
        return await self.catalog.log(dataset, head.id, limit)

    async def revert(self, dataset: str, branch: str, to: str, *, author: str, live_seq: int) -> Manifest:
        """A new commit on ``branch`` whose data is version ``to``.

        The caller must have closed the branch's room and committed its WAL
        (``live_seq`` is the seq it reached), so the new commit continues it.

        Raises:
            NotFound: no such branch or version.
        """
        ref = await self.catalog.get_ref(dataset, branch, "branch")
        head = await self.catalog.get_commit(dataset, ref.commit)
        target = await self.resolve(dataset, to)
        state = await self.state_of(target)
        # Rids and column ids keep growing past everything the branch has seen.
        state = State(
            state.frame,
            Catalog(state.catalog.columns, max(state.catalog.next_id, head.next_col)),
            max(state.next_rid, head.next_rid),
        )
        manifest = await self.write(
            dataset, state, parent=head, dirty=None, author=author,
            message=f"revert to {target.id[:12]}", seq=max(live_seq, head.seq) + 1, clients=head.clients,
        )  # fmt: skip
        await self.catalog.move_branch(dataset, branch, manifest.id, head.id)
        await self.catalog.trim_wal(dataset, branch, manifest.seq)
        return manifest
