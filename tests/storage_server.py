"""Fixture helpers: a real uvicorn server on a storage backend (memory, SQLite or PostgreSQL).

Usage, with the ``backend`` fixture of tests/conftest.py::

    async with durable_server(backend) as srv:  # srv.url (ws://), srv.http, srv.registry
        ...

The server runs in the test's event loop on a port-0 socket and is ready when
``Server.ready`` is set (tests/conftest.py's ``make_server``, on storage).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.app import open_registry
from server.rooms import Registry, Room
from server.settings import Settings
from tests.conftest import Backend
from tests.serving import bind_port0, running, timeout

__all__ = ["DurableServer", "durable_server", "catalog_state"]


@dataclass
class DurableServer:
    url: str  # ws://127.0.0.1:PORT
    http: str  # http://127.0.0.1:PORT
    registry: Registry
    settings: Settings
    data_dir: Path | None  # None on the memory backend

    def room(self, dataset: str, branch: str = "main") -> Room:
        return self.registry.rooms[(dataset, branch)]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http, timeout=timeout(30))


@asynccontextmanager
async def durable_server(backend: Backend, **settings: Any) -> AsyncIterator[DurableServer]:
    """A live server whose registry is on ``backend`` (``settings`` override the defaults)."""
    cfg = backend.settings(**{"auth": "none", **settings})
    registry = await open_registry(cfg)
    async with running(cfg, registry, bind_port0()) as live:
        port = live.port
        yield DurableServer(
            f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", registry, live, backend.data_dir
        )


async def catalog_state(registry: Registry) -> dict[str, Any]:
    """Datasets with their refs and commit log: compare before/after to show nothing was half-written."""
    storage = registry.storage
    assert storage is not None
    out: dict[str, Any] = {}
    for name in sorted(await storage.catalog.list_datasets()):
        refs = {}
        for kind in ("branch", "tag"):
            for r in await storage.catalog.list_refs(name, kind):
                refs[f"{kind}:{r.name}"] = r.commit
        heads = sorted(set(refs.values()))
        commits = sorted({m.id for h in heads for m in await storage.catalog.log(name, h, 10_000)})
        out[name] = {"refs": refs, "commits": commits}
    return out
