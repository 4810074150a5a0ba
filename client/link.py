"""The connection pump under :class:`client.room.Room`.

It drives the sans-I/O :class:`protocol.client_conn.ClientConnection` over a
websockets asyncio socket: it opens sockets (reconnecting with backoff),
feeds the core every server message, applies the core's events (the mirror,
delta streams, live views, the futures of waiting calls) and writes the
frames the core decides to send, in order. It owns one task, the socket
loop, and cancels it on :meth:`RoomLink.close`.

The round trip of a call is on the hot path, so no message waits for a task:
:class:`_Socket` hands each data message to the link straight from the
socket's ``data_received`` (websockets' queue and the socket loop's wake-up
are skipped), and frames are written synchronously to the transport, in the
order the core gives them, so no lock is needed; a caller waits only when the
transport's buffer is over its high-water mark (flow control).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import polars as pl
import websockets
from websockets.asyncio.client import ClientConnection as Socket
from websockets.asyncio.client import connect as ws_connect
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from protocol import (
    CloseCode,
    Committed,
    Delta,
    Error,
    OpBatch,
    PresenceUpdate,
    Subscribe,
    Undo,
    View,
    decode_server,
)
from protocol.client_conn import Answered, ClientConnection, ClientEvent, Dropped, Joined, Received, Rejected

from .errors import ConnectionClosed, OpRejected, RoomRefused
from .mirror import Mirror
from .streams import DeltaEvent, DeltaStream
from .views import LiveView

__all__ = ["RoomLink"]

log = logging.getLogger("coframe.client")

RESUBSCRIBE = "resubscribe:"  # request id prefix of the subscribes sent again after a reconnect

# Close codes after which reconnecting cannot help.
_FATAL_CLOSE = {
    CloseCode.POLICY,
    CloseCode.NO_SUCH_DATASET,
    CloseCode.REPLACED,
    CloseCode.STORAGE_CORRUPT,
    CloseCode.UNAUTHENTICATED,  # reconnecting with the same token would be refused again
    CloseCode.FORBIDDEN,
}


class _Socket(Socket):
    """A websockets client connection that hands each data message to ``on_message`` at once.

    Messages are assembled from their frames here, in ``data_received``,
    instead of being queued for a reader task; control frames (ping, pong,
    close) are websockets' own. An exception from ``on_message`` is kept in
    :attr:`failure` and aborts the connection (the socket loop raises it).
    """

    on_message: Callable[[bytes | str], None] | None = None
    failure: BaseException | None = None
    _parts: list[bytes] | None = None
    _text = False

    def process_event(self, event: Any) -> None:
        handler = self.on_message
        if handler is None or not isinstance(event, Frame) or self.failure is not None:
            super().process_event(event)
            return
        op = event.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if not event.fin:
                self._parts, self._text = [bytes(event.data)], op is Opcode.TEXT
                return
            data, text = event.data, op is Opcode.TEXT
        elif op is Opcode.CONT and self._parts is not None:
            self._parts.append(bytes(event.data))
            if not event.fin:
                return
            data, text, self._parts = b"".join(self._parts), self._text, None
        else:
            super().process_event(event)
            return
        try:
            handler(bytes(data).decode() if text else bytes(data))
        except BaseException as e:  # surfaced by the socket loop, as when it read the message itself
            self.failure = e
            self.transport.abort()


class RoomLink:
    """One room's socket, kept open across drops, and the state the socket feeds."""

    def __init__(self, url: str, client_id: str, *, reconnect: bool, open_timeout: float) -> None:
        self.url = url
        self.client_id = client_id
        self.reconnect = reconnect
        self.open_timeout = open_timeout
        self.mirror = Mirror()
        self.presence: dict[str, Any] = {}
        self.role = "editor"
        self.reconnects = 0
        self.last_commit: Committed | None = None  # the latest ``committed`` seen
        # client_seq grows across process restarts too (exactly-once per client id).
        # Big snapshots as Parquet: a quarter of the bytes, read by Polars directly (PROTOCOL.md §1).
        codecs = ("parquet", "zstd", "lz4")
        self._conn = ClientConnection(client_id, first_id=time.time_ns() // 1000, codecs=codecs)
        self._futures: dict[int | str, asyncio.Future[Any]] = {}  # by request id (a batch's: its client_seq)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._subscribers: list[DeltaStream] = []
        self._views: dict[str, LiveView] = {}
        self._ws: _Socket | None = None
        self._settled = asyncio.Event()  # the first welcome came, or the socket loop ended
        self._welcomed = False
        self._closed = False
        self._fatal: Exception | None = None
        self._refusal: Error | None = None  # an error before the welcome: why the server refused the room
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> RoomLink:
        """Connect and return once the welcome arrived.

        Raises:
            TimeoutError: no welcome within ``open_timeout``.
            ConnectionError: the server cannot be reached.
            ConnectionClosed: the server closed the socket for good first.
        """
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"coframe:{self.client_id}")
        self._task.add_done_callback(lambda _: self._settled.set())
        try:
            async with asyncio.timeout(self.open_timeout):
                await self._settled.wait()
        except TimeoutError:
            await self.close()
            raise TimeoutError(f"no welcome from {self.url} within {self.open_timeout}s") from None
        if not self._welcomed:
            failed = None if self._task.cancelled() else self._task.exception()
            await self.close()
            raise failed or self._fatal or ConnectionClosed(f"{self.url} closed before the welcome")
        return self

    async def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._conn.close()
        self._fail_all(ConnectionClosed("room closed"))
        for sub in list(self._subscribers):
            sub.put(None)
        for view in list(self._views.values()):
            view._end("room closed")
        self._views.clear()
        self._wake_waiters()

    async def drop_connection(self) -> None:
        """Close the socket without closing the room: it reconnects and resumes."""
        if self._ws is not None:
            await self._ws.close()

    # ------------------------------------------------------------ the socket loop

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                async with ws_connect(
                    self.url,
                    max_size=None,
                    open_timeout=self.open_timeout,
                    compression=None,
                    create_connection=_Socket,
                ) as ws:
                    assert isinstance(ws, _Socket)
                    self._ws = ws
                    ws.on_message = self._on_message
                    self._refusal = None
                    self._conn.connect()
                    self._write()
                    attempt = 0
                    await ws.wait_closed()
                    if ws.failure is not None:
                        raise ws.failure
                    rcvd = ws.protocol.close_rcvd
                    if rcvd is None:  # no close frame: as when reading raised ConnectionClosed
                        code, reason = None, str(ws.close_exc)
                    else:
                        code, reason = rcvd.code, rcvd.reason
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake, TimeoutError) as e:
                if not self._welcomed and attempt >= 2:
                    raise ConnectionError(f"cannot connect to {self.url}: {e}") from e
                code = getattr(getattr(e, "rcvd", None), "code", None)
                reason = getattr(getattr(e, "rcvd", None), "reason", "") or str(e)
            finally:
                if self._ws is not None:
                    self._ws = None
                    self._conn.connection_lost()
                    self._handle(self._conn.events_received())
            if self._closed or not self.reconnect or code in _FATAL_CLOSE:
                self._fail(self._closed_error(code, reason))
                return
            attempt += 1
            self.reconnects += 1
            # Backoff between reconnect attempts (runtime behaviour, not a test wait).
            await asyncio.sleep(min(2.0, 0.02 * 2**attempt) * (0.5 + random.random()))

    def _closed_error(self, code: int | None, reason: str) -> ConnectionClosed:
        """The error of a socket closed for good: with the server's error code when it sent one."""
        refusal = self._refusal
        if refusal is not None and code in _FATAL_CLOSE:
            return RoomRefused(refusal.code, refusal.message, refusal.details, code)
        return ConnectionClosed(f"connection closed with code {code}: {reason}")

    def _write(self) -> None:
        """Write the core's frames to the socket now, in order.

        On a socket that is closing they are dropped: the socket loop sees the
        close, and batches are resent after the next welcome.
        """
        frames = self._conn.data_to_send()
        ws = self._ws
        if ws is None or not frames or ws.protocol.state is not State.OPEN:
            return
        for frame in frames:
            if isinstance(frame, str):
                ws.protocol.send_text(frame.encode())
            else:
                ws.protocol.send_binary(frame)
        try:
            ws.send_data()
        except Exception:  # the transport failed: its connection_lost ends the socket loop
            ws.transport.abort()

    async def _flush(self) -> None:
        """:meth:`_write`, then wait while the transport's buffer is over its high-water mark."""
        self._write()
        ws = self._ws
        if ws is not None and ws.paused:
            await ws.drain()

    def _on_message(self, data: bytes | str) -> None:
        """One server message, straight from the socket: decode, take, answer."""
        self._dispatch(decode_server(data))
        if self._conn.has_data_to_send():
            self._write()

    def _dispatch(self, msg: Any) -> None:
        """Take one server message: the core turns it into events, applied here."""
        self._conn.receive_message(msg)
        self._handle(self._conn.events_received())

    def _handle(self, events: list[ClientEvent]) -> None:
        for ev in events:
            if isinstance(ev, Received):
                self._apply(ev.msg)
            elif isinstance(ev, Answered):
                self._settle(ev.request_id, ev.reply, None)
            elif isinstance(ev, Rejected):
                if ev.kind == "resubscribe":  # e.g. a column the view uses was renamed or dropped meanwhile
                    view = self._views.pop(str(ev.request_id).removeprefix(RESUBSCRIBE), None)
                    if view is not None:
                        e = ev.error
                        view._end(f"could not subscribe again after a reconnect: {e.code}: {e.message}")
                else:
                    e = ev.error
                    self._settle(ev.request_id, None, OpRejected(e.code, e.message, e.details))
            elif isinstance(ev, Dropped):
                why = f"the connection closed before the reply to '{ev.kind}'"
                self._settle(ev.request_id, None, ConnectionClosed(why))
            elif isinstance(ev, Joined):
                self._joined(ev)

    def _apply(self, msg: Any) -> None:
        if isinstance(msg, Delta):
            if self.mirror.apply(msg):
                self._publish(msg)
                self._wake_waiters()
        elif isinstance(msg, Committed):
            self.last_commit = msg
        elif isinstance(msg, View):
            view = self._views.get(msg.view)
            if view is not None:
                view._apply(msg)
                if msg.kind == "closed":
                    self._views.pop(msg.view, None)
        elif isinstance(msg, PresenceUpdate):
            for k, v in msg.states.items():
                if v is None:
                    self.presence.pop(k, None)
                else:
                    self.presence[k] = v
        elif isinstance(msg, Error):
            if not self._conn.live:  # before this socket's welcome: the server refuses the room; keep why
                self._refusal = msg
            log.warning("server error: %s: %s", msg.code, msg.message)

    def _joined(self, ev: Joined) -> None:
        w = ev.welcome
        self.role = w.role
        if ev.load:
            self.mirror.load(w)
            if ev.resync:
                resync = DeltaEvent(w.seq, w.seq, self.mirror.frame, [], (), True, resync=True)
                for sub in self._subscribers:
                    sub.put(resync)
        self._welcomed = True
        self._settled.set()
        self._wake_waiters()
        if w.reason != "resync":
            # A new socket has no views: open the live ones again (their snapshots follow).
            for v in self._views.values():
                if v.seq >= 0:
                    again = Subscribe(v.name, v.config, v.viewport, id=RESUBSCRIBE + v.name)
                    self._conn.send_request("resubscribe", again)

    def _publish(self, d: Delta) -> None:
        if not self._subscribers:
            return
        up = pl.from_arrow(d.upserts) if d.upserts is not None else pl.DataFrame()
        assert isinstance(up, pl.DataFrame)
        ev = DeltaEvent(d.seq_to, d.seq_from, up, list(d.deleted), d.by, d.schema is not None)
        for sub in self._subscribers:
            sub.put(ev)

    # ------------------------------------------------------------ waiting calls

    def _settle(self, request_id: int | str, result: Any, exc: Exception | None) -> None:
        fut = self._futures.pop(request_id, None)
        if fut is None or fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _fail_all(self, err: Exception) -> None:
        futures, self._futures = self._futures, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(err)

    def _fail(self, err: Exception) -> None:
        self._fatal = err
        self._conn.close()
        self._fail_all(err)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        if not self._waiters:
            return
        keep = []
        for seq, fut in self._waiters:
            if fut.done():
                continue
            if self.mirror.seq >= seq or self._fatal is not None or self._closed:
                fut.set_result(None)
            else:
                keep.append((seq, fut))
        self._waiters = keep

    async def _send(self, msg: OpBatch | Undo) -> Any:
        """Send a batch (its ``id`` is its ``client_seq``); return its ack.

        Raises:
            OpRejected: the server rejected it.
            ConnectionClosed: the room closed first.
        """
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise ConnectionClosed("room closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[msg.client_seq] = fut
        self._conn.send_batch(msg)
        await self._flush()
        return await fut

    async def _request(self, kind: str, make: Any) -> Any:
        """Send ``make(request_id)`` and return its reply.

        Raises:
            OpRejected: the server answered with an error.
            ConnectionClosed: not connected, or the socket closed before the reply.
        """
        rid = self._conn.next_id()
        if not self._conn.send_request(kind, make(rid)):
            raise ConnectionClosed("not connected")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[rid] = fut
        await self._flush()
        return await fut
