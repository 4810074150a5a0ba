"""The SQLite catalog's plumbing: one connection on one dedicated worker thread.

``sqlite3`` connections are not shared across threads, so every call runs
on a single dedicated thread: calls are serialized in submission order and
the event loop never blocks on disk. :meth:`SqliteThread._tx` runs a
function as one transaction; writes take ``BEGIN IMMEDIATE`` so other
processes on the same file queue up instead of failing half-way. Opening
sets ``journal_mode=WAL`` (retried while another process holds a fresh
file) plus ``synchronous=FULL``, so a committed transaction survives kill -9
and power loss, and runs the pending migrations. The queries themselves are
in :mod:`.catalog_sqlite`, :mod:`.catalog_sqlite_auth` and
:mod:`.catalog_sqlite_audit`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..workers import TrackedExecutor
from .migrations import apply_sqlite
from .types import StorageError

__all__ = ["SqliteThread"]

T = TypeVar("T")


def _busy(e: sqlite3.OperationalError) -> bool:
    """Whether ``e`` is "database is locked" (SQLITE_BUSY or SQLITE_LOCKED, any extended code)."""
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteThread:
    """A SQLite file's connection, opened, used and closed on its own worker thread.

    ``busy_timeout`` is how long a write waits for another process holding the
    file's write lock before failing with ``sqlite3.OperationalError``.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self.version = 0  # schema version after open()
        self._conn: sqlite3.Connection | None = None
        self._executor: TrackedExecutor | None = None  # /healthz sees a stuck query

    async def open(self) -> None:
        """Open the file, set the durability pragmas, run pending migrations.

        Raises:
            StorageError: the file's schema is newer than this coframe.
            sqlite3.Error: the file cannot be opened.
        """
        if self._executor is not None:
            return
        self._executor = TrackedExecutor(max_workers=1, thread_name_prefix="coframe-sqlite")
        try:
            self.version = await self._call(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> int:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            mode = self._journal_mode_wal(conn)
            if mode not in ("wal", "memory"):
                raise StorageError(
                    f"SQLite catalog {self.path} cannot use journal_mode=WAL (got {mode!r}); "
                    "put the data directory on a local filesystem"
                )
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = apply_sqlite(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return version

    def _journal_mode_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode=WAL``, retried while another connection holds the file.

        Switching the journal mode of a fresh file can fail with "database is
        locked" at once, without SQLite's busy handler, when several
        processes open it together; so it is retried here, up to
        ``busy_timeout``.
        """
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as e:
                if not _busy(e) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)  # backoff between retries (runtime behaviour, in the catalog's own thread)
            delay = min(delay * 2, 0.2)

    async def close(self) -> None:
        """Close the connection and stop the worker thread (a second call is a no-op)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await asyncio.get_running_loop().run_in_executor(executor, shut)
        finally:
            executor.shutdown(wait=False)

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StorageError(f"catalog {self.path} is not open; await open() first")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _tx(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run ``fn(conn)`` on the worker thread inside one transaction."""

        def run() -> T:
            conn = self._conn
            if conn is None:
                raise StorageError(f"catalog {self.path} is closed")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return await self._call(run)
