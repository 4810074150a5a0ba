"""The embedded catalog: one SQLite file, one connection, one worker thread.

Each method is one transaction, run by the plumbing this class inherits from
:class:`~.sqlite_thread.SqliteThread` (one dedicated thread; writes take
``BEGIN IMMEDIATE``). ``journal_mode=WAL`` plus ``synchronous=FULL`` make a
committed ``append_wal`` survive kill -9 and power loss (PROTOCOL.md §13: an
op is acked only once durable). The identity methods (users, tokens, grants,
signing keys) are in :mod:`.catalog_sqlite_auth`, the audit trail in
:mod:`.catalog_sqlite_audit`.
"""

from __future__ import annotations

import sqlite3
import time

from .catalog_common import (
    BRANCH,
    MAIN,
    TAG,
    check_kind,
    decode_manifest,
    duplicate_seqs,
    encode_manifest,
    msg,
    prefix_bounds,
)
from .catalog_sqlite_audit import SqliteAudit
from .catalog_sqlite_auth import SqliteAuth
from .types import AlreadyExists, DatasetExists, Manifest, NotFound, Ref, RefMoved, WalEntry

__all__ = ["SqliteCatalog"]

_LOG = """
WITH RECURSIVE chain(id, parent, manifest, depth) AS (
    SELECT id, parent, manifest, 0 FROM commits WHERE dataset = :d AND id = :head
    UNION ALL
    SELECT c.id, c.parent, c.manifest, chain.depth + 1
    FROM chain JOIN commits c ON c.dataset = :d AND c.id = chain.parent
    WHERE chain.depth + 1 < :limit
)
SELECT manifest FROM chain ORDER BY depth
"""

_CHUNK_HASHES = """
SELECT DISTINCT json_extract(c.value, '$.hash')
FROM commits, json_each(commits.manifest, '$.chunks') AS c
"""


