"""Versioned catalog schema, one list for both dialects, applied at ``open()``.

Each Migration has a version (1, 2, ... with no gaps), a description, and its
statements for SQLite and for PostgreSQL. ``schema_version`` records what has
been applied. Applying is idempotent and runs in one transaction under a lock
(SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-scoped advisory lock),
so two processes opening the same catalog at once apply each step once.

To change the schema, append a Migration; never edit one that has shipped.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .types import StorageError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Migration", "MIGRATIONS", "LATEST", "apply_sqlite", "apply_postgres", "advisory_key"]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# Text keys are COLLATE "C" in PostgreSQL so that ordering and prefix ranges are
# byte order, as SQLite's BINARY collation is.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "datasets, commits, refs and the WAL",
        sqlite=(
            """CREATE TABLE datasets (
                name TEXT PRIMARY KEY,
                created REAL NOT NULL
            )""",
            """CREATE TABLE commits (
                dataset TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
                id TEXT NOT NULL,
                parent TEXT,
                seq INTEGER NOT NULL,
                time REAL NOT NULL,
                manifest TEXT NOT NULL,
                PRIMARY KEY (dataset, id)
            )""",
            """CREATE TABLE refs (
                dataset TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
                kind TEXT NOT NULL CHECK (kind IN ('branch', 'tag')),
                name TEXT NOT NULL,
                commit_id TEXT NOT NULL,
                PRIMARY KEY (dataset, kind, name),
                FOREIGN KEY (dataset, commit_id) REFERENCES commits(dataset, id) ON DELETE CASCADE
            )""",
            "CREATE INDEX refs_commit ON refs(dataset, commit_id)",
            """CREATE TABLE wal (
                dataset TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
                branch TEXT NOT NULL,
                seq INTEGER NOT NULL,
                client TEXT NOT NULL,
                client_seq INTEGER NOT NULL,
                kind TEXT NOT NULL,
                ops BLOB NOT NULL,
                reply BLOB NOT NULL,
                PRIMARY KEY (dataset, branch, seq)
            )""",
        ),
        postgres=(
            """CREATE TABLE datasets (
                name text COLLATE "C" PRIMARY KEY,
                created double precision NOT NULL
            )""",
            """CREATE TABLE commits (
                dataset text COLLATE "C" NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
                id text COLLATE "C" NOT NULL,
                parent text COLLATE "C",
                seq bigint NOT NULL,
                time double precision NOT NULL,
                manifest json NOT NULL,
                PRIMARY KEY (dataset, id)
            )""",
            """CREATE TABLE refs (
                dataset text COLLATE "C" NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
                kind text COLLATE "C" NOT NULL CHECK (kind IN ('branch', 'tag')),
                name text COLLATE "C" NOT NULL,
                commit_id text COLLATE "C" NOT NULL,
                PRIMARY KEY (dataset, kind, name),
                FOREIGN KEY (dataset, commit_id) REFERENCES commits(dataset, id) ON DELETE CASCADE
            )""",
            "CREATE INDEX refs_commit ON refs(dataset, commit_id)",
            """CREATE TABLE wal (
                dataset text COLLATE "C" NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
                branch text COLLATE "C" NOT NULL,
                seq bigint NOT NULL,
                client text NOT NULL,
                client_seq bigint NOT NULL,
                kind text NOT NULL,
                ops bytea NOT NULL,
                reply bytea NOT NULL,
                PRIMARY KEY (dataset, branch, seq)
            )""",
        ),
    ),
    Migration(
        2,
        "identity: signing keys, users, tokens, grants and the auth version",
        sqlite=(
            """CREATE TABLE auth_keys (
                kid TEXT PRIMARY KEY,
                secret BLOB NOT NULL,
                created REAL NOT NULL
            )""",
            """CREATE TABLE users (
                name TEXT PRIMARY KEY,
                display TEXT NOT NULL,
                disabled INTEGER NOT NULL CHECK (disabled IN (0, 1)),
                can_create INTEGER NOT NULL CHECK (can_create IN (0, 1)),
                created REAL NOT NULL
            )""",
            """CREATE TABLE tokens (
                id TEXT PRIMARY KEY,
                user_name TEXT NOT NULL REFERENCES users(name),
                issued REAL NOT NULL,
                expires REAL,
                revoked REAL
            )""",
            "CREATE INDEX tokens_user ON tokens(user_name, issued)",
            # Not foreign-keyed to datasets: a '*' grant has no dataset row, and a
            # grant may name a dataset before it is uploaded.
            """CREATE TABLE grants (
                dataset TEXT NOT NULL,
                user_name TEXT NOT NULL REFERENCES users(name),
                role TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
                rows_predicate TEXT,
                hide TEXT NOT NULL,
                PRIMARY KEY (dataset, user_name)
            )""",
            "CREATE INDEX grants_user ON grants(user_name)",
            """CREATE TABLE auth_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                version INTEGER NOT NULL
            )""",
            "INSERT INTO auth_state (id, version) VALUES (1, 0)",
        ),
        postgres=(
            """CREATE TABLE auth_keys (
                kid text COLLATE "C" PRIMARY KEY,
                secret bytea NOT NULL,
                created double precision NOT NULL
            )""",
            """CREATE TABLE users (
                name text COLLATE "C" PRIMARY KEY,
                display text NOT NULL,
                disabled boolean NOT NULL,
                can_create boolean NOT NULL,
                created double precision NOT NULL
            )""",
            """CREATE TABLE tokens (
                id text COLLATE "C" PRIMARY KEY,
                user_name text COLLATE "C" NOT NULL REFERENCES users(name),
                issued double precision NOT NULL,
                expires double precision,
                revoked double precision
            )""",
            "CREATE INDEX tokens_user ON tokens(user_name, issued)",
            """CREATE TABLE grants (
                dataset text COLLATE "C" NOT NULL,
                user_name text COLLATE "C" NOT NULL REFERENCES users(name),
                role text NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
                rows_predicate text,
                hide text NOT NULL,
                PRIMARY KEY (dataset, user_name)
            )""",
            "CREATE INDEX grants_user ON grants(user_name)",
            """CREATE TABLE auth_state (
                id integer PRIMARY KEY CHECK (id = 1),
                version bigint NOT NULL
            )""",
            "INSERT INTO auth_state (id, version) VALUES (1, 0)",
        ),
    ),
    # ``counted`` marks the rows of count_audit: one per (kind, detail, minute),
    # found again through the partial unique index by INSERT ... ON CONFLICT.
    # Rows of add_audit are never counted, so they never conflict.
    Migration(
        3,
        "the audit trail",
        sqlite=(
            """CREATE TABLE audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                time REAL NOT NULL,
                kind TEXT NOT NULL,
                user_name TEXT NOT NULL,
                dataset TEXT NOT NULL,
                detail TEXT NOT NULL,
                count INTEGER NOT NULL,
                counted INTEGER NOT NULL CHECK (counted IN (0, 1))
            )""",
            "CREATE INDEX audit_time ON audit(time, id)",
            "CREATE UNIQUE INDEX audit_counted ON audit(kind, detail, time) WHERE counted = 1",
        ),
        postgres=(
            """CREATE TABLE audit (
                id bigserial PRIMARY KEY,
                time double precision NOT NULL,
                kind text COLLATE "C" NOT NULL,
                user_name text COLLATE "C" NOT NULL,
                dataset text COLLATE "C" NOT NULL,
                detail text COLLATE "C" NOT NULL,
                count bigint NOT NULL,
                counted boolean NOT NULL
            )""",
            "CREATE INDEX audit_time ON audit(time, id)",
            "CREATE UNIQUE INDEX audit_counted ON audit(kind, detail, time) WHERE counted",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at {real} NOT NULL
)"""


