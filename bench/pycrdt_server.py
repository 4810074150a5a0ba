"""The pycrdt-websocket baseline server (optional; the pycrdt-websocket reference).

Run as ``python -m bench.pycrdt_server --port P``; it listens on 127.0.0.1
only, under uvicorn with the same WebSocket implementation as coframe
(``websockets-sansio``). Every WebSocket path is a ``YRoom``
(``pycrdt.websocket``): an update a client sends is applied to the room's
Y document and the resulting update is broadcast to every client of the
room, the sender included. ``GET /healthz`` answers 200 for start-up polling.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from pycrdt.websocket import ASGIServer, WebsocketServer

__all__ = ["main", "create_app"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def create_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app: the pycrdt-websocket server, plus ``/healthz`` and a lifespan."""
    server = WebsocketServer(auto_clean_rooms=False)
    ws_app = ASGIServer(server)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            async with server:
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            ok = scope["path"] == "/healthz"
            body = b'{"status":"ok"}' if ok else b"not found"
            await send(
                {
                    "type": "http.response.start",
                    "status": 200 if ok else 404,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        else:
            await ws_app(scope, receive, send)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="pycrdt-websocket baseline for coframe benchmarks")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=args.port,
        ws="websockets-sansio",
        ws_max_size=32 * 1024 * 1024,
        lifespan="on",
        log_level="warning",
    )


if __name__ == "__main__":
    main()
