"""The Starlette app: HTTP API, the WebSocket route and start-up loading.

``load_file`` lives in :mod:`server.io_read` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from .api import routes as api_routes
from .demo import demo_sales
from .errors import exception_handlers
from .io import load_file
from .perspective.live import RoomViews
from .perspective.web import routes as dashboard_routes
from .rooms import Registry, RoomConfig, SessionLimits
from .settings import Settings
from .storage.service import Storage
from .ws import websocket_endpoint

__all__ = ["create_app", "load_file", "open_registry", "room_config"]

log = logging.getLogger("coframe.app")


def room_config(settings: Settings) -> RoomConfig:
    return RoomConfig(
        session=SessionLimits(
            max_messages=settings.send_queue_messages,
            max_bytes=settings.send_queue_bytes,
            stall_timeout=settings.stall_timeout,
        ),
        max_message_bytes=settings.max_message_bytes,
        max_rows_per_op=settings.max_rows_per_op,
        max_rows_per_message=settings.max_rows_per_message,
        max_presence_bytes=settings.max_presence_bytes,
        max_meta_bytes=settings.max_meta_bytes,
        max_meta_doc_bytes=settings.max_meta_doc_bytes,
        autocommit_ops=settings.autocommit_ops,
        autocommit_seconds=settings.autocommit_seconds,
        autocommit_share=settings.autocommit_share,
    )


async def open_registry(settings: Settings) -> Registry:
    """The registry on the storage ``settings`` names: in memory when ``data_dir`` is None
    (``--memory``), else the chunk files in ``data_dir`` and its SQLite catalog (or
    ``settings.catalog``). The demo and ``--dataset`` files are committed on first start
    (an existing dataset of that name is kept).

    Raises:
        ValueError, OSError, StorageError: the storage cannot be opened.
        ReadError, OpError: a ``--dataset`` file cannot be read or has a bad name.
    """
    storage = await Storage.for_settings(settings.data_dir, settings.catalog)
    registry = Registry(
        room_config(settings), storage=storage, idle_unload=settings.idle_unload, views=RoomViews
    )
    try:
        existing = set(await registry.names())
        wanted = [("sales", None)] if settings.demo else []
        wanted += list(settings.datasets)
        for name, path in wanted:
            if name in existing:
                continue
            frame = demo_sales(settings.demo_rows) if path is None else load_file(path)
            what = "demo dataset" if path is None else f"import of {Path(path).name}"
            await registry.create(name, frame, message=what)
            log.info("created dataset %s (%d rows) from %s", name, frame.height, what)
    except BaseException:
        await storage.close()
        raise
    return registry


async def healthz(request: Request) -> JSONResponse:
    registry: Registry = request.app.state.registry
    names = await registry.names()
    storage = registry.storage.kind
    return JSONResponse(
        {"status": "ok", "datasets": len(names), "rooms": len(registry.rooms), "storage": storage}
    )


async def list_datasets(request: Request) -> JSONResponse:
    registry: Registry = request.app.state.registry
    return JSONResponse(await registry.describe())


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Starlette:
    """The coframe ASGI app. Datasets load at start-up (demo and files).

    Errors of HTTP routes become ``{"error": {...}}`` replies through
    :data:`server.errors.exception_handlers` (PROTOCOL.md section 11).
    """
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        reg = registry
        if reg is None:
            reg = await open_registry(settings)
        app.state.registry = reg
        log.info("coframe ready: datasets %s", ", ".join(await reg.names()) or "(none)")
        try:
            yield
        finally:
            await reg.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/api/datasets", list_datasets),
            *api_routes,
            WebSocketRoute("/ws/{dataset}", websocket_endpoint),
            *dashboard_routes,
        ],
        lifespan=lifespan,
        exception_handlers=exception_handlers,
    )
    app.state.settings = settings
    return app
