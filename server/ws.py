"""The WebSocket endpoint ``/ws/{dataset}`` (PROTOCOL.md "Transport").

A pump around the sans-I/O :class:`protocol.server_conn.ServerConnection`:
it receives frames from Starlette, feeds them to the connection core with the
time, and acts on the events it gets back. On ``hello`` it opens the room and
joins; messages go to ``room.submit``; replies the core makes itself (decode
errors, rate limits, pong) go out through ``room.reply`` once joined, and
straight onto the socket before; closes happen as the core decides.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from protocol import CloseCode, Error, ErrorCode, encode
from protocol.server_conn import (
    CloseNeeded,
    ConnectionLimits,
    HelloReceived,
    MessageReceived,
    ReplyNeeded,
    ServerConnection,
)

from .rooms import Registry, Room, Session
from .settings import Settings
from .storage.types import NotFound

__all__ = ["websocket_endpoint"]

log = logging.getLogger("coframe.ws")


class _StarletteTransport:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_text(data)

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            await self.ws.close(code, reason)


async def _receive(ws: WebSocket) -> bytes | str | None:
    msg = await ws.receive()
    if msg["type"] == "websocket.disconnect":
        return None
    if msg.get("bytes") is not None:
        return msg["bytes"]
    return msg.get("text") or ""


def limits_from(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        max_message_bytes=settings.max_message_bytes,
        ops_per_second=settings.ops_per_second,
        ops_burst=settings.ops_burst,
        hello_timeout=settings.hello_timeout,
    )


class _Pump:
    """One connection: the core, the room it joined, and the socket."""

    def __init__(self, ws: WebSocket, registry: Registry, settings: Settings) -> None:
        self.ws = ws
        self.registry = registry
        self.transport = _StarletteTransport(ws)
        self.conn = ServerConnection(limits_from(settings), time.monotonic())
        self.dataset: str = ws.path_params["dataset"]
        self.branch = ws.query_params.get("branch", "main")
        self.at = ws.query_params.get("at")
        self.room: Room | None = None
        self.session: Session | None = None

    async def run(self) -> None:
        while True:
            deadline = self.conn.hello_deadline
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                data = await asyncio.wait_for(_receive(self.ws), timeout)
            except TimeoutError:
                self.conn.tick(time.monotonic())
            else:
                if data is None:
                    return
                self.conn.receive_frame(data, time.monotonic())
            if not await self.act():
                return
            if self.session is not None and self.session.closed:
                return

    async def act(self) -> bool:
        """Carry out the core's events; False once the connection is closed."""
        while events := self.conn.events_received():
            for ev in events:
                if isinstance(ev, MessageReceived):
                    assert self.room is not None and self.session is not None
                    self.room.submit(self.session, ev.msg)
                elif isinstance(ev, ReplyNeeded):
                    if self.room is not None and self.session is not None:
                        self.room.reply(self.session, ev.msg)
                    else:
                        await self.transport.send(encode(ev.msg, binary=ev.binary))
                elif isinstance(ev, HelloReceived):
                    await self.join(ev)
                elif isinstance(ev, CloseNeeded):
                    if self.session is not None:
                        await self.session.finish(ev.code, ev.reason)
                    else:
                        await self.transport.close(ev.code, ev.reason)
                    return False
        return True

    async def join(self, ev: HelloReceived) -> None:
        hello = ev.hello
        try:
            room = await (
                self.registry.open_at(self.dataset, self.at)
                if self.at
                else self.registry.open(self.dataset, self.branch)
            )
        except NotFound as e:
            what = f"version '{self.at}'" if self.at else f"branch '{self.branch}'"
            reason = f"no {what} in dataset '{self.dataset}'"
            what_param = {"at": self.at} if self.at else {"branch": self.branch}
            err = Error(ErrorCode.BAD_FIELD, e.message, {**e.details, **what_param}, re=hello.id)
            self.conn.fail(CloseCode.NO_SUCH_DATASET, reason, err)
            return
        self.room, self.session = room, room.join(hello, self.transport, binary=ev.binary)
        self.conn.joined()

    async def leave(self) -> None:
        if self.session is not None and self.room is not None:
            await self.room.leave(self.session)


async def websocket_endpoint(ws: WebSocket) -> None:
    settings: Settings = ws.app.state.settings
    registry: Registry = ws.app.state.registry
    dataset = ws.path_params["dataset"]
    await ws.accept()
    if not await registry.exists(dataset):
        known = ", ".join(await registry.names()) or "(none)"
        await ws.close(CloseCode.NO_SUCH_DATASET, f"no dataset {dataset!r}; known: {known}"[:120])
        return
    pump = _Pump(ws, registry, settings)
    try:
        await pump.run()
    except WebSocketDisconnect:
        return
    finally:
        await pump.leave()
