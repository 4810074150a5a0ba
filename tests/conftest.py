"""Shared fixtures: the storage backends, and a real uvicorn server on a port-0 socket.

The server runs in the test's own event loop; ``Server.ready`` is an event,
so nothing waits on wall-clock sleeps.

``backend`` is the one catalog-backend fixture: every test that takes it (or
a fixture built on it) runs on ``memory``, ``sqlite`` and ``postgres``, the
way uvicorn's tests run on every protocol implementation. PostgreSQL is the
per-run schema of tests/pg.py, emptied before each test; without PostgreSQL
that third run skips (fails under ``CI=true``). A test that needs storage to
outlive its process (a restart, a subprocess, files on disk) narrows the
params with ``@persistent_only``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from server.app import create_app, open_registry
from server.rooms import Registry, Room
from server.settings import Settings
from server.storage.catalog import open_catalog
from server.storage.catalog_memory import MemoryCatalog
from server.storage.catalog_pg import PostgresCatalog
from server.storage.service import Storage
from server.storage.types import CatalogStore
from tests.pg import PgUnavailable, fresh_schema_sync, require_service
from tests.serving import bind_port0, running, serving, timeout

__all__ = [
    "BACKENDS",
    "PERSISTENT",
    "Backend",
    "LiveServer",
    "persistent_only",
    "small_frame",
    "timeout",
]

BACKENDS = ("memory", "sqlite", "postgres")
PERSISTENT = ("sqlite", "postgres")  # storage that outlives the process

persistent_only = pytest.mark.parametrize("backend", PERSISTENT, indirect=True)
"""Run a ``backend`` test on the backends that keep data across processes only."""


@dataclass(frozen=True)
class Backend:
    """One catalog backend and where its data lives.

    ``url`` is the PostgreSQL catalog URL (None otherwise); ``data_dir`` the
    chunk store and SQLite directory (None for memory).
    """

    kind: str  # "memory" | "sqlite" | "postgres"
    url: str | None
    data_dir: Path | None

    @property
    def persistent(self) -> bool:
        return self.kind != "memory"

    def settings(self, **overrides: Any) -> Settings:
        """Server settings on this backend (no demo unless asked)."""
        base = Settings(
            demo=False, data_dir=None if self.data_dir is None else str(self.data_dir), catalog=self.url
        )
        return dataclasses.replace(base, **overrides)

    async def open_catalog(self) -> CatalogStore:
        """A catalog on this backend (for memory: a new, empty one)."""
        if self.data_dir is None:
            return MemoryCatalog()
        return await open_catalog(self.url, self.data_dir)

    async def open_storage(self) -> Storage:
        """Catalog plus chunk store on this backend (for memory: new, empty ones)."""
        return await Storage.for_settings(None if self.data_dir is None else str(self.data_dir), self.url)


@pytest.fixture(scope="session")
def pg_run_url() -> Iterator[str]:
    """One fresh PostgreSQL schema for the whole run, dropped at the end."""
    try:
        with fresh_schema_sync() as url:
            yield url
    except PgUnavailable as exc:
        require_service(str(exc))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The catalog backend a test runs on (see the module docstring).

    A plain (sync) fixture: the PostgreSQL schema is set up and emptied on a
    private loop, never inside the test's running loop.
    """
    kind = request.param
    if kind == "memory":
        return Backend("memory", None, None)
    if kind == "sqlite":
        return Backend("sqlite", None, tmp_path / "data")
    b = Backend("postgres", request.getfixturevalue("pg_run_url"), tmp_path / "data")
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_empty(b))
    finally:
        loop.close()
    return b


async def _empty(b: Backend) -> None:
    """Drop every dataset (commits, refs and WAL with it), user, token, grant, key and audit row.

    The catalog has no call that deletes users, keys or audit rows, so those
    tables are emptied with SQL; ``auth_version`` is left as it is (it only
    ever grows), and so is the audit table's id sequence.
    """
    catalog = await b.open_catalog()
    try:
        for name in await catalog.list_datasets():
            await catalog.drop_dataset(name)
        assert isinstance(catalog, PostgresCatalog)
        await catalog.pool.execute(
            "DELETE FROM grants; DELETE FROM tokens; DELETE FROM users; DELETE FROM auth_keys; "
            "DELETE FROM audit"
        )
    finally:
        await catalog.close()


