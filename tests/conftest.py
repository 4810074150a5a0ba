"""Shared fixtures: a real uvicorn server on a port-0 socket (STYLE.md section 8).

The server runs in the test's own event loop; ``Server.ready`` is an event,
so nothing waits on wall-clock sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import pytest

from server.app import build_registry, open_registry
from server.rooms import Registry, Room
from server.settings import Settings
from tests.serving import bind_port0, running, timeout

__all__ = ["LiveServer", "small_frame", "timeout"]


@dataclass
class LiveServer:
    url: str  # ws://127.0.0.1:PORT
    http: str  # http://127.0.0.1:PORT
    registry: Registry
    settings: Settings

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

    With ``settings.data_dir`` the registry is durable (SQLite or PostgreSQL
    catalog + chunk store); otherwise datasets live in memory.
    """

    class _Ctx:
        def __init__(
            self, settings: Settings | None = None, frames: dict[str, pl.DataFrame] | None = None
        ) -> None:
            self.settings = settings or Settings(demo=False)
            self.frames = frames if frames is not None else {"sales": small_frame()}
            self.stack = contextlib.AsyncExitStack()

        async def __aenter__(self) -> LiveServer:
            sock = bind_port0()
            if self.settings.data_dir:
                registry = await open_registry(self.settings)
                for name, frame in self.frames.items():
                    await registry.create(name, frame)
            else:
                registry = build_registry(self.settings)
                for name, frame in self.frames.items():
                    registry.add_frame(name, frame)
            settings = await self.stack.enter_async_context(running(self.settings, registry, sock))
            port = settings.port
            return LiveServer(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", registry, settings)

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
            settings = Settings(demo=False)
            registry = build_registry(settings)
            registry.add_frame("sales", small_frame())
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
