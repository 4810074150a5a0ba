"""Storage records and the catalog interface (PROTOCOL.md §13).

The catalog is one small async Protocol with three backends: embedded SQLite
(default), PostgreSQL (asyncpg) and memory (``--memory``). One contract test
suite runs against all three (tests/test_catalog_contract.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from protocol import CoframeError, ErrorCode

from .audit_types import AuditStore
from .auth_types import AuthStore

__all__ = [
    "ChunkRef",
    "Manifest",
    "WalEntry",
    "Ref",
    "CatalogStore",
    "StorageError",
    "NotFound",
    "AlreadyExists",
    "DatasetExists",
    "RefMoved",
    "StorageCorrupt",
]


class StorageError(CoframeError):
    """Storage failed (a closed catalog, a schema newer than this coframe, a corrupt commit).

    The base of the storage errors. Keyword arguments become ``details``, so a
    caller can tell cases apart without reading the message.
    """

    code = ErrorCode.INTERNAL
    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, details=details)


class NotFound(StorageError):
    """No such dataset, commit, branch or tag (or user, token or grant).

    ``details["missing"]`` says which: ``dataset``, ``commit``, ``branch``,
    ``tag``, ``ref``, ``user``, ``token`` or ``grant``; ``details["ambiguous"]``
    is true when a commit prefix matched several commits.
    """

    code = ErrorCode.NOT_FOUND
    status = 404


class AlreadyExists(StorageError):
    """A branch or tag (or a WAL seq, user name, token id or signing key id) that is already taken."""

    code = ErrorCode.ALREADY_EXISTS
    status = 409


class DatasetExists(AlreadyExists):
    """A dataset name that is already taken."""

    code = ErrorCode.DATASET_EXISTS


class RefMoved(StorageError):
    """A compare-and-set on a branch lost: the branch is no longer at the expected commit."""

    code = ErrorCode.CONFLICT
    status = 409


class StorageCorrupt(StorageError):
    """A chunk a commit needs is missing, unreadable or fails its content hash (sha256).

    ``details`` name the ``dataset``, the ``commit``, the ``chunk`` (its hash),
    where it lives (``path``) and the ``problem`` (``missing``, ``hash`` or
    ``unreadable``). The WebSocket sends it as ``storage_corrupt`` and closes
    4009; HTTP answers 500 with that code. ``coframe fsck`` lists every such chunk.
    """

    code = ErrorCode.STORAGE_CORRUPT
    status = 500


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One content-addressed Parquet file holding rows ``rid_lo <= _rid < rid_hi``.

    ``columns`` are the column ids stored in the file (as ``c{id}``), ``rows``
    the row count, ``bytes`` the file size, ``hash`` the file's sha256 hex,
    which is also its name in the chunk store.
    """

    hash: str
    rid_lo: int
    rid_hi: int
    rows: int
    bytes: int
    columns: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "rid_lo": self.rid_lo,
            "rid_hi": self.rid_hi,
            "rows": self.rows,
            "bytes": self.bytes,
            "columns": list(self.columns),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChunkRef:
        return cls(d["hash"], d["rid_lo"], d["rid_hi"], d["rows"], d["bytes"], tuple(d["columns"]))


@dataclass(frozen=True, slots=True)
class Manifest:
    """A commit: parents, author, message, time, seq, schema, row count, chunks.

    ``id`` is the sha256 hex of the canonical JSON of every other field.
    ``schema`` is the column catalog: ``[{"id", "name", "dtype"}]`` in order.
    ``next_rid``/``next_col`` let a loaded room keep never reusing ids.
    ``clients`` maps client id → highest client_seq applied up to ``seq``
    (exactly-once survives WAL trimming).
    """

    id: str
    dataset: str
    parents: tuple[str, ...]
    author: str
    message: str
    time: float  # unix seconds
    seq: int
    schema: tuple[dict[str, Any], ...]
    rows: int
    next_rid: int
    next_col: int
    chunks: tuple[ChunkRef, ...]
    clients: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset": self.dataset,
            "parents": list(self.parents),
            "author": self.author,
            "message": self.message,
            "time": self.time,
            "seq": self.seq,
            "schema": list(self.schema),
            "rows": self.rows,
            "next_rid": self.next_rid,
            "next_col": self.next_col,
            "chunks": [c.to_json() for c in self.chunks],
            "clients": dict(self.clients),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        return cls(
            d["id"],
            d["dataset"],
            tuple(d["parents"]),
            d["author"],
            d["message"],
            d["time"],
            d["seq"],
            tuple(d["schema"]),
            d["rows"],
            d["next_rid"],
            d["next_col"],
            tuple(ChunkRef.from_json(c) for c in d["chunks"]),
            dict(d.get("clients") or {}),
        )


