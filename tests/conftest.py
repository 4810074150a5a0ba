"""Shared fixtures: a real uvicorn server on a port-0 socket (STYLE.md section 8).

The server runs in the test's own event loop; ``Server.ready`` is an event,
so nothing waits on wall-clock sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import pytest

from server.app import create_app
from server.rooms import Registry, Room
from server.serve import Server, uvicorn_config
from server.settings import Settings

# Timeouts scale with COFRAME_TEST_TIMEOUT_SCALE on slow machines (like websockets' MS).
SCALE = float(os.environ.get("COFRAME_TEST_TIMEOUT_SCALE", "1"))


def timeout(seconds: float) -> float:
    return seconds * SCALE


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
    """``async with make_server(settings=..., frames={...}) as srv``."""

    class _Ctx:
        def __init__(
            self, settings: Settings | None = None, frames: dict[str, pl.DataFrame] | None = None
        ) -> None:
            self.settings = settings or Settings(demo=False)
            self.frames = frames if frames is not None else {"sales": small_frame()}

        async def __aenter__(self) -> LiveServer:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            settings = dataclasses.replace(self.settings, port=port)
            from server.app import build_registry, open_registry

            if settings.data_dir:  # durable: SQLite or PostgreSQL catalog + chunk store
                registry = await open_registry(settings)
                for name, frame in self.frames.items():
                    await registry.create(name, frame)
            else:
                registry = build_registry(settings)
                for name, frame in self.frames.items():
                    registry.add_frame(name, frame)
            app = create_app(settings, registry)
            self.server = Server(uvicorn_config(app, settings, log_level="warning"))
            self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
            ready = asyncio.create_task(self.server.ready.wait())
            done, _ = await asyncio.wait(
                {ready, self.task}, timeout=timeout(10), return_when="FIRST_COMPLETED"
            )
            if ready not in done:
                ready.cancel()
                raise RuntimeError("server did not start")
            self.sock = sock
            return LiveServer(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", registry, settings)

        async def __aexit__(self, *exc: object) -> None:
            self.server.should_exit = True
            await asyncio.wait_for(self.task, timeout(15))
            self.sock.close()

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
    box: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            settings = Settings(demo=False, port=port)
            from server.app import build_registry

            registry = build_registry(settings)
            registry.add_frame("sales", small_frame())
            srv = Server(uvicorn_config(create_app(settings, registry), settings, log_level="warning"))
            box["server"] = srv
            box["live"] = LiveServer(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", registry, settings)
            task = asyncio.create_task(srv.serve(sockets=[sock]))
            await srv.ready.wait()
            started.set()
            await task
            sock.close()

        asyncio.run(main())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(timeout(10)), "server thread did not start"
    yield box["live"]
    box["server"].should_exit = True
    t.join(timeout(15))
