"""The content-addressed Parquet chunk store (PROTOCOL.md section 13, "Durability and versions").

A chunk is one Parquet file (zstd) named by the sha256 of its bytes and kept
at ``ab/cdef….parquet`` under the store root. The writer options are fixed
(see :data:`WRITE_OPTIONS`) so the same table always gives the same bytes,
hence the same name: writing an existing chunk is a no-op.

The byte I/O sits behind :class:`BlobFS`, a tiny interface with two
backends: a local directory (:class:`LocalFS`: temp file in the same
directory, fsync, ``os.replace``, fsync of the directory) and this process's
memory (:class:`MemoryFS`: the Parquet bytes in a dict, for ``--memory``).
Everything above the bytes (encoding, hashing, reading, scanning, garbage
collection) is the same code for both. An object-store backend (e.g. a
``pyarrow.fs.S3FileSystem``) only needs those methods.

Chunks are shared between commits and datasets. The garbage collector
(:mod:`.gc`) deletes the ones no manifest references; so that it never
deletes a chunk a commit under way is about to reference, :meth:`ChunkStore.put_bytes`
*holds* every hash it stores or reuses (an in-process set, released once the
manifest is in the catalog) and refreshes the modification time of a chunk
it reuses (for writers in other processes, which the grace period covers).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from protocol.dtypes import is_arrow_string

__all__ = [
    "BlobFS",
    "LocalFS",
    "MemoryFS",
    "ChunkStore",
    "WRITE_OPTIONS",
    "column_options",
    "encode_parquet",
    "hash_of_key",
]

# Fixed writer options: the same table gives the same bytes (no timestamps are
# written; ``created_by`` names the pyarrow version, so an upgrade may change
# hashes, which only costs new files, never correctness). Per-column encodings
# follow from the schema (see :func:`column_options`).
WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 1,
    "write_statistics": True,
    "write_page_index": False,
    "data_page_version": "1.0",
    "version": "2.6",
    "store_schema": True,  # keeps time zones and unsigned types exact
    "row_group_size": 1 << 20,  # larger than any chunk: one row group per file
}


_TMP_PREFIX = ".tmp-"


class BlobFS(Protocol):
    """Where chunk bytes live; keys are relative ``/``-separated paths."""

    def exists(self, key: str) -> bool: ...

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically and durably (readers never see a partial file)."""

    def source(self, key: str) -> str | bytes:
        """What the readers take: a local path, or the file's bytes. Raises FileNotFoundError."""

    def locate(self, key: str) -> str:
        """A human-readable location (a local path, or a URL)."""

    def touch(self, key: str) -> bool:
        """Set the modification time of ``key`` to now; False if it does not exist."""

    def remove(self, key: str) -> None:
        """Delete ``key`` (no error if it is gone)."""

    def mtime(self, key: str) -> float | None:
        """The modification time of ``key`` (unix seconds), or None if it does not exist."""

    def items(self) -> Iterator[tuple[str, float, int]]:
        """``(key, modification time, bytes)`` of every stored blob, temp files included."""