@dataclass(frozen=True, slots=True)
class WalEntry:
    """One applied op batch: enough to replay it and to re-ack a resend."""

    seq: int
    client: str
    client_seq: int
    kind: str  # "op" | "undo" | "redo"
    ops: bytes  # msgpack of [op.to_wire()] with column ids resolved, tables as Arrow IPC
    reply: bytes  # msgpack of the ack map


@dataclass(frozen=True, slots=True)
class Ref:
    """A branch or tag: name → commit id."""

    dataset: str
    name: str
    commit: str
    kind: str  # "branch" | "tag"


class CatalogStore(AuthStore, AuditStore, Protocol):
    """The catalog: datasets, refs, commits and the WAL, plus identity and the audit trail.

    Identity is :class:`.auth_types.AuthStore`, the audit trail :class:`.audit_types.AuditStore`.

    Every method is a coroutine. Names are validated by the caller.
    Raises NotFound / AlreadyExists / RefMoved as documented.
    """

    async def open(self) -> None:
        """Connect and run pending migrations (versioned, idempotent)."""

    async def close(self) -> None: ...

    # datasets
    async def create_dataset(self, first: Manifest) -> None:
        """Create dataset ``first.dataset`` with its first commit and branch ``main`` at it.

        One transaction: no reader ever sees the dataset without its commit and
        its ``main`` (PROTOCOL.md §13, "Atomic creation"). Raises DatasetExists
        (nothing is written).
        """

    async def list_datasets(self) -> list[str]: ...

    async def drop_dataset(self, name: str) -> None:
        """Remove the dataset's refs, commits and WAL (its chunks go at the next GC). Raises NotFound."""

    # commits
    async def put_commit(self, manifest: Manifest) -> None:
        """Store a manifest (idempotent for the same id)."""

    async def get_commit(self, dataset: str, commit_id: str) -> Manifest:
        """Raises NotFound. ``commit_id`` may be a unique prefix of at least 6 hex chars."""

    async def log(self, dataset: str, head: str, limit: int = 100) -> list[Manifest]:
        """Commits reachable from ``head`` by first parents, newest first."""

    async def list_commits(self, dataset: str) -> list[Manifest]:
        """Every commit stored for ``dataset``, reachable from a ref or not, by seq then id.

        Returns [] for a dataset that does not exist.
        """

    async def chunk_hashes(self) -> set[str]:
        """The hash of every chunk that any commit of any dataset references (the GC's mark)."""

    # refs
    async def create_ref(self, ref: Ref) -> None:
        """Create a branch or tag. Raises AlreadyExists (a tag never moves)."""

    async def get_ref(self, dataset: str, name: str, kind: str) -> Ref:
        """Raises NotFound."""

    async def list_refs(self, dataset: str, kind: str) -> list[Ref]: ...

    async def move_branch(self, dataset: str, name: str, commit: str, expected: str | None) -> None:
        """Compare-and-set a branch head. Raises NotFound, RefMoved."""

    async def delete_ref(self, dataset: str, name: str, kind: str) -> None: ...

    # WAL
    async def append_wal(self, dataset: str, branch: str, entries: list[WalEntry]) -> None:
        """Append entries in ONE transaction (group commit), durable on return."""

    async def read_wal(self, dataset: str, branch: str, after_seq: int) -> list[WalEntry]:
        """Entries with seq > after_seq, in seq order."""

    async def trim_wal(self, dataset: str, branch: str, upto_seq: int) -> int:
        """Delete entries with seq <= upto_seq; return how many."""
