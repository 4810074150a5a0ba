"""The content-addressed Parquet chunk store (PROTOCOL.md section 13, "Durability and versions").

A chunk is one Parquet file (zstd) named by the sha256 of its bytes and kept
at ``ab/cdef….parquet`` under the store root. The writer options are fixed
(see :data:`WRITE_OPTIONS`) so the same table always gives the same bytes,
hence the same name: writing an existing chunk is a no-op.

The byte I/O sits behind :class:`BlobFS`, a tiny interface with two
backends: a local directory (:class:`LocalFS`: temp file in the same
directory, fsync, ``os.replace``, fsync of the directory) and this process's
memory (:class:`MemoryFS`: the Parquet bytes in a dict, for ``--memory``).
Everything above the bytes (encoding, hashing, reading, scanning) is the same
code for both. An object-store backend (e.g. a ``pyarrow.fs.S3FileSystem``)
only needs those four methods.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from protocol.dtypes import is_arrow_string

__all__ = ["BlobFS", "LocalFS", "MemoryFS", "ChunkStore", "WRITE_OPTIONS", "column_options", "encode_parquet"]

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


class MemoryFS:
    """Chunk bytes in a dict, for the life of the process (``coframe serve --memory``).

    ``put`` is atomic (one dict assignment); nothing is durable, by design.
    """

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

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
        self.blobs[key] = bytes(data)

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


class ChunkStore:
    """Content-addressed Parquet chunks under ``root`` (or any :class:`BlobFS`)."""

    def __init__(self, root: Path | str | None = None, *, fs: BlobFS | None = None) -> None:
        if (root is None) == (fs is None):
            raise ValueError("give exactly one of root or fs")
        self.fs: BlobFS = fs if fs is not None else LocalFS(root)  # type: ignore[arg-type]

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

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store already-encoded Parquet bytes under their hash; return ``(hash, bytes)``."""
        h = hashlib.sha256(data).hexdigest()
        key = self.key(h)
        if not self.fs.exists(key):
            self.fs.put(key, data)
        return h, len(data)

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
