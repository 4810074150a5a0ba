"""The Starlette app: HTTP API, the WebSocket route and start-up loading."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import polars as pl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from .demo import demo_sales
from .rooms import Registry, RoomConfig, SessionLimits
from .settings import Settings
from .ws import websocket_endpoint

__all__ = ["create_app", "load_file"]

log = logging.getLogger("coframe.app")


def load_file(path: str) -> pl.DataFrame:
    """Read a CSV or Parquet file.

    Raises:
        ValueError: unknown extension or unreadable file (the message says which).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no such file: {path}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            return pl.read_csv(p, try_parse_dates=True)
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(p)
    except Exception as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    raise ValueError(f"{path}: unsupported file type '{suffix}'; use .csv or .parquet")


def build_registry(settings: Settings) -> Registry:
    config = RoomConfig(
        session=SessionLimits(
            max_messages=settings.send_queue_messages,
            max_bytes=settings.send_queue_bytes,
            stall_timeout=settings.stall_timeout,
        ),
        max_message_bytes=settings.max_message_bytes,
        max_rows_per_op=settings.max_rows_per_op,
    )
    registry = Registry(config, idle_unload=settings.idle_unload)
    if settings.demo:
        registry.add_frame("sales", demo_sales(settings.demo_rows))
    for name, path in settings.datasets:
        registry.add_frame(name, load_file(path))
    return registry


async def healthz(request: Request) -> JSONResponse:
    registry: Registry = request.app.state.registry
    return JSONResponse({"status": "ok", "datasets": len(registry.datasets), "rooms": len(registry.rooms)})


async def list_datasets(request: Request) -> JSONResponse:
    registry: Registry = request.app.state.registry
    return JSONResponse(registry.describe())


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Starlette:
    """The coframe ASGI app. Datasets load at start-up (demo and files)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        reg = registry or build_registry(settings)
        app.state.registry = reg
        log.info("coframe ready: %d dataset(s): %s", len(reg.datasets), ", ".join(reg.datasets))
        try:
            yield
        finally:
            await reg.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/api/datasets", list_datasets),
            WebSocketRoute("/ws/{dataset}", websocket_endpoint),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app
