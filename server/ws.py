"""The WebSocket endpoint ``/ws/{dataset}`` (PROTOCOL.md "Transport").

It owns one connection's lifecycle (``server.rooms.lifecycle.CONNECTION``):
frames in are size-checked and decoded here, then handed to the room.
Replies the endpoint makes itself (decode errors, pong) go through the
session's bounded queue like everything else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from protocol import (
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    decode_client,
    encode,
)

from .rooms import Registry, Session
from .rooms.lifecycle import CONNECTION, IllegalTransition, next_state
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


class _Bucket:
    """Token bucket for op messages per client (PROTOCOL.md "Limits")."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


async def _receive(ws: WebSocket) -> tuple[bytes | str, bool] | None:
    msg = await ws.receive()
    if msg["type"] == "websocket.disconnect":
        return None
    if msg.get("bytes") is not None:
        return msg["bytes"], True
    return msg.get("text") or "", False


def _error(e: ProtocolError, re: Any = None) -> Error:
    return Error(e.code, e.message, e.details, re if re is not None else e.request_id)


async def websocket_endpoint(ws: WebSocket) -> None:
    settings: Settings = ws.app.state.settings
    registry: Registry = ws.app.state.registry
    dataset = ws.path_params["dataset"]
    branch = ws.query_params.get("branch", "main")
    at = ws.query_params.get("at")
    await ws.accept()
    if not await registry.exists(dataset):
        known = ", ".join(await registry.names()) or "(none)"
        await ws.close(CloseCode.NO_SUCH_DATASET, f"no dataset '{dataset}'; known: {known}"[:120])
        return
    transport = _StarletteTransport(ws)
    state = "connected"
    session: Session | None = None
    room = None
    bucket = _Bucket(settings.ops_per_second, settings.ops_burst)
    try:
        while True:
            timeout = settings.hello_timeout if session is None else None
            try:
                frame = await asyncio.wait_for(_receive(ws), timeout)
            except TimeoutError:
                await ws.close(CloseCode.POLICY, f"no hello within {settings.hello_timeout:g}s")
                return
            if frame is None:
                return
            data, binary = frame
            if len(data) > settings.max_message_bytes:
                err = Error(
                    ErrorCode.TOO_LARGE,
                    f"message of {len(data)} bytes is over the {settings.max_message_bytes}-byte limit;"
                    " split the op into several messages",
                    {"limit": settings.max_message_bytes, "size": len(data)},
                )
                await _reply(ws, session, err, binary)
                continue
            try:
                msg = decode_client(data)
            except ProtocolError as e:
                await _reply(ws, session, _error(e), binary)
                continue
            event = "hello" if isinstance(msg, Hello) else "message"
            try:
                state = next_state(CONNECTION, state, event, machine="connection")
            except IllegalTransition as t:
                what = (
                    "send 'hello' first"
                    if t.code == ErrorCode.NOT_JOINED
                    else "only one 'hello' per connection"
                )
                err = Error(t.code or ErrorCode.BAD_FIELD, f"'{msg.type}' not allowed now: {what}", re=msg.id)
                await _reply(ws, session, err, binary)
                if session is not None:
                    await session.finish(CloseCode.POLICY, what)
                else:
                    await ws.close(CloseCode.POLICY, what)
                return
            if isinstance(msg, Hello):
                try:
                    room = await (registry.open_at(dataset, at) if at else registry.open(dataset, branch))
                except (KeyError, NotFound) as e:
                    what = f"version '{at}'" if at else f"branch '{branch}'"
                    reason = f"no {what} in dataset '{dataset}'"
                    await _reply(ws, None, Error(ErrorCode.BAD_FIELD, f"{reason} ({e})", re=msg.id), binary)
                    await ws.close(CloseCode.NO_SUCH_DATASET, reason[:120])
                    return
                try:
                    session = room.join(msg, transport, binary=binary)
                except ProtocolError as e:
                    await _reply(ws, None, _error(e, msg.id), binary)
                    await ws.close(CloseCode.POLICY, e.message[:120])
                    return
                continue
            assert session is not None and room is not None
            if isinstance(msg, Ping):
                session.push(encode(Pong(msg.id), binary=session.binary))
            elif msg.type in ("op", "undo", "redo") and not bucket.take():
                err = Error(
                    ErrorCode.RATE_LIMITED,
                    f"over {settings.ops_per_second:g} op messages per second; batch ops into fewer messages",
                    re=msg.id,
                )
                session.push(encode(err, binary=session.binary))
            else:
                room.submit(session, msg)
            if session.closed:
                return
    except WebSocketDisconnect:
        return
    finally:
        if session is not None and room is not None:
            await room.leave(session)


async def _reply(ws: WebSocket, session: Session | None, err: Error, binary: bool) -> None:
    if session is not None:
        session.push(encode(err, binary=session.binary))
    else:
        await _StarletteTransport(ws).send(encode(err, binary=binary))
