"""Commits: turn a room :class:`~server.ops.State` into chunks + a manifest, and back.

Rows are grouped by fixed rid ranges ``[k*R, (k+1)*R)`` (``R`` =
:data:`CHUNK_RIDS`); each non-empty range is one chunk holding ``_rid`` and
every catalog column stored as ``c{id}`` (ids, not names; sorted by id, so a
column move or rename never changes a chunk's bytes). A commit reuses the
parent's chunk for every range that is not dirty, so it costs in proportion
to what changed; a rename or a drop writes no chunk at all (the reader
ignores extra columns).

Sharing rules (:func:`write_commit`): the parent's chunk for range ``k`` is
reused when ``dirty`` is a set without ``k``, the parent's chunk covers the
same range with the same row count, it holds every current column id, and
every current column has the same dtype as in the parent's schema (so an
added, restored or recast column rewrites every chunk). Otherwise the range
is encoded; an already-stored hash is never written twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa

from protocol.dtypes import RID, RID_ARROW, RID_POLARS, arrow_type
from server.ops.dtypes import polars_dtype
from server.ops.state import Catalog, Column, State

from ..workers import TrackedExecutor
from .chunks import ChunkStore, encode_parquet
from .types import ChunkRef, Manifest, StorageCorrupt

__all__ = [
    "CHUNK_RIDS",
    "ChunkPool",
    "write_commit",
    "load_state",
    "dirty_ranges",
    "manifest_id",
    "arrow_type",
    "chunk_table",
    "corruption",
]

CHUNK_RIDS = 32768

_T = TypeVar("_T")
_R = TypeVar("_R")


class ChunkPool:
    """Worker threads that encode and decode the chunks of one commit in parallel.

    Parquet encoding/decoding and zstd release the GIL, so chunks go in
    parallel. The threads start on first use; whoever makes a pool closes it
    (the :class:`~server.storage.service.Storage` that owns it, on close), so
    no thread outlives the service that used it.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or min(8, os.cpu_count() or 2)
        self._executor: TrackedExecutor | None = None  # /healthz sees a stuck chunk write
        self._lock = threading.Lock()  # write_commit and load_state run in worker threads
        self._closed = False

    def map(self, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        """``list(map(fn, items))``, on the pool's threads when there is more than one item.

        Raises:
            RuntimeError: the pool is closed.
        """
        if len(items) <= 1:
            return [fn(x) for x in items]
        with self._lock:
            if self._closed:
                raise RuntimeError("the chunk pool is closed")
            if self._executor is None:
                self._executor = TrackedExecutor(max_workers=self.workers, thread_name_prefix="chunks")
            executor = self._executor
        return list(executor.map(fn, items))

    def close(self) -> None:
        """Stop the threads once the chunks under way are done (blocking; idempotent)."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def _map(pool: ChunkPool | None, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``list(map(fn, items))``: on ``pool`` if there is one, else in this thread."""
    return pool.map(fn, items) if pool is not None else [fn(x) for x in items]


def col_key(col_id: int) -> str:
    return f"c{col_id}"


def dirty_ranges(rids: np.ndarray | Iterable[int], R: int = CHUNK_RIDS) -> set[int]:
    """The chunk range indices (``rid // R``) touched by ``rids``."""
    arr = np.asarray(rids if isinstance(rids, np.ndarray) else list(rids), dtype=np.uint64)
    if arr.size == 0:
        return set()
    return set(np.unique(arr // np.uint64(R)).tolist())


def manifest_id(m: Manifest | Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON (sorted keys, no spaces) of every field except ``id``."""
    d = dict(m.to_json() if isinstance(m, Manifest) else m)
    d.pop("id", None)
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_table(frame: pl.DataFrame, columns: Sequence[Column]) -> pa.Table:
    """``frame`` (``_rid`` + columns by name) as a chunk table: ``_rid`` then ``c{id}`` by id."""
    cols = sorted(columns, key=lambda c: c.id)
    table = frame.select(pl.col(RID), *(pl.col(c.name).alias(col_key(c.id)) for c in cols)).to_arrow()
    schema = pa.schema(
        [pa.field(RID, RID_ARROW), *(pa.field(col_key(c.id), arrow_type(c.dtype)) for c in cols)]
    )
    return table if table.schema.equals(schema) else table.cast(schema)


def _range_bounds(rids: np.ndarray, R: int) -> list[tuple[int, int, int]]:
    """``(k, start, stop)`` for every non-empty range ``k``: rows ``start:stop`` of the frame."""
    if rids.size == 0:
        return []
    k0, k1 = int(rids[0]) // R, int(rids[-1]) // R
    if k1 - k0 <= rids.size:  # the usual case: a binary search per range boundary
        ks = np.arange(k0, k1 + 2, dtype=np.uint64)
        cuts = np.searchsorted(rids, ks * np.uint64(R)).tolist()
        return [(k0 + i, s, e) for i, (s, e) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)) if e > s]
    rk = rids // np.uint64(R)  # very sparse rids: one pass over the rows instead
    cuts = np.flatnonzero(rk[1:] != rk[:-1]) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    stops = np.concatenate((cuts, [rids.size])).tolist()
    return [(int(rk[s]), s, e) for s, e in zip(starts, stops, strict=True)]


def write_commit(
    store: ChunkStore,
    state: State,
    *,
    dataset: str,
    parent: Manifest | None,
    dirty: set[int] | None,
    author: str,
    message: str,
    seq: int,
    time: float,
    clients: Mapping[str, int] | None = None,
    extra_parents: Sequence[str] = (),
    chunk_rids: int = CHUNK_RIDS,
    pool: ChunkPool | None = None,
    held: list[str] | None = None,
) -> Manifest:
    """Write the chunks ``state`` needs and return its manifest (not yet in the catalog).

    ``dirty`` is the set of range indices (see :func:`dirty_ranges`) whose
    rows changed since ``parent`` (cells set, rows inserted or deleted);
    ``None`` means "unknown": every range is encoded, and only chunks whose
    hash is new are written. ``parents`` is ``(parent.id, *extra_parents)``.
    Chunks are encoded on ``pool`` (in this thread without one).
    With ``held``, every chunk stored or reused by hash is held from the
    garbage collector (:meth:`ChunkStore.hold`) and its hash appended to
    ``held``: the caller releases them once the manifest is in the catalog.
    Blocking (file I/O, fsync): call it off the event loop.
    """
    R = int(chunk_rids)
    cols = state.catalog.columns
    ids = {c.id for c in cols}
    rids = state.rids()
    reusable: dict[tuple[int, int], ChunkRef] = {}
    if parent is not None and dirty is not None:
        old = {int(d["id"]): d["dtype"] for d in parent.schema}
        if all(old.get(c.id) == c.dtype for c in cols):
            reusable = {(c.rid_lo, c.rid_hi): c for c in parent.chunks}

    refs: list[ChunkRef | None] = []
    jobs: list[tuple[int, int, int, int]] = []  # (slot, k, start, stop)
    for k, start, stop in _range_bounds(rids, R):
        ref = reusable.get((k * R, (k + 1) * R))
        if (
            ref is not None
            and dirty is not None
            and k not in dirty
            and ref.rows == stop - start
            and ids.issubset(ref.columns)
        ):
            refs.append(ref)
        else:
            jobs.append((len(refs), k, start, stop))
            refs.append(None)

    sorted_ids = tuple(sorted(ids))

    def encode(job: tuple[int, int, int, int]) -> ChunkRef:
        _, k, start, stop = job
        data = encode_parquet(chunk_table(state.frame.slice(start, stop - start), cols))
        h, nbytes = store.put_bytes(data, hold=held is not None)
        if held is not None:
            held.append(h)  # list.append is atomic: the pool's threads share it
        return ChunkRef(h, k * R, (k + 1) * R, stop - start, nbytes, sorted_ids)

    for job, ref in zip(jobs, _map(pool, encode, jobs), strict=True):
        refs[job[0]] = ref

    chunks = tuple(r for r in refs if r is not None)
    m = Manifest(
        id="",
        dataset=dataset,
        parents=((parent.id,) if parent is not None else ()) + tuple(extra_parents),
        author=author,
        message=message,
        time=float(time),
        seq=int(seq),
        schema=tuple(state.catalog.to_wire()),
        rows=state.frame.height,
        next_rid=int(state.next_rid),
        next_col=int(state.catalog.next_id),
        chunks=chunks,
        clients={str(k): int(v) for k, v in (clients or {}).items()},
    )
    return replace(m, id=manifest_id(m))


def load_state(
    store: ChunkStore, manifest: Manifest, *, rechunk: bool = False, pool: ChunkPool | None = None
) -> State:
    """The :class:`State` a manifest describes, dtypes exactly as its schema says.

    A column id missing from an (older) chunk reads as nulls of its dtype;
    extra columns in a chunk are ignored. The ``_rid`` column is contiguous;
    the others keep one piece per chunk unless ``rechunk`` (a full copy:
    about as long again as the load), which the ops compact on their own.
    Chunks that need a cast are read on ``pool`` (in this thread without one).

    Raises:
        StorageCorrupt: a chunk is missing or does not match its hash, or the
            chunks do not add up to the manifest's row count.
        OSError, PolarsError, ArrowException: reading failed with every chunk intact.
    """
    cols = tuple(Column(int(d["id"]), d["name"], d["dtype"]) for d in manifest.schema)
    catalog = Catalog(cols, int(manifest.next_col))
    targets = [polars_dtype(c.dtype) for c in cols]
    chunks = sorted(manifest.chunks, key=lambda r: r.rid_lo)
    if chunks:
        try:
            frame = _read_chunks(store, chunks, cols, targets, pool)
        except (OSError, ValueError, pl.exceptions.PolarsError, pa.ArrowException) as e:
            raise corruption(store, manifest) or e
        if rechunk:
            frame = frame.rechunk()
        elif frame.get_column(RID).n_chunks() > 1:
            frame = frame.with_columns(frame.get_column(RID).rechunk())
    else:
        frame = pl.DataFrame(
            schema={RID: RID_POLARS, **{c.name: t for c, t in zip(cols, targets, strict=True)}}
        )
    if frame.height != manifest.rows:
        raise corruption(store, manifest) or StorageCorrupt(
            f"commit {manifest.id[:12]} of dataset '{manifest.dataset}' says {manifest.rows} rows but its"
            f" chunks hold {frame.height}; the chunk store is inconsistent with the catalog:"
            f" run coframe fsck {manifest.dataset}",
            dataset=manifest.dataset,
            commit=manifest.id,
            chunk=None,
            problem="rows",
        )
    return State(frame, catalog, int(manifest.next_rid))


def _read_chunks(
    store: ChunkStore,
    chunks: Sequence[ChunkRef],
    cols: Sequence[Column],
    targets: Sequence[pl.DataType],
    pool: ChunkPool | None,
) -> pl.DataFrame:
    try:
        schema = {RID: RID_POLARS, **{col_key(c.id): t for c, t in zip(cols, targets, strict=True)}}
        renames = [pl.col(RID), *(pl.col(col_key(c.id)).alias(c.name) for c in cols)]
        return store.scan([r.hash for r in chunks], schema).select(renames).collect()
    except pl.exceptions.PolarsError:  # a chunk stores a column as another type: cast chunk by chunk
        parts = _map(pool, lambda r: _load_chunk(store, r, cols, targets), chunks)
        return pl.concat(parts, how="vertical")


def corruption(store: ChunkStore, manifest: Manifest) -> StorageCorrupt | None:
    """The first chunk of ``manifest`` that is missing or fails its content hash, as an error.

    None when every chunk is present and intact (the failure was something else).
    Reads and hashes each chunk: call it when loading failed, not on every load.
    """
    for ref in sorted(manifest.chunks, key=lambda r: r.rid_lo):
        problem = store.check(ref.hash)
        if problem is None:
            continue
        what = "is missing" if problem == "missing" else "does not match its content hash (sha256)"
        return StorageCorrupt(
            f"chunk {ref.hash[:12]} of commit {manifest.id[:12]} of dataset '{manifest.dataset}' {what}"
            f" ({store.path(ref.hash)}); the dataset cannot load: restore the file from a backup, or run"
            f" coframe fsck {manifest.dataset} to list every broken chunk",
            dataset=manifest.dataset,
            commit=manifest.id,
            chunk=ref.hash,
            path=store.path(ref.hash),
            problem=problem,
        )
    return None


def _load_chunk(
    store: ChunkStore, ref: ChunkRef, cols: Sequence[Column], targets: Sequence[pl.DataType]
) -> pl.DataFrame:
    """One chunk as frame rows: columns renamed, cast to their dtype, missing ones null."""
    have = set(ref.columns)
    df = store.read_frame(ref.hash, [RID, *(col_key(c.id) for c in cols if c.id in have)])
    exprs = [pl.col(RID).cast(RID_POLARS)]
    for c, t in zip(cols, targets, strict=True):
        if c.id in have:
            exprs.append(pl.col(col_key(c.id)).cast(t).alias(c.name))
        else:
            exprs.append(pl.lit(None, dtype=t).alias(c.name))
    return df.select(exprs)