def _check_not_newer(current: int, where: str) -> None:
    if current > LATEST:
        where = f" {where}" if where else ""
        raise StorageError(
            f"catalog{where} is at schema version {current}, newer than this coframe "
            f"understands ({LATEST}); upgrade coframe or point it at another catalog"
        )


def apply_sqlite(conn: sqlite3.Connection, where: str = "") -> int:
    """Apply pending migrations on an autocommit connection; return the schema version.

    Raises:
        StorageError: the file is at a newer version than MIGRATIONS knows.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_VERSION_TABLE.format(real="REAL"))
        current = int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
        _check_not_newer(current, where)
        for m in MIGRATIONS:
            if m.version <= current:
                continue
            for statement in m.sqlite:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                (m.version, m.description, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return max(current, LATEST)


def advisory_key(schema: str | None) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock``, one per schema."""
    digest = hashlib.sha256(f"coframe.catalog.migrate:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def apply_postgres(conn: asyncpg.Connection, schema: str | None) -> int:
    """Create ``schema`` if given, apply pending migrations; return the schema version.

    The connection's search_path must already name ``schema``.

    Raises:
        StorageError: the schema is at a newer version than MIGRATIONS knows.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key(schema))
        if schema is not None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(_VERSION_TABLE.format(real="double precision"))
        current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
        _check_not_newer(current, f"schema '{schema}'" if schema else "")
        for m in MIGRATIONS:
            if m.version <= current:
                continue
            for statement in m.postgres:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_version (version, description, applied_at) VALUES ($1, $2, $3)",
                m.version,
                m.description,
                time.time(),
            )
    return max(current, LATEST)
