"""A connected client: its identity, encoding and bounded send queue.

Slow consumers are a policy (PROTOCOL.md §10). Each session owns one
writer task and a queue bounded by message count and bytes. Broadcast
payloads (deltas, presence) are *droppable*: when the queue overflows they
are discarded and the session is marked for **resync**; as soon as the
writer catches up it sends a fresh ``welcome`` (reason ``resync``) instead
of the missed deltas. Replies (ack, error, welcome) are never dropped; a
client whose replies alone overflow twice the bound (in messages or in
bytes), or that stays in resync longer than ``stall_timeout``, is closed
with ``CloseCode.SLOW_CONSUMER``. The room never awaits a session, so it
never waits for its slowest client.

Node-wide, every session charges the server's :class:`SendBudget`
(``max_queued_bytes_total``) with the bytes it holds: its queue, the payload
its writer is sending, and what a write left in the socket's buffer over its
high-water mark, until that drains. A session that would queue past the
budget is a slow consumer too: broadcasts are dropped and it is resynced; a
reply that does not fit closes it with ``error`` ``overloaded`` and
``CloseCode.TRY_AGAIN_LATER``. A closed session gives everything back.

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
from collections.abc import Callable

from protocol import CloseCode, Error, ErrorCode, encode

from .policy import EVERYONE, Audience
from .transport import CLOSE_GRACE, DirectWrite, Item, Payload, SendBudget, SessionLimits, Transport

__all__ = ["Transport", "DirectWrite", "Payload", "Session", "SessionLimits", "SendBudget"]

log = logging.getLogger("coframe.session")


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
        role: str = "editor",
        user: str | None = None,
        display: str | None = None,
    ) -> None:
        self.client = client
        self.transport = transport
        self.binary = binary
        self.audience = audience  # what this client may see (server.rooms.policy)
        self.role = role  # its role on the dataset (the welcome says it)
        self.user, self.display = user, display  # who signed in (None under --auth none)
        self.limits = limits
        self.base_seq = 0  # latest base_seq seen from this client (low-water mark input)
        self.codecs: tuple[str, ...] = ()  # Arrow IPC compressions the client reads
        self.awareness_id = 0
        self.awareness_clock = 0
        self._resync = resync
        self._direct: DirectWrite | None = getattr(transport, "direct", None)
        self._backlog: Callable[[], int] | None = getattr(self._direct, "backlog", None)
        self._budget = limits.budget
        self._charged = 0  # bytes this session has charged to the budget
        self._inflight = 0  # bytes being sent, or left in the socket's buffer over its mark
        self._draining = False  # a direct write left the socket's buffer over its mark
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
    def held_bytes(self) -> int:
        """Bytes this session holds against the server's budget: queued, in flight, not yet drained."""
        return self._queued_bytes + self._inflight

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
                    if self._backlog is not None:
                        self._check_backlog()
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
        if done and self._backlog is not None:
            self._check_backlog()
        for d, droppable in items[done:]:
            self._enqueue(d, droppable)

    def _check_backlog(self) -> None:
        """After a direct write: if it left the socket's buffer over its mark, hold those bytes
        against the budget, and write nothing more directly, until the writer saw it drain."""
        assert self._backlog is not None
        backlog = self._backlog()
        if backlog:
            self._draining = self._sending = True
            self._inflight = backlog
            self._settle()
            self._wake.set()

    def _direct_failed(self, e: Exception) -> None:
        log.debug("direct write to %s failed: %r", self.client, e)
        self._closed = True
        self._drop_all()
        self._wake.set()
        self._sent()

    def _enqueue(self, data: Item, droppable: bool) -> None:
        if droppable and self.resync_pending:
            self.dropped += 1
            self._check_stall()
            return
        size = _size(data)
        limits, budget = self.limits, self._budget
        full = len(self._queue) >= limits.max_messages or self._queued_bytes >= limits.max_bytes
        over = budget is not None and not budget.fits(size)
        if full or over:
            if droppable:
                self._enter_resync()
                self.dropped += 1
                return
            if (
                len(self._queue) >= 2 * limits.max_messages
                or self._queued_bytes + size > 2 * limits.max_bytes
            ):
                self.abort(CloseCode.SLOW_CONSUMER, "send queue overflowed with replies; read faster")
                return
            if over:
                self._overloaded()
                return
        self._queue.append((data, droppable))
        self._queued_bytes += size
        self._settle()
        self._wake.set()

    def _overloaded(self) -> None:
        """The server holds ``max_queued_bytes_total`` for its clients: close with 1013, after an error."""
        assert self._budget is not None
        self._budget.closed += 1
        limit = self._budget.limit
        why = f"the server holds its limit of {limit} bytes for clients; retry later, with backoff"
        err = Error(ErrorCode.OVERLOADED, why, {"limit": "max_queued_bytes_total", "bytes": limit})
        self.abort(
            CloseCode.TRY_AGAIN_LATER, "server overloaded; retry later", last=encode(err, binary=self.binary)
        )

    def _enter_resync(self) -> None:
        kept = deque((d, dr) for d, dr in self._queue if not dr)
        self.dropped += len(self._queue) - len(kept)
        self._queue = kept
        self._queued_bytes = sum(_size(d) for d, _ in kept)
        self._settle()
        self.resync_pending = True
        self.stalled_since = time.monotonic()
        self._wake.set()

    def _settle(self) -> None:
        """Bring the budget's count of this session's bytes up to date."""
        budget = self._budget
        if budget is not None:
            held = self._queued_bytes + self._inflight
            budget.charge(held - self._charged)
            self._charged = held

    def _drop_all(self) -> None:
        """Forget everything queued or in flight (the session is closed) and give its bytes back."""
        self._queue.clear()
        self._queued_bytes = self._inflight = 0
        self._settle()

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
                if self._draining:
                    await self._drain()
                    continue
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
                self._sending = True
                try:
                    await self._send(item)
                finally:
                    self._sending = False
                    self._inflight = 0
                    self._settle()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the peer went away mid-send; the reader sees it too
            log.debug("writer for %s stopped: %r", self.client, e)
            self._closed = True
            self._drop_all()
            self._sent()

    async def _send(self, item: Item) -> None:
        """Send one queued item; its bytes stay charged until the socket's buffer drained."""
        size = _size(item)
        self._queued_bytes -= size
        self._inflight = size
        if not isinstance(item, (bytes, str)):  # a welcome encoded now: not when the server is full
            budget = self._budget
            if budget is not None and budget.over:
                self._overloaded()
                return
            item = await item()
            self._inflight = size = len(item)
            if budget is not None and not budget.fits(size):
                self._overloaded()
                return
        self._settle()
        await self.transport.send(item)
        del item  # not kept alive while the buffer drains
        drained = getattr(self._direct, "drained", None)
        if drained is not None:
            await drained()

    async def _drain(self) -> None:
        """Wait until a direct write's backlog left the socket's buffer, then write directly again."""
        drained = getattr(self._direct, "drained", None)
        if drained is not None:
            await drained()
        self._draining = self._sending = False
        self._inflight = 0
        self._settle()

    def abort(self, code: int, reason: str, *, last: Payload | None = None) -> None:
        """Close now: drop the queue, stop the writer, close the socket (after ``last``, if given)."""
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        self._drop_all()
        self._sent()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        log.info("closing %s: %s", self.client, reason)
        self._closer = asyncio.get_running_loop().create_task(self._close(code, reason, last))

    async def _close(self, code: int, reason: str, last: Payload | None = None) -> None:
        """Send ``last`` and the close frame; a peer that does not take them in time is dropped."""
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                if last is not None:
                    await self.transport.send(last)
                await self.transport.close(code, reason)
        except Exception as e:  # already gone, or not reading: drop the connection
            log.debug("close of %s failed: %r", self.client, e)
            drop = getattr(self._direct, "abort", None)
            if drop is not None:
                drop()

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
        if self._task is not None:
            self._task.cancel()
        self._drop_all()
        self._sent()
        await self._close(code, reason)

    async def stop(self) -> None:
        """Stop the writer after the client left (no close frame)."""
        self._closed = True
        self._drop_all()
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
