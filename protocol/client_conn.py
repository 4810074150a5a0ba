"""The client side of a room connection, sans-I/O (PROTOCOL.md sections 7 and 8).

:class:`ClientConnection` keeps what a client must remember across sockets:
the requests waiting for a reply (request id → kind), the op/undo/redo
batches not yet acked (by ``client_seq``, with their encoded frames), the seq
its consumer has applied and the highest seq acked. It turns server messages
into events and decides what to send: the ``hello`` (with ``since=``) on each
new socket, and on each ``welcome`` the unacked batches again, in
``client_seq`` order and before anything new, so each applies exactly once.

It does no I/O: a driver calls :meth:`ClientConnection.connect` when a socket
opens, feeds it messages, takes :meth:`ClientConnection.events_received` and
writes :meth:`ClientConnection.data_to_send` to the socket, in order. The
client's state machine is ``protocol.lifecycle.CLIENT``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from .codec import decode_server, encode
from .lifecycle import CLIENT, next_state
from .messages import (
    PROTOCOL_VERSION,
    Ack,
    Committed,
    Delta,
    Error,
    Hello,
    OpBatch,
    Pong,
    Result,
    Undo,
    Welcome,
)
from .views import View

__all__ = [
    "ClientConnection",
    "ClientEvent",
    "Joined",
    "Answered",
    "Rejected",
    "Dropped",
    "Received",
]

RequestId = int | str


@dataclass(frozen=True, slots=True)
class Joined:
    """A ``welcome``. ``load``: replace the mirror with it; ``resync``: one was loaded before."""

    welcome: Welcome
    load: bool
    resync: bool


@dataclass(frozen=True, slots=True)
class Answered:
    """The reply to a request or batch: an ack, committed, result, pong or view."""

    request_id: RequestId
    kind: str
    reply: Any


@dataclass(frozen=True, slots=True)
class Rejected:
    """An ``error`` answering a request or batch (which is then forgotten)."""

    request_id: RequestId
    kind: str
    error: Error


@dataclass(frozen=True, slots=True)
class Dropped:
    """The socket closed before a request's reply (batches are not dropped: they are resent)."""

    request_id: RequestId
    kind: str


@dataclass(frozen=True, slots=True)
class Received:
    """A message for the client to apply or show.

    A fresh delta (one already covered by :attr:`ClientConnection.seq` is
    dropped), a presence update, meta, committed, view, or an error that no
    waiting request or batch claims.
    """

    msg: Any


ClientEvent = Joined | Answered | Rejected | Dropped | Received