class SqliteCatalog(SqliteAuth, SqliteAudit):
    """CatalogStore on a SQLite file (``":memory:"`` works too, for one process).

    ``busy_timeout`` is how long a write waits for another process holding the
    file's write lock before failing with ``sqlite3.OperationalError``.
    """

    def __repr__(self) -> str:
        return f"SqliteCatalog({self.path!r})"

    # -- queries used by several methods ------------------------------------

    @staticmethod
    def _require_dataset(conn: sqlite3.Connection, dataset: str) -> None:
        if conn.execute("SELECT 1 FROM datasets WHERE name = ?", (dataset,)).fetchone() is None:
            raise NotFound(msg.dataset_missing(dataset), missing="dataset")

    @staticmethod
    def _resolve(conn: sqlite3.Connection, dataset: str, commit_id: str) -> tuple[str, str]:
        """(id, manifest text) for a full id or a unique prefix. Raises NotFound."""
        row = conn.execute(
            "SELECT id, manifest FROM commits WHERE dataset = ? AND id = ?", (dataset, commit_id)
        ).fetchone()
        if row is not None:
            return row[0], row[1]
        bounds = prefix_bounds(commit_id)
        rows = []
        if bounds is not None:
            rows = conn.execute(
                "SELECT id, manifest FROM commits WHERE dataset = ? AND id >= ? AND id < ? "
                "ORDER BY id LIMIT 3",
                (dataset, *bounds),
            ).fetchall()
        if len(rows) == 1:
            return rows[0][0], rows[0][1]
        SqliteCatalog._require_dataset(conn, dataset)
        if rows:
            raise NotFound(
                msg.commit_ambiguous(dataset, commit_id, [r[0] for r in rows]),
                missing="commit",
                ambiguous=True,
            )
        raise NotFound(msg.commit_missing(dataset, commit_id), missing="commit")

    # -- datasets ------------------------------------------------------------

    async def create_dataset(self, first: Manifest) -> None:
        name = first.dataset

        def fn(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("INSERT INTO datasets (name, created) VALUES (?, ?)", (name, time.time()))
            except sqlite3.IntegrityError:
                raise DatasetExists(msg.dataset_exists(name)) from None
            self._insert_commit(conn, first)
            conn.execute(
                "INSERT INTO refs (dataset, kind, name, commit_id) VALUES (?, ?, ?, ?)",
                (name, BRANCH, MAIN, first.id),
            )

        await self._tx(fn)  # one transaction: all three rows or none

    async def list_datasets(self) -> list[str]:
        def fn(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT name FROM datasets ORDER BY name")]

        return await self._tx(fn, write=False)

    async def drop_dataset(self, name: str) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM datasets WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(msg.dataset_missing(name), missing="dataset")

        await self._tx(fn)

    # -- commits -------------------------------------------------------------

    async def put_commit(self, manifest: Manifest) -> None:
        text = encode_manifest(manifest)

        def fn(conn: sqlite3.Connection) -> None:
            self._require_dataset(conn, manifest.dataset)
            self._insert_commit(conn, manifest, text)

        await self._tx(fn)

    @staticmethod
    def _insert_commit(conn: sqlite3.Connection, manifest: Manifest, text: str | None = None) -> None:
        conn.execute(
            "INSERT INTO commits (dataset, id, parent, seq, time, manifest) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (dataset, id) DO NOTHING",
            (
                manifest.dataset,
                manifest.id,
                manifest.parents[0] if manifest.parents else None,
                manifest.seq,
                manifest.time,
                text if text is not None else encode_manifest(manifest),
            ),
        )

    async def get_commit(self, dataset: str, commit_id: str) -> Manifest:
        text = await self._tx(lambda conn: self._resolve(conn, dataset, commit_id)[1], write=False)
        return decode_manifest(text)

    async def log(self, dataset: str, head: str, limit: int = 100) -> list[Manifest]:
        def fn(conn: sqlite3.Connection) -> list[str]:
            head_id = self._resolve(conn, dataset, head)[0]
            if limit <= 0:
                return []
            rows = conn.execute(_LOG, {"d": dataset, "head": head_id, "limit": limit})
            return [r[0] for r in rows]

        return [decode_manifest(t) for t in await self._tx(fn, write=False)]

    async def list_commits(self, dataset: str) -> list[Manifest]:
        def fn(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT manifest FROM commits WHERE dataset = ? ORDER BY seq, id", (dataset,))
            return [r[0] for r in rows]

        return [decode_manifest(t) for t in await self._tx(fn, write=False)]

    async def chunk_hashes(self) -> set[str]:
        def fn(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(_CHUNK_HASHES)
            return {r[0] for r in rows}

        return await self._tx(fn, write=False)

    # -- refs ----------------------------------------------------------------

    async def create_ref(self, ref: Ref) -> None:
        check_kind(ref.kind)

        def fn(conn: sqlite3.Connection) -> None:
            self._require_dataset(conn, ref.dataset)
            self._require_commit(conn, ref.dataset, ref.commit)
            try:
                conn.execute(
                    "INSERT INTO refs (dataset, kind, name, commit_id) VALUES (?, ?, ?, ?)",
                    (ref.dataset, ref.kind, ref.name, ref.commit),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(msg.ref_exists(ref.dataset, ref.name, ref.kind)) from None

        await self._tx(fn)

    @staticmethod
    def _require_commit(conn: sqlite3.Connection, dataset: str, commit_id: str) -> None:
        row = conn.execute(
            "SELECT 1 FROM commits WHERE dataset = ? AND id = ?", (dataset, commit_id)
        ).fetchone()
        if row is None:
            raise NotFound(msg.ref_target_missing(dataset, commit_id), missing="commit")

    async def get_ref(self, dataset: str, name: str, kind: str) -> Ref:
        check_kind(kind)

        def fn(conn: sqlite3.Connection) -> Ref:
            row = conn.execute(
                "SELECT commit_id FROM refs WHERE dataset = ? AND kind = ? AND name = ?",
                (dataset, kind, name),
            ).fetchone()
            if row is None:
                raise NotFound(msg.ref_missing(dataset, name, kind), missing=kind)
            return Ref(dataset, name, row[0], kind)

        return await self._tx(fn, write=False)

    async def list_refs(self, dataset: str, kind: str) -> list[Ref]:
        check_kind(kind)

        def fn(conn: sqlite3.Connection) -> list[Ref]:
            rows = conn.execute(
                "SELECT name, commit_id FROM refs WHERE dataset = ? AND kind = ? ORDER BY name",
                (dataset, kind),
            )
            return [Ref(dataset, name, commit, kind) for name, commit in rows]

        return await self._tx(fn, write=False)

    async def move_branch(self, dataset: str, name: str, commit: str, expected: str | None) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT commit_id FROM refs WHERE dataset = ? AND kind = ? AND name = ?",
                (dataset, BRANCH, name),
            ).fetchone()
            if row is None:
                is_tag = conn.execute(
                    "SELECT 1 FROM refs WHERE dataset = ? AND kind = ? AND name = ?", (dataset, TAG, name)
                ).fetchone()
                raise NotFound(msg.branch_missing(dataset, name, is_tag is not None), missing="branch")
            if expected is not None and row[0] != expected:
                raise RefMoved(msg.ref_moved(dataset, name, row[0], expected))
            self._require_commit(conn, dataset, commit)
            conn.execute(
                "UPDATE refs SET commit_id = ? WHERE dataset = ? AND kind = ? AND name = ?",
                (commit, dataset, BRANCH, name),
            )

        await self._tx(fn)

    async def delete_ref(self, dataset: str, name: str, kind: str) -> None:
        """Delete a branch or tag. Deleting a branch also deletes its WAL. Raises NotFound."""
        check_kind(kind)

        def fn(conn: sqlite3.Connection) -> None:
            gone = conn.execute(
                "DELETE FROM refs WHERE dataset = ? AND kind = ? AND name = ?", (dataset, kind, name)
            ).rowcount
            if gone == 0:
                raise NotFound(msg.ref_missing(dataset, name, kind), missing=kind)
            if kind == BRANCH:
                conn.execute("DELETE FROM wal WHERE dataset = ? AND branch = ?", (dataset, name))

        await self._tx(fn)

    # -- WAL -----------------------------------------------------------------

    async def append_wal(self, dataset: str, branch: str, entries: list[WalEntry]) -> None:
        """Append in one transaction; on return it is fsynced. Raises NotFound, AlreadyExists."""
        if not entries:
            return
        dups = duplicate_seqs(entries)
        if dups:
            raise AlreadyExists(msg.wal_seq_taken(dataset, branch, dups, within_batch=True))
        rows = [
            (dataset, branch, e.seq, e.client, e.client_seq, e.kind, bytes(e.ops), bytes(e.reply))
            for e in entries
        ]

        def fn(conn: sqlite3.Connection) -> None:
            self._require_dataset(conn, dataset)
            conn.execute("SAVEPOINT batch")
            try:
                conn.executemany(
                    "INSERT INTO wal (dataset, branch, seq, client, client_seq, kind, ops, reply) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO batch")
                seqs = [e.seq for e in entries]
                stored = conn.execute(
                    "SELECT seq FROM wal WHERE dataset = ? AND branch = ? AND seq BETWEEN ? AND ?",
                    (dataset, branch, min(seqs), max(seqs)),
                )
                taken = sorted({r[0] for r in stored}.intersection(seqs))
                raise AlreadyExists(msg.wal_seq_taken(dataset, branch, taken, within_batch=False)) from None
            conn.execute("RELEASE batch")

        await self._tx(fn)

    async def read_wal(self, dataset: str, branch: str, after_seq: int) -> list[WalEntry]:
        def fn(conn: sqlite3.Connection) -> list[WalEntry]:
            rows = conn.execute(
                "SELECT seq, client, client_seq, kind, ops, reply FROM wal "
                "WHERE dataset = ? AND branch = ? AND seq > ? ORDER BY seq",
                (dataset, branch, after_seq),
            )
            return [WalEntry(*r) for r in rows]

        return await self._tx(fn, write=False)

    async def trim_wal(self, dataset: str, branch: str, upto_seq: int) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM wal WHERE dataset = ? AND branch = ? AND seq <= ?", (dataset, branch, upto_seq)
            ).rowcount

        return await self._tx(fn)

    # -- extras --------------------------------------------------------------

    async def schema_version(self) -> int:
        """The highest applied migration (from ``schema_version``)."""

        def fn(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])

        return await self._tx(fn, write=False)
