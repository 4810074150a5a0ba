"""PostgreSQL for tests: find the server, give each run its own schema.

``make test`` starts PostgreSQL first (tests/services.sh). If it still is not
reachable, service tests skip with the reason, except under ``CI=true``,
where a skipped service test is a failure (``require_service``).

Usage from a test module::

    from tests.pg import fresh_schema, pg_url

    async def test_x():
        async with fresh_schema() as url:   # postgresql://...?schema=coframe_test_1a2b...
            catalog = await open_catalog(url, tmp_path)

Set ``COFRAME_TEST_PG_URL`` to point the tests at another server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import NoReturn

import asyncpg
import pytest

__all__ = [
    "catalog_url",
    "CANDIDATE_URLS",
    "PgUnavailable",
    "in_ci",
    "require_service",
    "pg_url",
    "fresh_schema",
    "fresh_schema_sync",
    "with_schema",
]

CANDIDATE_URLS = (
    "postgresql://root@127.0.0.1:5432/test",
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://127.0.0.1:5432/test",
)
CONNECT_TIMEOUT = 5.0  # seconds per candidate; a refused port fails at once

_found: str | None = None


class PgUnavailable(Exception):
    """No candidate URL accepted a connection; the message lists why."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_service(reason: str) -> NoReturn:
    """Skip the test for ``reason``; under ``CI=true``, fail it instead."""
    if in_ci():
        pytest.fail(f"{reason} (Under CI=true, a skipped service test is a failure)", pytrace=False)
    pytest.skip(reason)


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``schema=NAME`` in its query (what ``open_catalog`` reads)."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


async def pg_url() -> str:
    """The first URL that accepts a connection (cached for the process).

    Raises:
        PgUnavailable: none did; the message says what each attempt got.
    """
    global _found
    if _found is not None:
        return _found
    env = os.environ.get("COFRAME_TEST_PG_URL")
    candidates = (env,) if env else CANDIDATE_URLS
    errors = []
    for url in candidates:
        try:
            conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
            continue
        await conn.close()
        _found = url
        return url
    raise PgUnavailable(
        "PostgreSQL is not reachable (run `make services` or tests/services.sh); tried " + "; ".join(errors)
    )


@asynccontextmanager
async def fresh_schema(prefix: str = "coframe_test") -> AsyncIterator[str]:
    """Yield a catalog URL with ``?schema=<prefix>_<random>``; drop the schema on exit.

    The schema is created here (empty) so the caller may also use it with plain
    asyncpg; ``open_catalog`` then runs the migrations into it.

    Raises:
        PgUnavailable: PostgreSQL is not reachable.
    """
    url = await pg_url()
    schema = f"{prefix}_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    try:
        yield with_schema(url, schema)
    finally:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@contextmanager
def fresh_schema_sync(prefix: str = "coframe_test") -> Iterator[str]:
    """``fresh_schema`` for sync code (session fixtures), on a private event loop.

    The loop is never installed as the thread's current loop, so it cannot
    disturb pytest-asyncio's loops. Must not be called from inside a running loop.

    Raises:
        PgUnavailable: PostgreSQL is not reachable.
    """
    loop = asyncio.new_event_loop()
    cm = fresh_schema(prefix)
    try:
        url = loop.run_until_complete(cm.__aenter__())
        try:
            yield url
        finally:
            loop.run_until_complete(cm.__aexit__(None, None, None))
    finally:
        loop.close()


@asynccontextmanager
async def catalog_url(backend: str, prefix: str = "coframe_test") -> AsyncIterator[str | None]:
    """``None`` for SQLite; a fresh PostgreSQL schema URL (dropped afterwards) for ``postgres``.

    Skips (fails under CI=true) when PostgreSQL is not reachable.
    """
    if backend == "sqlite":
        yield None
        return
    try:
        ctx = fresh_schema(prefix)
        url = await ctx.__aenter__()
    except PgUnavailable as e:
        require_service(f"PostgreSQL is not reachable: {e}")
    try:
        yield url
    finally:
        await ctx.__aexit__(None, None, None)
