"""The server side of one connection, sans-I/O (PROTOCOL.md sections 2 and 10).

:class:`ServerConnection` owns one connection's lifecycle, consulting
``protocol.lifecycle.CONNECTION`` for every frame and local decision. It
gates on ``hello``, checks the size limit and the per-connection op rate,
answers ``ping``, turns decode errors into ``error`` replies naming the field,
and decides when and how the connection closes. It does no I/O and reads no
clock: the driver feeds frames with the time (:meth:`ServerConnection.receive_frame`),
then takes events (:meth:`ServerConnection.events_received`) and acts on them.
Modelled on websockets' ``protocol.py`` (``receive_data`` / ``events_received``
/ ``fail``).

A driver's loop::

    conn = ServerConnection(limits, now=clock())
    while True:
        frame = receive(timeout=conn.hello_deadline - clock() if conn.hello_deadline else None)
        conn.receive_frame(frame, clock())   # or conn.tick(clock()) after a timeout
        for ev in conn.events_received():
            ...  # HelloReceived: open the room, join, then conn.joined() or conn.fail(...)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .codec import decode_client
from .errors import CloseCode, ErrorCode, ProtocolError
from .lifecycle import CONNECTION, CONNECTION_VIOLATIONS, IllegalTransition, next_state
from .messages import PROTOCOL_VERSION, Error, Hello, Ping, Pong

__all__ = [
    "ConnectionLimits",
    "TokenBucket",
    "ServerConnection",
    "ServerEvent",
    "HelloReceived",
    "MessageReceived",
    "ReplyNeeded",
    "CloseNeeded",
]

# Message types the per-connection rate limit counts (PROTOCOL.md "Limits").
RATE_LIMITED_TYPES = frozenset({"op", "undo", "redo"})

# What a peer is told when it breaks the lifecycle, by violation code.
_WHY = {
    ErrorCode.NOT_JOINED: "send 'hello' first",
    ErrorCode.ALREADY_JOINED: "only one 'hello' per connection",
}

MAX_REASON = 120  # a close reason must fit a control frame (123 bytes)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-connection limits (PROTOCOL.md "Limits"); the server fills them from its settings."""

    max_message_bytes: int = 8 * 1024 * 1024
    ops_per_second: float = 5_000.0
    ops_burst: int = 10_000
    hello_timeout: float = 10.0


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second of the caller's clock."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), now

    def take(self, now: float) -> bool:
        """Spend one token at time ``now``; False (and nothing spent) when none is left."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """A valid ``hello``: open the room, join, then call ``joined()`` or ``fail()``."""

    hello: Hello
    binary: bool  # the envelope of the hello frame: the connection answers in it


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A decoded client message for the room (anything but ``hello`` and ``ping``)."""

    msg: Any


@dataclass(frozen=True, slots=True)
class ReplyNeeded:
    """A reply the connection makes itself (an ``error`` or a ``pong``).

    Before the join the driver encodes it in ``binary`` and sends it on the
    transport; after the join it goes out through the room.
    """

    msg: Error | Pong
    binary: bool


@dataclass(frozen=True, slots=True)
class CloseNeeded:
    """Close the connection with ``code`` and ``reason``, after the replies before it."""

    code: int
    reason: str


ServerEvent = HelloReceived | MessageReceived | ReplyNeeded | CloseNeeded


