"""The WebSocket endpoint ``/ws/{dataset}`` (PROTOCOL.md "Transport").

A pump around the sans-I/O :class:`protocol.server_conn.ServerConnection`:
it receives frames from Starlette, feeds them to the connection core with the
time, and acts on the events it gets back. On ``hello`` it opens the room and
joins; messages go to ``room.submit``; replies the core makes itself (decode
errors, rate limits, pong) go out through ``room.reply`` once joined, and
straight onto the socket before; closes happen as the core decides.

Delivery to a joined session has a fast path, :class:`DirectWriter`: when
uvicorn serves the socket with its websockets-sansio protocol, a session whose
queue is empty writes each frame synchronously onto the connection's asyncio
transport, as ``websockets.broadcast`` does, with no task wake-up and no
coroutine per reader (docs/architecture.md "Delivery").

Node-wide caps (PROTOCOL.md §10): every connection is admitted by the
server's :class:`~server.node.Node` before anything else; over a cap it gets
an ``error`` ``overloaded`` and is closed with 1013.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from protocol import CloseCode, Error, ErrorCode, encode
from protocol.server_conn import (
    CloseNeeded,
    ConnectionLimits,
    DecodeNeeded,
    HelloReceived,
    MessageReceived,
    ReplyNeeded,
    ServerConnection,
)

from .auth import Auth, AuthFailed, Identity, at_least, ops_role, required_role
from .auth.http import same_origin, token_of
from .auth.limits import UserLimits
from .auth.service import Watch
from .node import Node, Ticket
from .ops.state import OpError
from .rooms import Registry, Room, Session
from .rooms.policy import Audience, PolicyBroken, row_filter
from .rooms.tick import Gate
from .settings import Settings
from .storage.types import NotFound, StorageCorrupt
from .ws_direct import DirectWriter, frame_of

__all__ = ["websocket_endpoint", "DirectWriter", "frame_of", "expose_send", "RAW_SEND"]

log = logging.getLogger("coframe.ws")


# The scope key under which :func:`expose_send` keeps the server's own ASGI
# ``send`` callable (Starlette wraps the one it hands the endpoint).
RAW_SEND = "coframe.raw_send"

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def expose_send(app: ASGIApp) -> ASGIApp:
    """Wrap ``app`` so a WebSocket scope carries the server's raw ``send`` under :data:`RAW_SEND`.

    :mod:`server.serve` wraps the app with it, outermost, so the endpoint can
    find uvicorn's connection for :class:`DirectWriter`. Everything else
    (handshake, routing, TLS) is unchanged: the request still goes through
    the one Starlette app.
    """

    async def asgi(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await app(scope, receive, send)

    return asgi


class _StarletteTransport:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        # The synchronous fast path, when the server is uvicorn's websockets-sansio.
        self.direct = DirectWriter.of(ws.scope.get(RAW_SEND))

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
        max_rows_per_op=settings.max_rows_per_op,
        max_rows_per_message=settings.max_rows_per_message,
        max_decompressed_bytes=settings.max_decompressed_bytes,
        max_presence_bytes=settings.max_presence_bytes,
        max_meta_bytes=settings.max_meta_bytes,
    )


class _Pump:
    """One connection: the core, the room it joined, and the socket."""

    def __init__(
        self,
        ws: WebSocket,
        registry: Registry,
        settings: Settings,
        node: Node,
        ticket: Ticket,
        identity: Identity,
        role: str,
        audience: Audience,
    ) -> None:
        self.ws = ws
        self.identity, self.role, self.audience = identity, role, audience
        self.unwatch: Any = None
        self.limits: UserLimits = ws.app.state.user_limits
        self.registry = registry
        self.node, self.ticket = node, ticket
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
                receiving = _receive(self.ws)
                data = await (receiving if timeout is None else asyncio.wait_for(receiving, timeout))
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
                    needed = required_role(ev.msg)
                    limited = self.limits.take(
                        self.identity, getattr(ev.msg, "type", ""), getattr(ev.msg, "id", None)
                    ) or self.limits.check_expressions(self.identity, ev.msg)  # per-user caps, §10
                    if limited is not None:
                        self.room.reply(self.session, limited)
                    elif at_least(self.role, needed):
                        self.room.submit(self.session, ev.msg, self._gate(ev.msg))
                    else:
                        what = getattr(ev.msg, "type", "this")
                        message = f"your role on '{self.dataset}' is {self.role}; {what} needs {needed}"
                        details = {"role": self.role, "needed": needed}
                        re = getattr(ev.msg, "id", None)
                        self.room.reply(self.session, Error(ErrorCode.FORBIDDEN, message, details, re=re))
                elif isinstance(ev, ReplyNeeded):
                    if self.room is not None and self.session is not None:
                        self.room.reply(self.session, ev.msg)
                    else:
                        await self.transport.send(encode(ev.msg, binary=ev.binary))
                elif isinstance(ev, DecodeNeeded):
                    # Big tables are decompressed, validated and built off the event loop.
                    result = await asyncio.to_thread(ev.run)
                    self.conn.decoded(ev, result, time.monotonic())
                elif isinstance(ev, HelloReceived):
                    self.node.helloed(self.ticket)
                    await self.join(ev)
                elif isinstance(ev, CloseNeeded):
                    if self.session is not None:
                        await self.session.finish(ev.code, ev.reason)
                    else:
                        await self.transport.close(ev.code, ev.reason)
                    return False
        return True

    def _gate(self, msg: Any) -> Gate | None:
        """For an undo or redo: the check of the batch it pops, against the role when it applies.

        The message needs only editor, but what it applies may be a schema op
        (the undo of an ``add_column`` this client made while it was admin).
        """
        kind = getattr(msg, "type", None)
        if kind not in ("undo", "redo"):
            return None

        def gate(ops: tuple[Any, ...]) -> Error | None:
            needed = ops_role(ops)
            if at_least(self.role, needed):
                return None
            kinds = ", ".join(sorted({op.op for op in ops}))
            message = (
                f"your role on '{self.dataset}' is {self.role}; this {kind} would apply {kinds},"
                f" which needs {needed}; it stays on your {kind} stack"
            )
            return Error(ErrorCode.FORBIDDEN, message, {"role": self.role, "needed": needed}, re=msg.id)

        return gate

    async def join(self, ev: HelloReceived) -> None:
        hello = ev.hello
        if not self.identity.local:
            # Client ids are the user's own: another user's "same" id can neither replace this
            # connection nor share its exactly-once state, and `by` names the user.
            hello = dataclasses.replace(hello, client=f"{self.identity.user}:{hello.client}")
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
        except OpError as e:  # bad_name: a branch or version that breaks the naming rule
            err = Error(e.code, e.message, e.details, re=hello.id)
            self.conn.fail(CloseCode.NO_SUCH_DATASET, f"invalid {e.details.get('what', 'name')}"[:120], err)
            return
        except StorageCorrupt as e:  # logged once by the registry; no retry loop, no traceback
            err = Error(ErrorCode.STORAGE_CORRUPT, e.message, e.details, re=hello.id)
            reason = f"storage of '{self.dataset}' is corrupt: run coframe fsck {self.dataset}"
            self.conn.fail(CloseCode.STORAGE_CORRUPT, reason[:120], err)
            return
        try:  # a row predicate that no longer compiles: no access rather than more than granted
            row_filter(room.state, self.audience)
        except PolicyBroken as e:
            self.conn.fail(CloseCode.FORBIDDEN, e.message[:120], Error(e.code, e.message, re=hello.id))
            return
        me = self.identity
        session = room.join(
            hello,
            self.transport,
            binary=ev.binary,
            audience=self.audience,
            role=self.role,
            user=None if me.local else me.user,
            display=None if me.local else me.display or me.user,
        )
        self.room, self.session = room, session
        self.conn.joined()

        async def close(code: int, reason: str) -> None:
            await session.finish(code, reason[:120])

        def on_change(role: str, audience: Audience) -> None:
            self.role, self.audience = role, audience
            room.refilter(session, audience, role)

        auth: Auth = self.ws.app.state.auth
        watch = Watch(self.identity, self.dataset, self.role, close, on_change, self.audience)
        self.unwatch = auth.watch(watch)
        self.node.trimmer.soon()  # loading a room and encoding a welcome leave freed buffers behind

    async def leave(self) -> None:
        if self.unwatch is not None:
            self.unwatch()
        if self.session is not None and self.room is not None:
            await self.room.leave(self.session)


async def websocket_endpoint(ws: WebSocket) -> None:
    settings: Settings = ws.app.state.settings
    registry: Registry = ws.app.state.registry
    node: Node = ws.app.state.node
    dataset = ws.path_params["dataset"]
    ticket = node.admit(ws.client.host if ws.client is not None else "")
    try:
        await ws.accept()
        if ticket.refused is not None:
            await _refuse(ws, ticket.refused)
            return
        auth: Auth = ws.app.state.auth
        if not same_origin(ws):
            await ws.close(CloseCode.FORBIDDEN, "a WebSocket from another site is refused")
            return
        try:  # identity first: nobody makes the server load data they may not read
            identity = await auth.authenticate(token_of(ws)[0])
        except AuthFailed as e:
            await ws.close(e.close, e.message[:120])
            return
        access = await auth.access(identity, dataset)
        if access is None or not await registry.exists(dataset):
            known = ", ".join(await auth.readable(identity, await registry.names())) or "(none)"
            await ws.close(CloseCode.NO_SUCH_DATASET, f"no dataset {dataset!r}; known: {known}"[:120])
            return
        limits: UserLimits = ws.app.state.user_limits
        refused = limits.connect(identity)
        if refused is not None:
            await _refuse(ws, refused, reason=refused.message)
            return
        pump = _Pump(ws, registry, settings, node, ticket, identity, *access)
        try:
            await pump.run()
        except WebSocketDisconnect:
            return
        finally:
            limits.disconnect(identity)
            await pump.leave()
    finally:
        node.release(ticket)


async def _refuse(ws: WebSocket, err: Error, reason: str = "server overloaded; retry later") -> None:
    """Over a cap: the error as a JSON text frame (any client reads it), then close 1013."""
    try:
        await ws.send_text(encode(err, binary=False))  # type: ignore[arg-type]
        await ws.close(CloseCode.TRY_AGAIN_LATER, reason[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):  # the peer left first
        pass