class LocalFS:
    """A local directory; writes are atomic (temp + ``os.replace``) and fsynced."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def locate(self, key: str) -> str:
        return str(self.root / key)

    def exists(self, key: str) -> bool:
        return os.path.exists(self.root / key)

    def source(self, key: str) -> str:
        return str(self.root / key)

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        parent = path.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(parent.parent)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=_TMP_PREFIX, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; chunks are ordinary files
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(parent)

    def remove_temp_files(self) -> int:
        """Delete temp files a crash left behind; return how many. Call at startup only."""
        n = 0
        for p in self.root.glob(f"*/{_TMP_PREFIX}*"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def touch(self, key: str) -> bool:
        try:
            os.utime(self.root / key)
        except FileNotFoundError:
            return False
        return True

    def remove(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def mtime(self, key: str) -> float | None:
        try:
            return os.stat(self.root / key).st_mtime
        except FileNotFoundError:
            return None

    def items(self) -> Iterator[tuple[str, float, int]]:
        for sub in os.scandir(self.root):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed meanwhile
                    continue
                yield f"{sub.name}/{entry.name}", st.st_mtime, st.st_size


class MemoryFS:
    """Chunk bytes in a dict, for the life of the process (``coframe serve --memory``).

    ``put`` is atomic (one dict assignment); nothing is durable, by design.
    """

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.mtimes: dict[str, float] = {}

    def locate(self, key: str) -> str:
        return f"memory:{key}"

    def exists(self, key: str) -> bool:
        return key in self.blobs

    def source(self, key: str) -> bytes:
        try:
            return self.blobs[key]
        except KeyError:
            raise FileNotFoundError(f"chunk {key} is not in this process's memory store") from None

    def put(self, key: str, data: bytes) -> None:
        self.mtimes[key] = time.time()
        self.blobs[key] = bytes(data)

    def touch(self, key: str) -> bool:
        if key not in self.blobs:
            return False
        self.mtimes[key] = time.time()
        return True

    def remove(self, key: str) -> None:
        self.blobs.pop(key, None)
        self.mtimes.pop(key, None)

    def mtime(self, key: str) -> float | None:
        return self.mtimes.get(key) if key in self.blobs else None

    def items(self) -> Iterator[tuple[str, float, int]]:
        for key, data in list(self.blobs.items()):
            yield key, self.mtimes.get(key, 0.0), len(data)

    @property
    def nbytes(self) -> int:
        """Bytes held (every chunk of every commit made in this process)."""
        return sum(len(b) for b in self.blobs.values())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def column_options(schema: pa.Schema) -> dict[str, Any]:
    """Encodings by type: dictionary for text, delta for ints/dates/timestamps, plain otherwise.

    Delta packs rids and other sorted or narrow integers to a few bits per
    value; measured on the demo data it is both smaller and faster to write
    than dictionary-everything.
    """
    dictionary, delta = [], {}
    for f in schema:
        if is_arrow_string(f.type):
            dictionary.append(f.name)
        elif pa.types.is_integer(f.type) or pa.types.is_temporal(f.type):
            delta[f.name] = "DELTA_BINARY_PACKED"
    return {"use_dictionary": dictionary, "column_encoding": delta}


def encode_parquet(table: pa.Table) -> bytes:
    """The deterministic Parquet bytes of ``table`` (chunks combined first, fixed options)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table.combine_chunks(), sink, **WRITE_OPTIONS, **column_options(table.schema))
    return sink.getvalue().to_pybytes()


def _check_hash(h: str) -> str:
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise ValueError(f"not a chunk hash: {h!r} (want 64 lowercase hex digits)")
    return h


def hash_of_key(key: str) -> str | None:
    """The chunk hash a key ``ab/cdef….parquet`` names, or None (a temp file, anything else)."""
    head, sep, tail = key.partition("/")
    if not sep or not tail.endswith(".parquet") or len(head) != 2:
        return None
    h = head + tail[: -len(".parquet")]
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        return None
    return h


