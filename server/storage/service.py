"""The storage facade: catalog + chunk store, in the terms rooms and the API use.

Storage is always there: on disk (:meth:`Storage.open`: chunk files plus a
SQLite or PostgreSQL catalog) or in memory (:meth:`Storage.memory`, for
``--memory``: the same code over :class:`.catalog_memory.MemoryCatalog` and a
:class:`.chunks.MemoryFS` chunk store, kept for the life of the process).

A dataset is created with one commit on branch ``main``, in one catalog
transaction (its chunks are written first). A room on a branch loads the
branch head commit, then replays the WAL after it. A commit writes the
changed chunks (in a worker thread), stores the manifest, moves the branch
with a compare-and-set, then trims the WAL it covers. Chunks no manifest
references any more are deleted by the garbage collector (:mod:`.gc`).

Every dataset, branch, tag and version name that reaches the catalog passes
:func:`server.ops.check_ref_name` here first (``bad_name``), so no entry point
can hand a NUL byte or a newline to SQLite or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..ops import check_ref_name, next_rid_of, normalize_frame
from ..ops.state import Catalog, State
from .catalog import open_catalog
from .catalog_memory import MemoryCatalog
from .chunks import ChunkStore
from .commits import ChunkPool, dirty_ranges, load_state, write_commit
from .gc import ChunkCollector, GcReport, collect
from .types import CatalogStore, Manifest, NotFound, Ref, WalEntry

__all__ = ["Storage", "BranchHandle", "WAL_REPLY_TAIL"]

log = logging.getLogger("coframe.storage")

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
        self.collector: ChunkCollector | None = None  # the background GC, once start_gc ran

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
            if self.collector is not None:
                await self.collector.close()
            await self.catalog.close()
        finally:
            await asyncio.to_thread(self.pool.close)

    # ------------------------------------------------------------ upkeep

    def start_gc(self, grace: float) -> ChunkCollector:
        """Start the background chunk GC: now, then periodically (stopped by :meth:`close`)."""
        if self.collector is None:
            self.collector = ChunkCollector(self.catalog, self.chunks, grace=grace)
            self.collector.start()
        return self.collector

    async def collect_garbage(self, grace: float) -> GcReport:
        """One mark-and-sweep pass over every dataset's chunks (see :mod:`.gc`)."""
        return await collect(self.catalog, self.chunks, grace=grace)

    async def repair(self) -> list[str]:
        """Remove half-created datasets; return one line per dataset removed (also logged).

        Before 0.5.0 a dataset was created in steps (the dataset, then its
        commit, then ``main``), so a crash in between left a dataset with no
        branch and no tag, which broke the listing and kept its name. Such a
        dataset never answered its upload or import, so it is removed (its
        commits and WAL with it; its chunks go at the next GC). A dataset that
        has other refs but no ``main`` is left alone: the listing shows it as
        broken.
        """
        done: list[str] = []
        for name in await self.catalog.list_datasets():
            if await self.catalog.list_refs(name, "branch") or await self.catalog.list_refs(name, "tag"):
                continue
            commits = await self.catalog.list_commits(name)
            try:
                await self.catalog.drop_dataset(name)
            except NotFound:  # dropped meanwhile
                continue
            line = (
                f"removed half-created dataset '{name}' ({len(commits)} commits, no branch or tag):"
                " an upload or import that never finished; upload it again"
            )
            log.warning("%s", line)
            done.append(line)
        return done

    async def delete_dataset(self, name: str) -> None:
        """Remove a dataset, its refs, commits and WAL; its chunks go at the next GC.

        Raises:
            OpError: a bad name. NotFound: no such dataset.
        """
        await self.catalog.drop_dataset(check_ref_name(name, "dataset"))
        if self.collector is not None:
            self.collector.poke()

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
        held: list[str] = []
        try:
            manifest = await self._write_chunks(
                dataset, state, parent, dirty, author, message, seq, clients, held
            )
            await self.catalog.put_commit(manifest)
        finally:
            self.chunks.release(held)  # the manifest is in the catalog now (or never will be)
        return manifest

    async def _write_chunks(
        self,
        dataset: str,
        state: State,
        parent: Manifest | None,
        dirty: np.ndarray | None,
        author: str,
        message: str,
        seq: int,
        clients: dict[str, int] | None,
        held: list[str],
    ) -> Manifest:
        """The chunks of a commit, written and held from the GC (``held``); its manifest."""
        ranges = None if dirty is None or parent is None else dirty_ranges(dirty)
        return await asyncio.to_thread(
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
            held=held,
        )

    async def create_dataset(
        self, name: str, frame: pl.DataFrame, *, author: str, message: str, rids: str = "new"
    ) -> Manifest:
        """A new dataset with one commit on ``main``, created in one catalog transaction.

        The chunks are written first; the dataset, its commit and ``main`` then
        appear together or not at all, so a crash never leaves half a dataset
        (a chunk nobody references goes at the next GC). ``rids`` says what to
        do with a ``_rid`` column (:func:`server.ops.normalize_frame`).

        Raises:
            OpError: a bad name (``bad_name``), an unsupported dtype, or ``_rid``
                values that cannot be kept.
            DatasetExists: the name is taken (the catalog is unchanged).
        """
        check_ref_name(name, "dataset")
        df, catalog = normalize_frame(frame, rids=rids)
        state = State(df, catalog, next_rid_of(df))
        held: list[str] = []
        try:
            manifest = await self._write_chunks(name, state, None, None, author, message, 0, None, held)
            await self.catalog.create_dataset(manifest)
        finally:
            self.chunks.release(held)
        return manifest

    async def state_of(self, manifest: Manifest) -> State:
        return await asyncio.to_thread(load_state, self.chunks, manifest, pool=self.pool)

    async def open_branch(
        self, dataset: str, branch: str
    ) -> tuple[BranchHandle, State, list[WalEntry], list[WalEntry]]:
        """The branch head's state, the WAL entries to replay after it, and the
        older entries kept only for their replies.

        Raises:
            OpError: a bad name. NotFound: no such dataset or branch.
            StorageCorrupt: a chunk of the head commit is missing or corrupt.
        """
        check_ref_name(dataset, "dataset")
        ref = await self.catalog.get_ref(dataset, check_ref_name(branch, "branch"), "branch")
        head = await self.catalog.get_commit(dataset, ref.commit)
        state = await self.state_of(head)
        wal = await self.catalog.read_wal(dataset, branch, 0)
        replay = [e for e in wal if e.seq > head.seq]
        tail = [e for e in wal if e.seq <= head.seq]
        return BranchHandle(self, dataset, branch, head), state, replay, tail

    async def resolve(self, dataset: str, ref: str) -> Manifest:
        """A commit by tag, branch or (prefix of) commit id.

        Raises:
            OpError: ``bad_name`` for a name that breaks the naming rule.
            NotFound: nothing by that name.
        """
        check_ref_name(dataset, "dataset")
        check_ref_name(ref, "version")
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
        await self.catalog.create_ref(Ref(dataset, check_ref_name(name, "branch"), manifest.id, "branch"))
        return manifest

    async def create_tag(self, dataset: str, name: str, at: str = "main") -> Manifest:
        """Tag ``at`` (a branch, tag or commit). Tags never move.

        Raises:
            NotFound: no such version. AlreadyExists: the tag exists.
        """
        manifest = await self.resolve(dataset, at)
        await self.catalog.create_ref(Ref(dataset, check_ref_name(name, "tag"), manifest.id, "tag"))
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
        ref = await self.catalog.get_ref(dataset, check_ref_name(branch, "branch"), "branch")
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
