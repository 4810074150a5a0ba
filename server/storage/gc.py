"""Chunk garbage collection: mark and sweep over every dataset (PROTOCOL.md §13).

Chunks are content-addressed and shared: by the commits of one dataset, and
by datasets whose rows hash the same. A chunk stays while any commit of any
dataset references it (every stored commit counts, reachable from a ref or
not: time travel may name any commit id). Once a dataset is deleted
(``coframe delete``), an upload fails after writing its chunks, or the
dataset is a half-created one removed at start-up, its chunks are garbage.

One pass (:func:`collect`):

1. **Snapshot** the hashes this process holds (:meth:`ChunkStore.hold`: a
   commit, import or upload under way holds every chunk it writes or reuses
   until its manifest is in the catalog) and the time.
2. **Mark**: the hashes every manifest in the catalog references, plus the
   snapshot.
3. **Sweep**: every chunk file not marked and modified before
   ``start - grace`` is removed, each checked again under the store's lock
   (:meth:`ChunkStore.remove_unheld`), so a commit that starts holding it
   meanwhile keeps it. Temp files a crash left behind go once they are older
   than the grace period and at least :data:`TEMP_MIN_AGE` (a writer may be
   filling one right now).

Why nothing a concurrent writer is about to reference is lost: a writer in
this process that held the hash before the snapshot is marked; one that holds
it after the snapshot writes the file or refreshes its modification time
after the snapshot, so it is younger than the cut-off. A writer in another
process (``coframe import`` next to a running server) does not share the
held set: its reused chunks are refreshed and its new ones are new, so the
grace period (``chunk_gc_grace``, an hour by default) covers it as long as
its commit takes less than that. docs/decisions.md explains the choice.

A chunk directory belongs to one catalog: the first pass writes the
catalog's identity beside it (``data/chunks.catalog``), and a pass run with
another catalog (say, an empty PostgreSQL one pointed at a directory a SQLite
catalog filled) refuses to sweep rather than deleting the other catalog's
chunks. A directory from before 0.5.0 (no such file) is claimed only by a
catalog that references at least one of its chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .catalog_pg import PostgresCatalog
from .catalog_sqlite import SqliteCatalog
from .chunks import ChunkStore, LocalFS, hash_of_key
from .types import CatalogStore

__all__ = ["GcReport", "collect", "ChunkCollector", "catalog_identity", "OWNER_SUFFIX", "MIN_INTERVAL"]

log = logging.getLogger("coframe.gc")

OWNER_SUFFIX = ".catalog"  # beside a local chunk store (``data/chunks.catalog``): its catalog's identity
_TEMP_SUFFIX = ".tmp"
MIN_INTERVAL = 60.0  # seconds between background passes at the least (else: every grace period)
TEMP_MIN_AGE = 3600.0  # a temp file younger than this may be a chunk being written: never removed
_TEMP = ".tmp-"


@dataclass(slots=True)
class GcReport:
    """What one pass did. ``skipped`` says why nothing was swept, when nothing was."""

    referenced: int = 0  # distinct hashes the catalog references (plus held ones)
    stored: int = 0  # chunk files seen
    removed: list[str] = field(default_factory=list)  # hashes (or temp keys) removed
    removed_bytes: int = 0
    kept_young: int = 0  # unreferenced, but younger than the grace period
    skipped: str | None = None

    def summary(self) -> str:
        if self.skipped:
            return f"chunk GC skipped: {self.skipped}"
        return (
            f"chunk GC: {len(self.removed)} unreferenced chunks removed ({self.removed_bytes:,} bytes),"
            f" {self.stored - len(self.removed)} kept ({self.referenced} referenced,"
            f" {self.kept_young} unreferenced but younger than the grace period)"
        )


def catalog_identity(catalog: CatalogStore, chunks: ChunkStore) -> str | None:
    """A name of the catalog's data that survives moving the data directory; None in memory.

    SQLite: the file, relative to the data directory when it is in it (the
    default layout, so a moved directory keeps its name). PostgreSQL: the
    database and the schema (not the host, which has many names).
    """
    if isinstance(catalog, SqliteCatalog):
        if catalog.path == ":memory:":
            return None
        path = Path(catalog.path).resolve()
        fs = chunks.fs
        if isinstance(fs, LocalFS) and path.parent == fs.root.resolve().parent:
            return f"sqlite:./{path.name}"
        return f"sqlite:{path}"
    if isinstance(catalog, PostgresCatalog):
        return f"postgresql:{urlsplit(catalog.dsn).path or '/'}?schema={catalog.schema or ''}"
    return None


def _marker(chunks: ChunkStore) -> Path | None:
    """Where the identity of the store's catalog is kept: beside a local store's directory."""
    fs = chunks.fs
    return fs.root.parent / f"{fs.root.name}{OWNER_SUFFIX}" if isinstance(fs, LocalFS) else None


def _refusal(
    marker: Path, identity: str, items: list[tuple[str, float, int]], marked: set[str]
) -> str | None:
    """Why this catalog may not sweep the store (another one owns it), or None, claiming it if unclaimed."""
    try:
        owner = marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        owner = None
    if owner == identity:
        return None
    if owner is not None:
        return (
            f"the chunk store belongs to the catalog {owner}, not {identity}; nothing was removed"
            f" (if that catalog is gone for good, delete {marker} to let this one collect)"
        )
    stored = {h for h in (hash_of_key(k) for k, _, _ in items) if h is not None}
    if stored and not stored & marked:  # chunks from before 0.5.0, and none is this catalog's
        return (
            f"the chunk store holds {len(stored)} chunks and the catalog {identity} references none of them;"
            f" nothing was removed (they may be another catalog's: if they are garbage, write {identity!r}"
            f" to {marker} to let this one collect)"
        )
    tmp = marker.with_name(marker.name + _TEMP_SUFFIX)
    tmp.write_text(identity + "\n", encoding="utf-8")
    tmp.replace(marker)
    return None


async def collect(catalog: CatalogStore, chunks: ChunkStore, *, grace: float) -> GcReport:
    """One mark-and-sweep pass; see the module docstring. Safe while rooms commit.

    Raises:
        StorageError, OSError: the catalog or the chunk store failed (nothing
            unreferenced-and-old is removed without a complete mark).
    """
    report = GcReport()
    start = time.time()
    marked = chunks.held()  # before the catalog read: see the module docstring
    marked |= await catalog.chunk_hashes()
    report.referenced = len(marked)
    items = await asyncio.to_thread(lambda: list(chunks.items()))
    identity, marker = catalog_identity(catalog, chunks), _marker(chunks)
    if identity is not None and marker is not None:
        report.skipped = await asyncio.to_thread(_refusal, marker, identity, items, marked)
        if report.skipped:
            return report
    cutoff = start - max(0.0, grace)
    await asyncio.to_thread(_sweep, chunks, items, marked, cutoff, min(cutoff, start - TEMP_MIN_AGE), report)
    return report


def _sweep(
    chunks: ChunkStore,
    items: list[tuple[str, float, int]],
    marked: set[str],
    cutoff: float,
    temp_cutoff: float,
    report: GcReport,
) -> None:
    for key, mtime, size in items:
        h = hash_of_key(key)
        if h is None:
            if not key.rpartition("/")[2].startswith(_TEMP):
                continue  # not ours: leave it
            cutoff_here = temp_cutoff
        else:
            report.stored += 1
            if h in marked:
                continue
            cutoff_here = cutoff
        if mtime >= cutoff_here:
            report.kept_young += h is not None
            continue
        if chunks.remove_unheld(key, cutoff_here):
            report.removed.append(h or key)
            report.removed_bytes += size


class ChunkCollector:
    """The background GC of one storage: a pass now, then every ``max(grace, 60 s)``.

    :meth:`poke` runs a pass soon (``Storage.delete_dataset`` pokes it). A
    failed pass logs one line and the next one tries again. :meth:`close`
    stops it.
    """

    def __init__(self, catalog: CatalogStore, chunks: ChunkStore, *, grace: float) -> None:
        self.catalog = catalog
        self.chunks = chunks
        self.grace = grace
        self.interval = max(MIN_INTERVAL, grace)
        self.passes = 0
        self.last: GcReport | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()  # set after each pass (tests wait on it)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="coframe:chunk-gc")

    def poke(self) -> None:
        """Run a pass as soon as the current one (if any) is done."""
        self._wake.set()

    async def wait_pass(self, after: int) -> GcReport | None:
        """Wait until more than ``after`` passes have finished; the last report."""
        while self.passes <= after:
            self._done.clear()
            await self._done.wait()
        return self.last

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                self.last = await collect(self.catalog, self.chunks, grace=self.grace)
            except Exception as e:  # the next pass tries again; one line, not a traceback per pass
                log.warning(
                    "chunk GC pass failed (%s: %s); retrying in %.0f s", type(e).__name__, e, self.interval
                )
            else:
                if self.last.skipped:
                    log.warning("%s", self.last.summary())
                elif self.last.removed:
                    log.info("%s", self.last.summary())
            self.passes += 1
            self._done.set()
            # Wait for the next period or a poke (runtime behaviour, not a test wait).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
