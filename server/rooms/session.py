"""A connected client: its identity, encoding and bounded send queue.

Slow consumers are a policy (PROTOCOL.md §10). Each session owns one
writer task and a queue bounded by message count and bytes. Broadcast
payloads (deltas, presence) are *droppable*: when the queue overflows they
are discarded and the session is marked for **resync**; as soon as the
writer catches up it sends a fresh ``welcome`` (reason ``resync``) instead
of the missed deltas. Replies (ack, error, welcome) are never dropped; a
client whose replies alone overflow twice the bound, or that stays in resync
longer than ``stall_timeout``, is closed with ``CloseCode.SLOW_CONSUMER``.
The room never awaits a session, so it never waits for its slowest client.

Fast path: a transport may offer ``direct``, a synchronous writer (for
uvicorn, :class:`server.ws.DirectWriter`). While the queue is empty and the
writer task is not mid-send, :meth:`Session.push` hands each payload to it,
which writes the frame onto the socket's buffer at once, unless that buffer
is over its high-water mark (then it declines and the payload is queued as
above). So a reader that keeps up costs no task wake-up and no coroutine per
message, and a reader that does not falls back to the bounded queue; per
reader, order is kept because nothing is written directly while anything is
queued or being sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from protocol import CloseCode

from .outbound import EVERYONE, Audience

__all__ = ["Transport", "DirectWrite", "Session", "SessionLimits"]

log = logging.getLogger("coframe.session")

Payload = bytes | str
# A payload, or a welcome whose big snapshot is encoded (in a worker thread)
# only when the writer reaches it.
Item = Payload | Callable[[], Awaitable[Payload]]
# A transport's synchronous writer: True if it wrote the frame, False if it
# cannot take it now (buffer over its high-water mark, or closing). It may
# also have ``many(payloads) -> bool``, which writes their frames with one
# write (all or nothing), for a session's held payloads (Session.hold).
DirectWrite = Callable[[Payload], bool]


class Transport(Protocol):
    """What a session needs from a WebSocket (Starlette's, or a test double).

    It may also have a ``direct`` attribute, a :data:`DirectWrite` or None:
    the synchronous fast path (module docstring).
    """

    async def send(self, data: Payload) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_messages: int = 1024
    max_bytes: int = 64 * 1024 * 1024
    stall_timeout: float = 30.0


class Session:
    """One client connection in one room."""

    def __init__(
        self,
        client: str,
        transport: Transport,
        *,
        binary: bool,
        limits: SessionLimits,
        resync: Callable[[Session], None],
        audience: Audience = EVERYONE,
    ) -> None:
        self.client = client
        self.transport = transport
        self.binary = binary
        self.audience = audience  # what this client may see (server.rooms.outbound)
        self.limits = limits
        self.base_seq = 0  # latest base_seq seen from this client (low-water mark input)
        self.codecs: tuple[str, ...] = ()  # Arrow IPC compressions the client reads
        self.awareness_id = 0
        self.awareness_clock = 0
        self._resync = resync
        self._direct: DirectWrite | None = getattr(transport, "direct", None)
        self._held: list[tuple[Payload, bool]] | None = None  # direct writes held for one write
        self._sending = False  # the writer task popped an item and has not finished sending it
        self.direct_writes = 0
        self._queue: deque[tuple[Item, bool]] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._closing: tuple[int, str] | None = None
        self._drained = asyncio.Event()
        self.resync_pending = False
        self.stalled_since: float | None = None
        self.resyncs = 0
        self.dropped = 0
        self.close_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._on_sent: list[Callable[[], None]] = []  # when_sent callbacks, run once the queue is empty

    # -------------------------------------------------------------- queueing

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def when_sent(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once everything queued so far has been handed to the socket (or dropped),
        or the session closed: at once if nothing is queued or being sent.

        The room uses it to count a query as in flight until its result left
        (PROTOCOL.md §10): a client that does not read holds a bounded number
        of results.
        """
        if self._closed or (not self._queue and not self._sending):
            fn()
        else:
            self._on_sent.append(fn)

    def _sent(self) -> None:
        callbacks, self._on_sent = self._on_sent, []
        for fn in callbacks:
            fn()

    def start(self) -> None:
        """Start the writer task, which sends the queue in order."""
        self._task = asyncio.get_running_loop().create_task(self._writer(), name=f"writer:{self.client}")

    def push(self, data: Item, *, droppable: bool = False) -> None:
        """Queue ``data`` without waiting. Never blocks the room.

        Only :meth:`server.rooms.outbound.Outbound.deliver` calls this: it is
        the room's one outbound choke point.
        """
        if self._closed:
            return
        direct = self._direct
        if (
            direct is not None
            and not self._queue
            and not self._sending
            and not self.resync_pending
            and isinstance(data, (bytes, str))
        ):
            if self._held is not None:
                self._held.append((data, droppable))
                return
            try:
                if direct(data):
                    self.direct_writes += 1
                    return
            except Exception as e:  # the peer went away mid-write; the reader sees it too
                self._direct_failed(e)
                return
        self._enqueue(data, droppable)

    def hold(self) -> None:
        """Hold direct writes until :meth:`release`, which writes them with one write.

        The room holds every session around a tick's replies and delta, so a
        client gets its acks and the delta in one write (one syscall), not
        one each. Call both in one synchronous stretch: nothing else may
        write to the session in between.
        """
        if self._direct is not None and self._held is None:
            self._held = []

    def release(self) -> None:
        """Write what :meth:`hold` kept: directly if the transport takes it, else queued in order."""
        items, self._held = self._held, None
        if not items or self._direct is None:
            return
        direct = self._direct
        many = getattr(direct, "many", None)
        try:
            if many is not None and len(items) > 1:
                done = len(items) if many([d for d, _ in items]) else 0
            else:
                done = 0
                for d, _ in items:
                    if not direct(d):
                        break
                    done += 1
        except Exception as e:  # the peer went away mid-write; the reader sees it too
            self._direct_failed(e)
            return
        self.direct_writes += done
        for d, droppable in items[done:]:
            self._enqueue(d, droppable)

    def _direct_failed(self, e: Exception) -> None:
        log.debug("direct write to %s failed: %r", self.client, e)
        self._closed = True
        self._wake.set()
        self._sent()

    def _enqueue(self, data: Item, droppable: bool) -> None:
        if droppable and self.resync_pending:
            self.dropped += 1
            self._check_stall()
            return
        full = len(self._queue) >= self.limits.max_messages or self._queued_bytes >= self.limits.max_bytes
        if full:
            if droppable:
                self._enter_resync()
                self.dropped += 1
                return
            if len(self._queue) >= 2 * self.limits.max_messages:
                self.abort(CloseCode.SLOW_CONSUMER, "send queue overflowed with replies; read faster")
                return
        self._queue.append((data, droppable))
        self._queued_bytes += _size(data)
        self._wake.set()

    def _enter_resync(self) -> None:
        kept = deque((d, dr) for d, dr in self._queue if not dr)
        self.dropped += len(self._queue) - len(kept)
        self._queue = kept
        self._queued_bytes = sum(_size(d) for d, _ in kept)
        self.resync_pending = True
        self.stalled_since = time.monotonic()
        self._wake.set()

    def _check_stall(self) -> None:
        since = self.stalled_since
        if since is not None and time.monotonic() - since > self.limits.stall_timeout:
            self.abort(
                CloseCode.SLOW_CONSUMER,
                f"fell behind for over {self.limits.stall_timeout:g}s; reconnect with since= to resume",
            )

    # --------------------------------------------------------------- writing

    async def _writer(self) -> None:
        try:
            while not self._closed:
                if not self._queue:
                    if self._on_sent:
                        self._sent()
                    if self._closing is not None:
                        self._drained.set()
                        return
                    if self.resync_pending:
                        # The room's callback clears resync_pending and queues a
                        # fresh welcome synchronously, so later deltas queue behind it.
                        self._resync(self)
                        self.resyncs += 1
                        self.stalled_since = None
                        continue
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                item, _ = self._queue.popleft()
                self._queued_bytes -= _size(item)
                self._sending = True
                try:
                    data = item if isinstance(item, (bytes, str)) else await item()
                    await self.transport.send(data)
                finally:
                    self._sending = False
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the peer went away mid-send; the reader sees it too
            log.debug("writer for %s stopped: %r", self.client, e)
            self._closed = True
            self._sent()

    def abort(self, code: int, reason: str) -> None:
        """Close now: drop the queue, stop the writer, close the socket."""
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        self._queue.clear()
        self._queued_bytes = 0
        self._sent()
        if self._task is not None:
            self._task.cancel()
        log.info("closing %s: %s", self.client, reason)
        self._closer = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.transport.close(code, reason), 5.0)
        except Exception as e:  # already gone
            log.debug("close of %s failed: %r", self.client, e)

    async def finish(self, code: int, reason: str, grace: float = 5.0) -> None:
        """Send what is queued (e.g. the error that explains why), then close."""
        if self._closed:
            return
        self._closing = (code, reason)
        self._wake.set()
        try:
            await asyncio.wait_for(self._drained.wait(), grace)
        except TimeoutError:
            pass
        self._closed = True
        self.close_reason = reason
        self._sent()
        await self._close(code, reason)

    async def stop(self) -> None:
        """Stop the writer after the client left (no close frame)."""
        self._closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._sent()
        for task in (self._task, self._closer):
            if task is None:
                continue
            if task is self._task:
                task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


def _size(item: Item) -> int:
    return len(item) if isinstance(item, (bytes, str)) else 0
