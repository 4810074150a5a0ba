"""Run the app under uvicorn, on a given socket, with a start-up event."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from .settings import Settings
from .ws import expose_send

__all__ = ["Server", "uvicorn_config"]


def uvicorn_config(app: object, settings: Settings, **kw: object) -> uvicorn.Config:
    return uvicorn.Config(
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


class Server(uvicorn.Server):
    """uvicorn.Server whose ``ready`` event is set once it accepts connections."""

    def __init__(self, config: uvicorn.Config, *, announce: bool = False) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self.announce = announce
        self.port: int | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                self.port = sock.getsockname()[1]
        if self.announce:  # with --port 0, this line tells scripts and tests the real port
            print(f"coframe listening on http://{self.config.host}:{self.port}", flush=True)
        self.ready.set()
