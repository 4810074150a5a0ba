"""Run the app under uvicorn, on a given socket, with a start-up event and a bounded shutdown.

SIGTERM (or SIGINT) makes :class:`Server` shut down within the app's
``shutdown_timeout``, even when a worker thread is stuck:

1. ``/readyz`` answers 503 at once, and the server stops accepting connections;
2. every room commits its WAL tail (autocommit) and closes, concurrently;
3. uvicorn closes the remaining connections and runs the app's shutdown;
4. the worker pools are abandoned (``shutdown(wait=False, cancel_futures=True)``),
   never waited for (the app's shutdown does it for the default executor; past
   the deadline, every tracked pool), and the process exits.

Each step gets what is left of the budget; a step that overruns it is
logged and cut short. Acked batches are in the WAL whatever happens, and the
next start replays what no commit covered.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from types import FrameType
from typing import Any

import uvicorn

from .settings import Settings
from .workers import abandon_all
from .ws import expose_send

__all__ = ["Server", "uvicorn_config", "RedactTokens"]

log = logging.getLogger("coframe.serve")

COMMIT_SHARE = 0.5  # of shutdown_timeout, for step 2 (the rooms' commits)


class RedactTokens(logging.Filter):
    """Rewrites ``token=<anything>`` in a log record (uvicorn's access log shows query strings)."""

    _TOKEN = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(
                self._TOKEN.sub(r"\1<redacted>", a) if isinstance(a, str) else a for a in args
            )  # noqa: E501
        if isinstance(record.msg, str):
            record.msg = self._TOKEN.sub(r"\1<redacted>", record.msg)
        return True


def redact_logs() -> None:
    """Install :class:`RedactTokens` on uvicorn's loggers (idempotent)."""
    for name in ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def uvicorn_config(app: object, settings: Settings, **kw: object) -> uvicorn.Config:
    config = uvicorn.Config(
        # The WebSocket endpoint finds uvicorn's connection through the raw
        # ASGI send (server.ws.DirectWriter, the fast delivery path).
        expose_send(app),  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.transport_max_bytes,
        # No permessage-deflate: it would compress every frame per connection
        # on the event loop (5 s for a 1M-row welcome), defeating encode-once.
        ws_per_message_deflate=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        log_level=str(kw.pop("log_level", "info")),
        **kw,  # type: ignore[arg-type]
    )
    redact_logs()  # after Config: it applies uvicorn's logging config
    return config


class Server(uvicorn.Server):
    """uvicorn.Server whose ``ready`` event is set once it accepts connections.

    With ``app`` (the coframe app, whose state holds the health, the registry
    and the settings), a signal starts the bounded shutdown of the module
    docstring.
    """

    def __init__(self, config: uvicorn.Config, *, announce: bool = False, app: Any = None) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self.announce = announce
        self.port: int | None = None
        self.app = app

    @classmethod
    def for_app(cls, app: Any, settings: Settings, *, announce: bool = False, **kw: object) -> Server:
        """The server of the coframe ``app`` (from :func:`server.app.create_app`) with ``settings``."""
        return cls(uvicorn_config(app, settings, **kw), announce=announce, app=app)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                self.port = sock.getsockname()[1]
        if self.announce:  # with --port 0, this line tells scripts and tests the real port
            scheme = "https" if self.config.ssl_certfile else "http"
            print(f"coframe listening on {scheme}://{self.config.host}:{self.port}", flush=True)
            token = getattr(self.app.state, "signin_token", None) if self.app is not None else None
            if token:  # as Jupyter does: open this URL to sign in (the token is valid 30 days)
                print(f"Sign in: {scheme}://{self.config.host}:{self.port}/login?token={token}", flush=True)
        self.ready.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """A signal: not ready from now on (``/readyz`` 503), then uvicorn's own handling."""
        if self.app is not None:
            self.app.state.health.shutting_down = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.app is None:
            await super().shutdown(sockets)
            return
        state = self.app.state
        state.health.shutting_down = True
        budget: float = state.settings.shutdown_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        for server in self.servers:  # no new connections while the rooms commit
            server.close()
        registry = getattr(state, "registry", None)
        if registry is not None:
            try:
                async with asyncio.timeout(budget * COMMIT_SHARE):
                    await registry.close_rooms(reason="server shutting down")
            except TimeoutError:
                log.error(
                    "shutdown: rooms still closing after %gs; the WAL keeps their batches",
                    budget * COMMIT_SHARE,
                )
        # What is left: half for the connections, the rest for the app's shutdown.
        self.config.timeout_graceful_shutdown = max(0.1, (deadline - loop.time()) / 2)
        try:
            async with asyncio.timeout_at(deadline):
                await super().shutdown(sockets)
        except TimeoutError:  # the app's own shutdown did not get to abandon its pools: do it here
            log.error("shutdown: still not done after %gs; exiting anyway", budget)
            abandon_all()