class ClientConnection:
    """One client's protocol state across reconnects: messages in, events and frames out.

    ``first_id`` starts the counter shared by ``client_seq`` and request ids;
    exactly-once is per client id, so it must grow across process restarts
    too (the Python client starts it from the clock).
    """

    def __init__(
        self, client_id: str, *, first_id: int = 1, codecs: tuple[str, ...] = (), binary: bool = True
    ) -> None:
        self.client_id = client_id
        self.codecs = codecs
        self.binary = binary
        self.state = "disconnected"
        self.seq = -1  # the last seq the consumer applied (welcome or delta)
        self.acked_seq = 0  # the highest seq an ack named
        self.pending: dict[RequestId, str] = {}  # request id → kind, waiting for a reply
        self.unacked: dict[int, tuple[str, bytes | str]] = {}  # client_seq → (kind, frame)
        self._ids = itertools.count(first_id)
        self._events: list[ClientEvent] = []
        self._outbox: list[bytes | str] = []

    @property
    def live(self) -> bool:
        """A welcome arrived on the current socket: requests may be sent."""
        return self.state == "live"

    @property
    def base_seq(self) -> int:
        """The ``base_seq`` of a batch sent now."""
        return max(self.seq, 0)

    def next_id(self) -> int:
        """A fresh ``client_seq`` or request id."""
        return next(self._ids)

    # ------------------------------------------------------------ the socket

    def connect(self) -> None:
        """A socket opened: say hello, resuming from :attr:`seq` when there is one.

        Raises:
            IllegalTransition: a socket is already open, or the room is closed.
        """
        self.state = self._next("connect")
        since = self.seq if self.seq >= 0 else None
        self._outbox = [self._encode(Hello(self.client_id, PROTOCOL_VERSION, since, codecs=self.codecs))]

    def connection_lost(self) -> None:
        """The socket closed: unsent frames go, waiting requests are dropped, batches stay."""
        self.state = self._next("lost")
        self._outbox.clear()
        self._events += [Dropped(rid, kind) for rid, kind in self.pending.items()]
        self.pending.clear()

    def close(self) -> None:
        """The room closes for good: forget everything (the driver fails its waiters)."""
        self.state = self._next("close")
        self._outbox.clear()
        self.pending.clear()
        self.unacked.clear()

    # ------------------------------------------------------------ input

    def receive_frame(self, data: bytes | str) -> None:
        """Decode one server frame and take it.

        Raises:
            ProtocolError: the frame does not decode.
            IllegalTransition: no socket is open.
        """
        self.receive_message(decode_server(data))

    def receive_message(self, msg: Any) -> None:
        """Take one decoded server message.

        Raises:
            IllegalTransition: no socket is open.
        """
        state = self._next("welcome" if isinstance(msg, Welcome) else "message")
        if self.state == "closed":
            return  # a late message from the socket being torn down
        self.state = state
        if isinstance(msg, Welcome):
            self._welcome(msg)
        elif isinstance(msg, Delta):
            if msg.seq_to > self.seq:
                self.seq = msg.seq_to
                self._events.append(Received(msg))
        elif isinstance(msg, Ack):
            self.acked_seq = max(self.acked_seq, msg.seq)
            batch = self.unacked.pop(msg.client_seq, None)
            if batch is not None:
                self._events.append(Answered(msg.client_seq, batch[0], msg))
        elif isinstance(msg, (Result, Pong)):
            self._answer(msg)
        elif isinstance(msg, (Committed, View)):
            self._events.append(Received(msg))
            self._answer(msg)
        elif isinstance(msg, Error):
            self._error(msg)
        else:  # presence, meta
            self._events.append(Received(msg))

    def events_received(self) -> list[ClientEvent]:
        """The events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------ output

    def send_batch(self, msg: OpBatch | Undo) -> None:
        """Send an op, undo or redo batch now if live, else with the next welcome's resend.

        It stays unacked (and is resent after each welcome, with the same
        ``client_seq``) until its ack or error arrives.
        """
        frame = self._encode(msg)
        self.unacked[msg.client_seq] = (msg.type, frame)
        if self.live:
            self._outbox.append(frame)

    def send_request(self, kind: str, msg: Any) -> bool:
        """Send a request whose reply carries ``re == msg.id``; False when not live (nothing sent)."""
        if not self.live:
            return False
        self.pending[msg.id] = kind
        self._outbox.append(self._encode(msg))
        return True

    def send(self, msg: Any) -> bool:
        """Send a message that expects no reply (presence); False when no socket is open."""
        if self.state not in ("connecting", "live"):
            return False
        self._outbox.append(self._encode(msg))
        return True

    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` would return frames."""
        return bool(self._outbox)

    def data_to_send(self) -> list[bytes | str]:
        """The frames to write, in order, since the last call."""
        out, self._outbox = self._outbox, []
        return out

    # ------------------------------------------------------------ internals

    def _next(self, event: str) -> str:
        return next_state(CLIENT, self.state, event, machine=f"client {self.client_id}")

    def _encode(self, msg: Any) -> bytes | str:
        return encode(msg, binary=self.binary)

    def _welcome(self, w: Welcome) -> None:
        load = w.snapshot is not None or not w.resumed
        resync = load and self.seq >= 0
        if load:
            self.seq = w.seq
        self._events.append(Joined(w, load, resync))
        # Exactly once (PROTOCOL.md section 8): unacked batches again, same client_seq, in order.
        self._outbox += [self.unacked[cs][1] for cs in sorted(self.unacked)]

    def _answer(self, msg: Any) -> None:
        kind = self.pending.pop(msg.re, None) if msg.re is not None else None
        if kind is not None:
            self._events.append(Answered(msg.re, kind, msg))

    def _error(self, err: Error) -> None:
        if err.re is not None and err.re in self.pending:
            self._events.append(Rejected(err.re, self.pending.pop(err.re), err))
        elif isinstance(err.re, int) and err.re in self.unacked:
            self._events.append(Rejected(err.re, self.unacked.pop(err.re)[0], err))
        else:
            self._events.append(Received(err))
