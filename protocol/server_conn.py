"""The server side of one connection, sans-I/O (PROTOCOL.md sections 2 and 10).

:class:`ServerConnection` owns one connection's lifecycle, consulting
``protocol.lifecycle.CONNECTION`` for every frame and local decision. It
gates on ``hello``, checks the per-request limits and the per-connection op
rate, answers ``ping``, turns decode errors into ``error`` replies naming the
field, and decides when and how the connection closes. It does no I/O and
reads no clock: the driver feeds frames with the time
(:meth:`ServerConnection.receive_frame`), then takes events
(:meth:`ServerConnection.events_received`) and acts on them. Modelled on
websockets' ``protocol.py`` (``receive_data`` / ``events_received`` / ``fail``).

A request over a limit that can be seen up front is refused before the
expensive work: the frame's size (its bytes, UTF-8 for a text frame), then,
on the decoded map, the rows of its ops and the bytes its tables declare
once decompressed (:mod:`protocol.costs`); nothing is decompressed for a
request over a limit. A frame whose tables are big is built off the event
loop: the core emits :class:`DecodeNeeded`, the driver runs it in a worker
thread and hands the result back (:meth:`ServerConnection.decoded`).

A driver's loop::

    conn = ServerConnection(limits, now=clock())
    while True:
        frame = receive(timeout=conn.hello_deadline - clock() if conn.hello_deadline else None)
        conn.receive_frame(frame, clock())   # or conn.tick(clock()) after a timeout
        for ev in conn.events_received():
            ...  # HelloReceived: open the room, join, then conn.joined() or conn.fail(...)
            ...  # DecodeNeeded: conn.decoded(ev, await to_thread(ev.run), clock())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._fields import valid_request_id
from .codec import client_from_map, decode_map
from .costs import check_request, check_tables, presence_json, utf8_len
from .errors import CloseCode, ErrorCode, ProtocolError
from .lifecycle import CONNECTION, CONNECTION_VIOLATIONS, IllegalTransition, next_state
from .messages import PROTOCOL_VERSION, ClientMessage, Error, Hello, Meta, OpBatch, Ping, Pong, Presence

__all__ = [
    "ConnectionLimits",
    "TokenBucket",
    "ServerConnection",
    "ServerEvent",
    "HelloReceived",
    "MessageReceived",
    "ReplyNeeded",
    "CloseNeeded",
    "DecodeNeeded",
    "Decoded",
    "frame_bytes",
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

    max_message_bytes: int = 8 * 1024 * 1024  # a frame's bytes (UTF-8 for text frames)
    ops_per_second: float = 5_000.0
    ops_burst: int = 10_000
    hello_timeout: float = 10.0
    max_rows_per_op: int = 1_000_000
    max_rows_per_message: int = 1_000_000  # rows over all ops of one message
    max_decompressed_bytes: int = 64 * 1024 * 1024  # a message's tables, decompressed and written out
    max_presence_bytes: int = 64 * 1024  # one presence state, as the JSON its awareness update carries
    max_meta_bytes: int = 64 * 1024  # one meta (Yjs sync) frame


def frame_bytes(data: bytes | str) -> int:
    """A frame's size on the wire: its bytes, or a text frame's UTF-8 length."""
    return utf8_len(data) if isinstance(data, str) else len(data)


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


#: What building a message gives: the message, or the error to reply with.
Decoded = ClientMessage | ProtocolError


def _build(d: dict[str, Any], max_bytes: int) -> Decoded:
    """The message of the frame map ``d`` (tables checked against ``max_bytes``), or its error."""
    try:
        msg = client_from_map(d)
        if isinstance(msg, OpBatch):
            check_tables(msg.ops, max_bytes)
        return msg
    except ProtocolError as e:
        e.request_id = valid_request_id(d.get("id"))
        return e
    except Exception as e:  # a bug in a check must surface as a coded error, not end the connection
        err = ProtocolError(ErrorCode.BAD_FIELD, f"invalid message ({type(e).__name__}: {e})")
        err.request_id = valid_request_id(d.get("id"))
        return err


@dataclass(frozen=True, slots=True)
class DecodeNeeded:
    """A frame with big tables: call :meth:`run` off the event loop, then :meth:`ServerConnection.decoded`.

    ``run`` decompresses and validates the tables and builds the message;
    it never raises (a bad field comes back as the ``ProtocolError``).
    """

    frame: dict[str, Any]
    binary: bool
    max_bytes: int

    def run(self) -> Decoded:
        return _build(self.frame, self.max_bytes)


ServerEvent = HelloReceived | MessageReceived | ReplyNeeded | CloseNeeded | DecodeNeeded


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
        self._decoding: DecodeNeeded | None = None  # a frame being built off the loop

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
                ``hello`` waits for ``joined()`` or ``fail()``, or while a
                :class:`DecodeNeeded` waits for ``decoded()``.
        """
        if self.state == "closed":
            return
        if self.state == "joining" or self._decoding is not None:
            raise IllegalTransition("connection", self.state, "frame", None)
        binary = isinstance(data, bytes)
        limit = self.limits.max_message_bytes
        size = len(data)  # a text frame's characters decide it unless they take 1 to 4 bytes each
        if limit // 4 < size <= limit:
            size = frame_bytes(data)
        if size > limit:
            msg = (
                f"message of {size} bytes is over the {limit}-byte limit; split the op into several messages"
            )
            self._reply(Error(ErrorCode.TOO_LARGE, msg, {"limit": limit, "size": size}), binary)
            return
        lim = self.limits
        try:
            d = decode_map(data)
        except ProtocolError as e:
            self._reply(Error(e.code, e.message, e.details), binary)
            return
        try:  # rows and decompressed bytes, before anything is decompressed or built
            cost = check_request(
                d,
                max_rows_per_op=lim.max_rows_per_op,
                max_rows_per_message=lim.max_rows_per_message,
                max_bytes=lim.max_decompressed_bytes,
                size=size,
            )
        except ProtocolError as e:
            self._reply(Error(e.code, e.message, e.details, valid_request_id(d.get("id"))), binary)
            return
        if cost.heavy:
            self._decoding = DecodeNeeded(d, binary, lim.max_decompressed_bytes)
            self._events.append(self._decoding)
            return
        self._received(_build(d, lim.max_decompressed_bytes), binary, now)

    def decoded(self, job: DecodeNeeded, result: Decoded, now: float) -> None:
        """Take the result of ``job.run()`` (a :class:`DecodeNeeded` this connection emitted).

        Raises:
            IllegalTransition: ``job`` is not the decode this connection waits for.
        """
        if job is not self._decoding:
            raise IllegalTransition("connection", self.state, "decoded", None)
        self._decoding = None
        if self.state != "closed":
            self._received(result, job.binary, now)

    def _received(self, result: Decoded, binary: bool, now: float) -> None:
        if isinstance(result, ProtocolError):
            self._reply(Error(result.code, result.message, result.details, result.request_id), binary)
        elif isinstance(result, Hello):
            self._hello(result, binary)
        else:
            self._message(result, binary, now)

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
        elif (refusal := self._over_limit(msg)) is not None:
            self._reply(refusal, self.binary)
        else:
            self._events.append(MessageReceived(msg))

    def _over_limit(self, msg: Any) -> Error | None:
        """A ``too_large`` for a presence state or a meta frame over its limit, else None."""
        if isinstance(msg, Presence) and msg.state is not None:
            limit, what, fix = self.limits.max_presence_bytes, "presence state", "keep presence small"
            size = utf8_len(presence_json(msg.state))  # what the awareness update carries
        elif isinstance(msg, Meta):
            limit, what, fix = self.limits.max_meta_bytes, "meta update", "send smaller Yjs updates"
            size = len(msg.update)
        else:
            return None
        if size <= limit:
            return None
        why = f"{what} of {size} bytes is over the {limit}-byte limit; {fix}"
        return Error(ErrorCode.TOO_LARGE, why, {"limit": limit, "size": size}, re=msg.id)

    def _reply(self, msg: Error | Pong, binary: bool) -> None:
        self._events.append(ReplyNeeded(msg, binary))

    def _close(self, code: int, reason: str) -> None:
        self.state = self._next("close")
        self.close_code, self.close_reason = code, reason[:MAX_REASON]
        self._events.append(CloseNeeded(code, self.close_reason))
