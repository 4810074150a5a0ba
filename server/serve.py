"""Run the app under uvicorn, on a given socket, with a start-up event."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from .settings import Settings

__all__ = ["Server", "uvicorn_config"]


def uvicorn_config(app: object, settings: Settings, **kw: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.transport_max_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        log_level=str(kw.pop("log_level", "info")),
        **kw,  # type: ignore[arg-type]
    )


class Server(uvicorn.Server):
    """uvicorn.Server whose ``ready`` event is set once it accepts connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self.ready.set()