class ServerConnection:
    """One connection's protocol state: frames and time in, events out."""

    def __init__(self, limits: ConnectionLimits, now: float) -> None:
        self.limits = limits
        self.state = "connected"
        self.binary = True  # the hello's envelope, once there is one
        self.close_code: int | None = None
        self.close_reason = ""
        self._deadline = now + limits.hello_timeout
        self._bucket = TokenBucket(limits.ops_per_second, limits.ops_burst, now)
        self._events: list[ServerEvent] = []

    # ------------------------------------------------------------ input

    @property
    def hello_deadline(self) -> float | None:
        """When the connection closes unless a ``hello`` came (None once one did)."""
        return self._deadline if self.state == "connected" else None

    def receive_frame(self, data: bytes | str, now: float) -> None:
        """Take one frame from the peer, received at ``now``.

        The peer's mistakes become events (an error reply, maybe a close);
        frames after a close decision are discarded.

        Raises:
            IllegalTransition: only when the driver feeds a frame while a
                ``hello`` waits for ``joined()`` or ``fail()``.
        """
        if self.state == "closed":
            return
        if self.state == "joining":
            raise IllegalTransition("connection", self.state, "frame", None)
        binary = isinstance(data, bytes)
        limit = self.limits.max_message_bytes
        if len(data) > limit:
            msg = (
                f"message of {len(data)} bytes is over the {limit}-byte limit;"
                " split the op into several messages"
            )
            self._reply(Error(ErrorCode.TOO_LARGE, msg, {"limit": limit, "size": len(data)}), binary)
            return
        try:
            decoded = decode_client(data)
        except ProtocolError as e:
            self._reply(Error(e.code, e.message, e.details, e.request_id), binary)
            return
        if isinstance(decoded, Hello):
            self._hello(decoded, binary)
        else:
            self._message(decoded, binary, now)

    def tick(self, now: float) -> None:
        """Let time pass: past :attr:`hello_deadline` the connection closes 1008."""
        if self.state == "connected" and now >= self._deadline:
            self._close(CloseCode.POLICY, f"no hello within {self.limits.hello_timeout:g}s")

    # ------------------------------------------------------------ the driver's decisions

    def joined(self) -> None:
        """The room accepted the hello: messages flow from now on.

        Raises:
            IllegalTransition: no hello is waiting.
        """
        self.state = self._next("joined")

    def fail(self, code: int, reason: str, reply: Error | None = None) -> None:
        """Close with ``code`` and ``reason``, after ``reply`` if given (idempotent).

        The driver calls it when the room refuses a hello (an unknown branch:
        4004) or on its own shutdown.
        """
        if self.state == "closed":
            return
        if reply is not None:
            self._reply(reply, self.binary)
        self._close(code, reason)

    def events_received(self) -> list[ServerEvent]:
        """The events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------ internals

    def _next(self, event: str) -> str:
        return next_state(
            CONNECTION, self.state, event, machine="connection", violations=CONNECTION_VIOLATIONS
        )

    def _transition(self, event: str, msg: Any, binary: bool) -> bool:
        """Move on ``event``; on a peer violation reply, close, and return False."""
        try:
            self.state = self._next(event)
        except IllegalTransition as t:
            if t.code is None:
                raise
            what = _WHY.get(t.code, t.code)
            self._reply(Error(t.code, f"'{msg.type}' not allowed now: {what}", re=msg.id), binary)
            self._close(CloseCode.POLICY, what)
            return False
        return True

    def _hello(self, hello: Hello, binary: bool) -> None:
        if not self._transition("hello", hello, binary):
            return
        self.binary = binary
        if hello.version != PROTOCOL_VERSION:
            why = f"protocol version {hello.version} is not supported; this server speaks {PROTOCOL_VERSION}"
            self.fail(CloseCode.POLICY, why, Error(ErrorCode.BAD_VERSION, why, re=hello.id))
            return
        self._events.append(HelloReceived(hello, binary))

    def _message(self, msg: Any, binary: bool, now: float) -> None:
        if not self._transition("message", msg, binary):
            return
        if isinstance(msg, Ping):
            self._reply(Pong(msg.id), self.binary)
        elif msg.type in RATE_LIMITED_TYPES and not self._bucket.take(now):
            rate = self.limits.ops_per_second
            why = f"over {rate:g} op messages per second; batch ops into fewer messages"
            self._reply(Error(ErrorCode.RATE_LIMITED, why, re=msg.id), self.binary)
        else:
            self._events.append(MessageReceived(msg))

    def _reply(self, msg: Error | Pong, binary: bool) -> None:
        self._events.append(ReplyNeeded(msg, binary))

    def _close(self, code: int, reason: str) -> None:
        self.state = self._next("close")
        self.close_code, self.close_reason = code, reason[:MAX_REASON]
        self._events.append(CloseNeeded(code, self.close_reason))
