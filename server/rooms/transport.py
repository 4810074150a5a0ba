"""What a session sends through and within: its transport, its limits, and the node's budget.

A :class:`Transport` is what a :class:`~server.rooms.session.Session` needs
from a WebSocket; :class:`SessionLimits` bound one session's queue (PROTOCOL.md
§10); :class:`SendBudget` bounds the bytes every session of the server holds
for sending together (``max_queued_bytes_total``). Each session charges the
budget with the bytes it holds: its queue, plus the payload it is sending
and whatever is left in the socket's buffer over its high-water mark until
that drains. A session that would queue more than the budget has left is
treated as a slow consumer: its broadcasts are dropped and it is resynced,
and a reply that does not fit closes it with ``overloaded`` and **1013**. So
clients that do not read cost the server at most the budget, not its memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Payload", "Item", "DirectWrite", "Transport", "SessionLimits", "SendBudget", "CLOSE_GRACE"]

Payload = bytes | str
# A payload, or a welcome whose big snapshot is encoded (in a worker thread)
# only when the writer reaches it.
Item = Payload | Callable[[], Awaitable[Payload]]
# A transport's synchronous writer: True if it wrote the frame, False if it
# cannot take it now (buffer over its high-water mark, or closing). It may
# also have ``many(payloads) -> bool``, which writes their frames with one
# write (all or nothing), for a session's held payloads (Session.hold);
# ``backlog() -> int``, the bytes in the socket's buffer while it is over its
# high-water mark (0 otherwise); ``async drained()``, which returns once the
# buffer is back under its mark; and ``abort()``, which drops the connection.
DirectWrite = Callable[[Payload], bool]
CLOSE_GRACE = 5.0  # seconds a close frame may take before the connection is dropped


class Transport(Protocol):
    """What a session needs from a WebSocket (Starlette's, or a test double).

    It may also have a ``direct`` attribute, a :data:`DirectWrite` or None:
    the synchronous fast path (:mod:`server.rooms.session`).
    """

    async def send(self, data: Payload) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """One session's queue bounds (PROTOCOL.md §10), and the server's budget it shares."""

    max_messages: int = 1024
    max_bytes: int = 64 * 1024 * 1024
    stall_timeout: float = 30.0
    # The server's bytes held for sending, shared by every session (None: no node cap).
    budget: SendBudget | None = field(default=None, compare=False)


class SendBudget:
    """Bytes held for sending by every session of one server, against ``limit``."""

    __slots__ = ("limit", "used", "peak", "closed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.closed = 0  # clients closed (overloaded, 1013) because they did not fit

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes stay within the limit."""
        return self.used + size <= self.limit

    @property
    def over(self) -> bool:
        """Already at or over the limit: nothing more fits."""
        return self.used >= self.limit

    def charge(self, delta: int) -> None:
        """Add ``delta`` bytes (negative: give them back)."""
        self.used += delta
        if self.used > self.peak:
            self.peak = self.used