@pytest.fixture
async def catalog(backend: Backend) -> AsyncIterator[CatalogStore]:
    """An open catalog on ``backend`` (closed after the test)."""
    store = await backend.open_catalog()
    try:
        yield store
    finally:
        await store.close()


@dataclass
class LiveServer:
    url: str  # ws://127.0.0.1:PORT
    http: str  # http://127.0.0.1:PORT
    registry: Registry
    settings: Settings
    app: Any = None  # the Starlette app (its state: health, node, settings)

    def room(self, dataset: str = "sales", branch: str = "main") -> Room:
        return self.registry.rooms[(dataset, branch)]


def small_frame(rows: int = 20) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "name": [f"item{i}" for i in range(rows)],
            "price": [float(i) * 1.5 if i % 7 else None for i in range(rows)],
            "qty": pl.Series([i % 5 for i in range(rows)], dtype=pl.Int64),
            "region": [["EU", "US", "APAC"][i % 3] for i in range(rows)],
        }
    )


@pytest.fixture
def make_server() -> Callable[..., Any]:
    """``async with make_server(settings=..., frames={...}) as srv``.

    The server runs with ``auth="none"`` (one local identity, admin of
    everything) unless ``auth="token"`` is given: the identity tests ask
    for it. With ``settings.data_dir`` the registry is on disk (SQLite or PostgreSQL
    catalog + chunk files); otherwise on the memory backend. Each frame is
    created as a dataset (one commit on ``main``).
    """

    class _Ctx:
        def __init__(
            self,
            settings: Settings | None = None,
            frames: dict[str, pl.DataFrame] | None = None,
            auth: str = "none",
        ) -> None:
            self.settings = dataclasses.replace(settings or Settings(demo=False), auth=auth)
            self.frames = frames if frames is not None else {"sales": small_frame()}
            self.stack = contextlib.AsyncExitStack()

        async def __aenter__(self) -> LiveServer:
            sock = bind_port0()
            registry = await open_registry(self.settings)
            try:
                for name, frame in self.frames.items():
                    await registry.create(name, frame)
            except BaseException:
                await registry.close()
                raise
            port = sock.getsockname()[1]
            settings = dataclasses.replace(self.settings, port=port)
            app = create_app(settings, registry)
            await self.stack.enter_async_context(serving(app, sock))
            return LiveServer(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", registry, settings, app)

        async def __aexit__(self, *exc: object) -> None:
            await self.stack.aclose()

    return _Ctx


@pytest.fixture
async def server(make_server: Callable[..., Any]) -> AsyncIterator[LiveServer]:
    async with make_server() as srv:
        yield srv


@pytest.fixture
def server_thread() -> Any:
    """A live server in its own thread and loop, for blocking (SyncRoom) tests."""
    import threading

    started = threading.Event()
    stop: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            settings = Settings(demo=False, auth="none")
            registry = await open_registry(settings)
            await registry.create("sales", small_frame())
            async with running(settings, registry, bind_port0()) as live:
                stop["event"] = asyncio.Event()
                stop["loop"] = asyncio.get_running_loop()
                stop["live"] = LiveServer(
                    f"ws://127.0.0.1:{live.port}", f"http://127.0.0.1:{live.port}", registry, live
                )
                started.set()
                await stop["event"].wait()

        asyncio.run(main())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(timeout(10)), "server thread did not start"
    yield stop["live"]
    stop["loop"].call_soon_threadsafe(stop["event"].set)
    t.join(timeout(15))


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Debian chromium (tests/browsing.py); skipped, or failed under CI=true, without it."""
    from tests.browsing import launched

    async with launched() as b:
        yield b
