"""Run the coframe app under uvicorn on a port-0 socket, for tests."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from server.app import create_app
from server.rooms import Registry
from server.serve import Server
from server.settings import Settings

__all__ = ["running", "serving", "timeout"]

# Timeouts scale with COFRAME_TEST_TIMEOUT_SCALE on slow machines (like websockets' MS).
SCALE = float(os.environ.get("COFRAME_TEST_TIMEOUT_SCALE", "1"))


def timeout(seconds: float) -> float:
    return seconds * SCALE


def bind_port0() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def running(settings: Settings, registry: Registry, sock: socket.socket) -> AsyncIterator[Settings]:
    """Serve ``registry`` on ``sock`` until the block ends; waits on ``Server.ready``, never a sleep.

    Yields the settings with the real port.
    """
    settings = dataclasses.replace(settings, port=sock.getsockname()[1])
    async with serving(create_app(settings, registry), sock):
        yield settings


@asynccontextmanager
async def serving(app: Starlette, sock: socket.socket) -> AsyncIterator[Server]:
    """Serve the coframe ``app`` (from ``create_app``) on ``sock`` until the block ends."""
    settings: Settings = app.state.settings
    server = Server.for_app(app, settings, log_level="warning")
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        ready = asyncio.create_task(server.ready.wait())
        done, _ = await asyncio.wait({ready, task}, timeout=timeout(10), return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            if task.done():
                task.result()
            raise RuntimeError("server did not start")
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout(15))
        sock.close()
