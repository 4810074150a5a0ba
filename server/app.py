"""The Starlette app: HTTP API, the WebSocket route, health probes and start-up loading.

``load_file`` lives in :mod:`server.io_read` and is re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from .api import routes as api_routes
from .api_admin import late_routes as admin_late_routes
from .api_admin import routes as admin_routes
from .auth import Auth, Signer
from .auth.bootstrap import bootstrap
from .auth.http import AuthMiddleware, identity_of, login
from .auth.jwks import JwksVerifier
from .auth.limits import UserLimits
from .auth.tokens import env_key
from .demo import demo_sales
from .errors import exception_handlers
from .health import Health
from .io import load_file
from .node import Node
from .perspective.service import LiveViews
from .perspective.web import routes as dashboard_routes
from .rooms import Registry, RoomConfig, SessionLimits
from .rooms.listing import listing
from .rooms.policy import Audience
from .rooms.transport import SendBudget
from .settings import Settings
from .storage.service import Storage
from .ws import websocket_endpoint

__all__ = [
    "create_app",
    "jwks_verifier",
    "load_file",
    "open_registry",
    "room_config",
    "start_auth",
    "READY_TIMEOUT",
]

log = logging.getLogger("coframe.app")

READY_TIMEOUT = 2.0  # seconds the catalog query of /readyz may take


def room_config(settings: Settings) -> RoomConfig:
    """The rooms' limits; every session of the registry shares one budget of bytes held for sending."""
    return RoomConfig(
        session=SessionLimits(
            max_messages=settings.send_queue_messages,
            max_bytes=settings.send_queue_bytes,
            stall_timeout=settings.stall_timeout,
            budget=SendBudget(settings.max_queued_bytes_total),
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
        expr_max_literal=settings.expr_max_literal,
        expr_memory_bytes=settings.expr_memory_bytes,
        expr_timeout=settings.expr_timeout,
        max_views_per_connection=settings.max_views_per_connection,
        max_queries_per_connection=settings.max_queries_per_connection,
    )


async def open_registry(settings: Settings) -> Registry:
    """The registry on the storage ``settings`` names: in memory when ``data_dir`` is None
    (``--memory``), else the chunk files in ``data_dir`` and its SQLite catalog (or
    ``settings.catalog``). Half-created datasets an older version left are removed
    (:meth:`Storage.repair`). The demo and ``--dataset`` files are committed on first start
    (an existing dataset of that name is kept).

    Raises:
        ValueError, OSError, StorageError: the storage cannot be opened.
        ReadError, OpError: a ``--dataset`` file cannot be read or has a bad name.
    """
    storage = await Storage.for_settings(settings.data_dir, settings.catalog)
    registry = Registry(
        room_config(settings), storage=storage, idle_unload=settings.idle_unload, views=live_views(settings)
    )
    try:
        await storage.repair()  # half-created datasets of older versions (each removal is logged)
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
    """Liveness: 503 when the event loop lags over ``health_max_lag`` or a worker is stuck.

    It reads no storage (that is ``/readyz``), so a slow catalog never makes a live server look dead.
    """
    state = request.app.state
    healthy, report = state.health.live()
    registry: Registry | None = getattr(state, "registry", None)
    if registry is not None:
        report.update(rooms=len(registry.rooms), storage=registry.storage.kind)
    report.update(state.node.stats())
    return JSONResponse(report, status_code=200 if healthy else 503)


async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 only when a cheap catalog query answers and the server is not shutting down."""
    state = request.app.state
    if state.health.shutting_down:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    registry: Registry | None = getattr(state, "registry", None)
    if registry is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            names = await registry.names()
    except Exception as e:  # storage unreachable, or too slow to count as reachable
        why = f"no answer within {READY_TIMEOUT:g}s" if isinstance(e, TimeoutError) else type(e).__name__
        log.warning("/readyz: the catalog did not answer: %s", why)
        return JSONResponse({"status": "storage_unreachable", "error": why}, status_code=503)
    return JSONResponse({"status": "ready", "datasets": len(names), "storage": registry.storage.kind})


async def list_datasets(request: Request) -> JSONResponse:
    """The datasets the user may read (the others do not exist for them), each as they may see
    it: under a row or column policy, its visible columns and rows (:mod:`server.rooms.listing`)."""
    registry: Registry = request.app.state.registry
    auth: Auth = request.app.state.auth
    identity = identity_of(request)

    async def audience_of(name: str) -> Audience | None:
        access = await auth.access(identity, name)
        return None if access is None else access[1]

    return JSONResponse(await listing(registry, audience_of))


def jwks_verifier(settings: Settings) -> JwksVerifier | None:
    """The verifier of ``settings.auth_jwks`` (``--auth-jwks``), or None without one.

    Raises:
        ValueError: the JWKS file is missing, not JSON, or holds no usable key.
    """
    if settings.auth_jwks is None:
        return None
    return JwksVerifier(
        settings.auth_jwks,
        claim=settings.auth_jwks_claim,
        audience=settings.auth_jwks_audience,
        issuer=settings.auth_jwks_issuer,
    )


async def start_auth(
    settings: Settings, registry: Registry, jwks: JwksVerifier | None = None
) -> tuple[Auth, str | None]:
    """The server's :class:`Auth` on the registry's catalog (with ``jwks``, the identity
    provider's tokens too), and the sign-in token to print (or None)."""
    catalog = registry.storage.catalog
    extra = env_key(settings.secret) if settings.secret else None
    auth = Auth(catalog, Signer(catalog, extra), mode=settings.auth, poll=settings.auth_poll, jwks=jwks)
    await auth.start()
    return auth, await bootstrap(auth, signin=settings.signin)


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Starlette:
    """The coframe ASGI app. Datasets load at start-up (demo and files).

    Errors of HTTP routes become ``{"error": {...}}`` replies through
    :data:`server.errors.exception_handlers` (PROTOCOL.md section 11).

    Raises:
        ValueError: ``settings.auth_jwks`` names a bad JWKS file (read here, before any start-up).
    """
    settings = settings or Settings()
    health = Health(settings)
    jwks = jwks_verifier(settings) if settings.auth == "token" else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await health.start()
        try:
            reg = registry
            if reg is None:
                reg = await open_registry(settings)
            app.state.registry = reg
            app.state.auth, app.state.signin_token = await start_auth(settings, reg, jwks)
            watcher = asyncio.get_running_loop().create_task(app.state.auth.run(), name="auth")
            app.state.node.budget = reg.config.session.budget
            reg.storage.start_gc(settings.chunk_gc_grace)  # a pass now, then periodically (stopped on close)
            log.info("coframe ready: datasets %s", ", ".join(await reg.names()) or "(none)")
            try:
                yield
            finally:
                watcher.cancel()
                await app.state.auth.close()
                await _close_registry(reg, settings.shutdown_timeout)
        finally:
            app.state.node.close()
            await health.stop()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/login", login),
            Route("/api/datasets", list_datasets),
            *admin_routes,  # before the API's: its upload route would take POST .../grants
            *api_routes,
            *admin_late_routes,
            WebSocketRoute("/ws/{dataset}", websocket_endpoint),
            *dashboard_routes,
        ],
        lifespan=lifespan,
        exception_handlers=exception_handlers,
        middleware=[Middleware(AuthMiddleware)],
    )
    app.state.settings = settings
    app.state.health = health
    app.state.node = Node(settings)
    app.state.user_limits = UserLimits(
        settings.max_connections_per_user,
        settings.user_ops_per_second,
        settings.user_ops_burst,
        settings.user_upload_bytes_per_hour,
        settings.user_max_expression_chars,
    )
    return app


async def _close_registry(registry: Registry, within: float) -> None:
    """Close every room (each commits its WAL tail) and the storage, but never wait longer than ``within``.

    A room whose tick waits on a stuck worker cannot finish; its acked
    batches are in the WAL, and the next start replays them.
    """
    try:
        async with asyncio.timeout(within):
            await registry.close()
    except TimeoutError:
        log.error("closing the rooms took over %gs; the WAL keeps what was not committed", within)


def live_views(settings: Settings) -> LiveViews:
    """The node's live views, with the views process's budgets from ``settings``."""
    return LiveViews(
        timeout=settings.views_timeout,
        build_timeout=settings.views_build_timeout,
        memory_bytes=settings.views_memory_bytes,
        ttl=settings.views_table_ttl,
    )