class ChunkStore:
    """Content-addressed Parquet chunks under ``root`` (or any :class:`BlobFS`)."""

    def __init__(self, root: Path | str | None = None, *, fs: BlobFS | None = None) -> None:
        if (root is None) == (fs is None):
            raise ValueError("give exactly one of root or fs")
        self.fs: BlobFS = fs if fs is not None else LocalFS(root)  # type: ignore[arg-type]
        # Hashes a commit under way in this process stores or reuses, until its
        # manifest is in the catalog: the GC never removes them (see :mod:`.gc`).
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def memory(cls) -> ChunkStore:
        """A store whose chunks live in this process's memory (:class:`MemoryFS`)."""
        return cls(fs=MemoryFS())

    @staticmethod
    def key(h: str) -> str:
        h = _check_hash(h)
        return f"{h[:2]}/{h[2:]}.parquet"

    def path(self, h: str) -> str:
        """Where chunk ``h`` lives (a local path for :class:`LocalFS`)."""
        return self.fs.locate(self.key(h))

    def exists(self, h: str) -> bool:
        return self.fs.exists(self.key(h))

    def write(self, table: pa.Table) -> tuple[str, int]:
        """Store ``table`` as a chunk; return ``(sha256 hex, bytes)``. Skips the write if present."""
        return self.put_bytes(encode_parquet(table))

    def put_bytes(self, data: bytes, *, hold: bool = False) -> tuple[str, int]:
        """Store already-encoded Parquet bytes under their hash; return ``(hash, bytes)``.

        A chunk already stored is not written again; its modification time is
        refreshed, so a garbage collector in another process sees it as young
        (the grace period). With ``hold`` the hash is also held (:meth:`hold`)
        before anything is checked, so this process's collector keeps it until
        :meth:`release`.
        """
        h = hashlib.sha256(data).hexdigest()
        key = self.key(h)
        if hold:
            self.hold([h])
        if not self.fs.touch(key):
            self.fs.put(key, data)
        return h, len(data)

    def hold(self, hashes: Iterable[str]) -> None:
        """Keep ``hashes`` from this process's garbage collector until :meth:`release` (counted)."""
        with self._lock:
            self._held.update(hashes)

    def release(self, hashes: Iterable[str]) -> None:
        """Undo one :meth:`hold` of each hash."""
        with self._lock:
            self._held.subtract(hashes)
            for h in [h for h, n in self._held.items() if n <= 0]:
                del self._held[h]

    def held(self) -> set[str]:
        """The hashes held right now (a copy)."""
        with self._lock:
            return set(self._held)

    def remove_unheld(self, key: str, older_than: float) -> bool:
        """Delete ``key`` unless its hash is held or it was modified at ``older_than`` or later.

        Checked and removed under the lock :meth:`hold` takes, so a commit of this
        process that holds the hash first keeps it, and one that holds it after
        finds it gone and writes it again. Returns whether it was removed.
        """
        h = hash_of_key(key)
        with self._lock:
            if h is not None and self._held.get(h, 0) > 0:
                return False
            mtime = self.fs.mtime(key)
            if mtime is None or mtime >= older_than:
                return False
            self.fs.remove(key)
        return True

    def items(self) -> Iterator[tuple[str, float, int]]:
        """``(key, modification time, bytes)`` of every blob in the store (see :func:`hash_of_key`)."""
        return self.fs.items()

    def check(self, h: str) -> str | None:
        """None if chunk ``h`` is stored and its bytes hash to ``h``; else ``"missing"`` or ``"hash"``."""
        try:
            src = self.fs.source(self.key(h))
            if isinstance(src, bytes):
                digest = hashlib.sha256(src).hexdigest()
            else:
                with open(src, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            return "missing"
        return None if digest == h else "hash"

    def read(self, h: str, columns: list[str] | None = None) -> pa.Table:
        """Chunk ``h`` as an Arrow table (only ``columns`` if given; all must exist)."""
        src = self.fs.source(self.key(h))
        return pq.read_table(
            pa.BufferReader(src) if isinstance(src, bytes) else src, columns=columns, use_threads=False
        )

    def read_frame(self, h: str, columns: list[str] | None = None) -> pl.DataFrame:
        """Chunk ``h`` as a Polars frame (faster than :meth:`read` + ``pl.from_arrow``)."""
        return pl.read_parquet(self.fs.source(self.key(h)), columns=columns)

    def scan(self, hashes: Sequence[str], schema: Mapping[str, pl.DataType]) -> pl.LazyFrame:
        """The rows of several chunks, in the given order, as one lazy frame with ``schema``.

        A column of ``schema`` missing from a chunk reads as nulls; columns
        not in ``schema`` are ignored. Polars reads the files in parallel.
        """
        sources = [self.fs.source(self.key(h)) for h in hashes]
        return pl.scan_parquet(
            sources,  # type: ignore[arg-type]
            schema=dict(schema),
            missing_columns="insert",
            extra_columns="ignore",
            glob=False,
            hive_partitioning=False,
        )
