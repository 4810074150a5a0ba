"""The PostgreSQL catalog (asyncpg), used with ``--catalog postgresql://...``.

Same contract as the SQLite catalog (tests/test_catalog_contract.py). A pool
of connections; each method is one transaction; ``append_wal`` is one
``executemany`` inside one transaction, so a batch is all-or-nothing and
durable when the call returns (the server's ``synchronous_commit`` decides
the fsync; keep it ``on``). ``schema`` puts the tables in their own schema
via ``search_path`` (created on open), which is how the tests isolate runs.
The identity methods (users, tokens, grants, signing keys) are in
:mod:`.catalog_pg_auth`, the audit trail in :mod:`.catalog_pg_audit`.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from .catalog_common import (
    BRANCH,
    MAIN,
    TAG,
    check_kind,
    check_schema,
    decode_manifest,
    duplicate_seqs,
    encode_manifest,
    msg,
    prefix_bounds,
)
from .catalog_pg_audit import PostgresAudit
from .catalog_pg_auth import PostgresAuth
from .migrations import apply_postgres
from .types import AlreadyExists, DatasetExists, Manifest, NotFound, Ref, RefMoved, StorageError, WalEntry

__all__ = ["PostgresCatalog"]

_LOG = """
WITH RECURSIVE chain(id, parent, manifest, depth) AS (
    SELECT id, parent, manifest, 0 FROM commits WHERE dataset = $1 AND id = $2
    UNION ALL
    SELECT c.id, c.parent, c.manifest, chain.depth + 1
    FROM chain JOIN commits c ON c.dataset = $1 AND c.id = chain.parent
    WHERE chain.depth + 1 < $3
)
SELECT manifest FROM chain ORDER BY depth
"""

_INSERT_COMMIT = (
    "INSERT INTO commits (dataset, id, parent, seq, time, manifest) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (dataset, id) DO NOTHING"
)


def _commit_row(m: Manifest) -> tuple[str, str, str | None, int, float, str]:
    return (m.dataset, m.id, m.parents[0] if m.parents else None, m.seq, m.time, encode_manifest(m))


class PostgresCatalog(PostgresAuth, PostgresAudit):
    """CatalogStore on PostgreSQL.

    ``dsn`` is an asyncpg URL without the ``schema`` query key (see
    ``catalog.split_pg_url``); ``schema`` None uses the server's search_path.
    """

    def __init__(self, dsn: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 10) -> None:
        if schema is not None:
            check_schema(schema)
        self.dsn = dsn
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.version = 0  # schema version after open()
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresCatalog(schema={self.schema!r})"

    # -- plumbing ------------------------------------------------------------

    async def open(self) -> None:
        """Connect the pool, create the schema if asked, run pending migrations.

        Raises:
            StorageError: the schema is newer than this coframe.
            OSError, asyncpg.PostgresError: the server cannot be reached or refuses.
        """
        async with self._opening:
            if self._pool is not None:
                return
            settings = {"search_path": f'"{self.schema}"'} if self.schema else None
            pool = await asyncpg.create_pool(
                self.dsn, min_size=self.min_size, max_size=self.max_size, server_settings=settings
            )
            try:
                async with pool.acquire() as conn:
                    self.version = await apply_postgres(conn, self.schema)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageError(f"{self!r} is not open; await open() first")
        return self._pool

    @staticmethod
    async def _require_dataset(conn: asyncpg.Connection, dataset: str) -> None:
        if await conn.fetchval("SELECT 1 FROM datasets WHERE name = $1", dataset) is None:
            raise NotFound(msg.dataset_missing(dataset), missing="dataset")

    @staticmethod
    async def _require_commit(conn: asyncpg.Connection, dataset: str, commit_id: str) -> None:
        if (
            await conn.fetchval("SELECT 1 FROM commits WHERE dataset = $1 AND id = $2", dataset, commit_id)
            is None
        ):
            await PostgresCatalog._require_dataset(conn, dataset)
            raise NotFound(msg.ref_target_missing(dataset, commit_id), missing="commit")

    @staticmethod
    async def _resolve(conn: asyncpg.Connection, dataset: str, commit_id: str) -> tuple[str, str]:
        """(id, manifest text) for a full id or a unique prefix. Raises NotFound."""
        row = await conn.fetchrow(
            "SELECT id, manifest FROM commits WHERE dataset = $1 AND id = $2", dataset, commit_id
        )
        if row is not None:
            return row[0], row[1]
        bounds = prefix_bounds(commit_id)
        rows = []
        if bounds is not None:
            rows = await conn.fetch(
                "SELECT id, manifest FROM commits WHERE dataset = $1 AND id >= $2 AND id < $3 "
                "ORDER BY id LIMIT 3",
                dataset,
                *bounds,
            )
        if len(rows) == 1:
            return rows[0][0], rows[0][1]
        await PostgresCatalog._require_dataset(conn, dataset)
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
        async with self.pool.acquire() as conn, conn.transaction():  # all three rows or none
            status = await conn.execute(
                "INSERT INTO datasets (name, created) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                name,
                time.time(),
            )
            if status.endswith(" 0"):
                raise DatasetExists(msg.dataset_exists(name))
            await conn.execute(_INSERT_COMMIT, *_commit_row(first))
            await conn.execute(
                "INSERT INTO refs (dataset, kind, name, commit_id) VALUES ($1, $2, $3, $4)",
                name,
                BRANCH,
                MAIN,
                first.id,
            )

    async def list_datasets(self) -> list[str]:
        return [r[0] for r in await self.pool.fetch("SELECT name FROM datasets ORDER BY name")]

    async def drop_dataset(self, name: str) -> None:
        status = await self.pool.execute("DELETE FROM datasets WHERE name = $1", name)
        if status.endswith(" 0"):
            raise NotFound(msg.dataset_missing(name), missing="dataset")

    # -- commits -------------------------------------------------------------

    async def put_commit(self, manifest: Manifest) -> None:
        try:
            await self.pool.execute(_INSERT_COMMIT, *_commit_row(manifest))
        except asyncpg.ForeignKeyViolationError:
            raise NotFound(msg.dataset_missing(manifest.dataset), missing="dataset") from None

    async def get_commit(self, dataset: str, commit_id: str) -> Manifest:
        async with self.pool.acquire() as conn:
            _, text = await self._resolve(conn, dataset, commit_id)
        return decode_manifest(text)

    async def log(self, dataset: str, head: str, limit: int = 100) -> list[Manifest]:
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            head_id, _ = await self._resolve(conn, dataset, head)
            rows = await conn.fetch(_LOG, dataset, head_id, limit) if limit > 0 else []
        return [decode_manifest(r[0]) for r in rows]

    async def list_commits(self, dataset: str) -> list[Manifest]:
        rows = await self.pool.fetch(
            "SELECT manifest FROM commits WHERE dataset = $1 ORDER BY seq, id", dataset
        )
        return [decode_manifest(r[0]) for r in rows]

    async def chunk_hashes(self) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT c->>'hash' FROM commits, json_array_elements(commits.manifest->'chunks') AS c"
        )
        return {r[0] for r in rows}

    # -- refs ----------------------------------------------------------------

    async def create_ref(self, ref: Ref) -> None:
        check_kind(ref.kind)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._require_commit(conn, ref.dataset, ref.commit)
            status = await conn.execute(
                "INSERT INTO refs (dataset, kind, name, commit_id) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (dataset, kind, name) DO NOTHING",
                ref.dataset,
                ref.kind,
                ref.name,
                ref.commit,
            )
            if status.endswith(" 0"):
                raise AlreadyExists(msg.ref_exists(ref.dataset, ref.name, ref.kind))

    async def get_ref(self, dataset: str, name: str, kind: str) -> Ref:
        check_kind(kind)
        commit = await self.pool.fetchval(
            "SELECT commit_id FROM refs WHERE dataset = $1 AND kind = $2 AND name = $3", dataset, kind, name
        )
        if commit is None:
            raise NotFound(msg.ref_missing(dataset, name, kind), missing=kind)
        return Ref(dataset, name, commit, kind)

    async def list_refs(self, dataset: str, kind: str) -> list[Ref]:
        check_kind(kind)
        rows = await self.pool.fetch(
            "SELECT name, commit_id FROM refs WHERE dataset = $1 AND kind = $2 ORDER BY name", dataset, kind
        )
        return [Ref(dataset, r[0], r[1], kind) for r in rows]

    async def move_branch(self, dataset: str, name: str, commit: str, expected: str | None) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # FOR UPDATE serializes concurrent movers: the loser sees the winner's head.
            current = await conn.fetchval(
                "SELECT commit_id FROM refs WHERE dataset = $1 AND kind = $2 AND name = $3 FOR UPDATE",
                dataset,
                BRANCH,
                name,
            )
            if current is None:
                is_tag = await conn.fetchval(
                    "SELECT 1 FROM refs WHERE dataset = $1 AND kind = $2 AND name = $3", dataset, TAG, name
                )
                raise NotFound(msg.branch_missing(dataset, name, is_tag is not None), missing="branch")
            if expected is not None and current != expected:
                raise RefMoved(msg.ref_moved(dataset, name, current, expected))
            await self._require_commit(conn, dataset, commit)
            await conn.execute(
                "UPDATE refs SET commit_id = $4 WHERE dataset = $1 AND kind = $2 AND name = $3",
                dataset,
                BRANCH,
                name,
                commit,
            )

    async def delete_ref(self, dataset: str, name: str, kind: str) -> None:
        """Delete a branch or tag. Deleting a branch also deletes its WAL. Raises NotFound."""
        check_kind(kind)
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "DELETE FROM refs WHERE dataset = $1 AND kind = $2 AND name = $3", dataset, kind, name
            )
            if status.endswith(" 0"):
                raise NotFound(msg.ref_missing(dataset, name, kind), missing=kind)
            if kind == BRANCH:
                await conn.execute("DELETE FROM wal WHERE dataset = $1 AND branch = $2", dataset, name)

    # -- WAL -----------------------------------------------------------------

    async def append_wal(self, dataset: str, branch: str, entries: list[WalEntry]) -> None:
        """Append in one transaction, committed on return. Raises NotFound, AlreadyExists."""
        if not entries:
            return
        dups = duplicate_seqs(entries)
        if dups:
            raise AlreadyExists(msg.wal_seq_taken(dataset, branch, dups, within_batch=True))
        rows = [
            (dataset, branch, e.seq, e.client, e.client_seq, e.kind, bytes(e.ops), bytes(e.reply))
            for e in entries
        ]
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.executemany(
                        "INSERT INTO wal (dataset, branch, seq, client, client_seq, kind, ops, reply) "
                        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        rows,
                    )
            except asyncpg.ForeignKeyViolationError:
                raise NotFound(msg.dataset_missing(dataset), missing="dataset") from None
            except asyncpg.UniqueViolationError:
                seqs = [e.seq for e in entries]
                stored = await conn.fetch(
                    "SELECT seq FROM wal WHERE dataset = $1 AND branch = $2 AND seq = ANY($3::bigint[]) "
                    "ORDER BY seq",
                    dataset,
                    branch,
                    seqs,
                )
                taken = [r[0] for r in stored]
                raise AlreadyExists(msg.wal_seq_taken(dataset, branch, taken, within_batch=False)) from None

    async def read_wal(self, dataset: str, branch: str, after_seq: int) -> list[WalEntry]:
        rows = await self.pool.fetch(
            "SELECT seq, client, client_seq, kind, ops, reply FROM wal "
            "WHERE dataset = $1 AND branch = $2 AND seq > $3 ORDER BY seq",
            dataset,
            branch,
            after_seq,
        )
        return [WalEntry(*r) for r in rows]

    async def trim_wal(self, dataset: str, branch: str, upto_seq: int) -> int:
        status = await self.pool.execute(
            "DELETE FROM wal WHERE dataset = $1 AND branch = $2 AND seq <= $3", dataset, branch, upto_seq
        )
        return int(status.rsplit(" ", 1)[-1])

    # -- extras --------------------------------------------------------------

    async def schema_version(self) -> int:
        """The highest applied migration (from ``schema_version``)."""
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
