"""The one outbound choke point of a room (docs/architecture.md "Outbound").

Every payload a subscriber receives (welcome snapshot, delta, view, query
result, presence, meta, commit notice, ack and error) leaves through
:meth:`Outbound.deliver`. Its inputs are the *structured* payload and the
subscribers; each subscriber carries an :class:`Audience`, what it may see.

``deliver`` groups subscribers by audience and envelope (msgpack or JSON),
renders the payload once per audience and encodes it once per group, then
writes the same bytes to every subscriber of the group (PROTOCOL.md §10:
encode once, never wait for the slowest reader).

Audiences (:mod:`.policy`) come from a user's grant: hidden columns and a
row predicate. :func:`render` gives each audience its view of a payload
(:func:`.narrow.render_delta` for deltas, :mod:`.narrow` for the other
messages); a payload an audience may not see at all is not sent to it. A
delta carries the room state before and after its tick, which is what a row
predicate needs to turn an edit that moves a row out of view into a delete.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from protocol import Delta, Welcome, encode, table_to_ipc
from protocol.arrow import frame_to_parquet
from protocol.dtypes import RID

from ..ops.state import State
from .deltas import EncodedDelta, frame_to_arrow
from .narrow import NOT_SENT, Touched, Visibility, render_delta, render_message
from .policy import EVERYONE, Audience, narrow_schema, narrow_state

__all__ = [
    "Audience",
    "EVERYONE",
    "Subscriber",
    "Payload",
    "Message",
    "DeltaOut",
    "WelcomeOut",
    "Outbound",
    "render",
    "BIG_SNAPSHOT_ROWS",
]

# Snapshots of at least this many rows are encoded in a worker thread and,
# for clients that read compressed Arrow IPC or Parquet, cached per (state,
# audience, codec) until the state moves on or the room's last session leaves.
BIG_SNAPSHOT_ROWS = 50_000

Payload = bytes | str


class Subscriber(Protocol):
    """What :meth:`Outbound.deliver` needs from a session."""

    client: str
    audience: Audience
    role: str
    binary: bool
    codecs: tuple[str, ...]

    def push(self, data: Payload | Callable[[], Awaitable[Payload]], *, droppable: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class Message:
    """A protocol message that needs no per-audience data work today (ack, error, presence, ...).

    ``droppable`` marks broadcast traffic that a slow subscriber may lose
    (it is resynced instead); replies are never dropped.
    """

    msg: Any
    droppable: bool = False


@dataclass(frozen=True, slots=True)
class DeltaOut:
    """One tick's delta: the changed rids and columns, and the room state after the tick.

    ``encoded`` is the rendering for :data:`EVERYONE`, encoded at most once
    per envelope and shared with the resume log.
    """

    encoded: EncodedDelta
    after: State | None = None  # None for deltas replayed from the resume log
    before: State | None = None  # the room's state before the tick (for row predicates)
    inserted: bool | None = None  # whether the tick inserted rows (None: not known)

    @property
    def delta(self) -> Delta:
        return self.encoded.delta

    @property
    def rids(self) -> list[int]:
        """Rows upserted by the tick (inserted or changed), by rid."""
        upserts = self.delta.upserts
        return [] if upserts is None else upserts.column(RID).to_pylist()

    @property
    def columns(self) -> list[str]:
        """Columns whose values the tick changed (all of them for inserted rows)."""
        upserts = self.delta.upserts
        return [] if upserts is None else [n for n in upserts.column_names if n != RID]

    @property
    def deleted(self) -> tuple[int, ...]:
        return self.delta.deleted


@dataclass(frozen=True, slots=True)
class WelcomeOut:
    """A snapshot (or resume) welcome for one subscriber.

    Without ``snapshot`` it carries no table and says ``resumed``: the
    subscriber keeps its frame (a resync of the metadata doc alone).
    """

    room: str
    state: State
    seq: int
    reason: str  # join | resume | resync
    meta: bytes
    role: str
    limits: dict[str, Any]
    narrow_meta: Callable[[frozenset[int]], bytes] | None = None  # the doc without some columns
    re: Any = None
    snapshot: bool = True


Outgoing = Message | DeltaOut | WelcomeOut
_UNRENDERED = object()
_SEQS_ONLY = object()


def render(
    payload: Message | DeltaOut,
    audience: Audience,
    state: State | None = None,
    vis: Visibility | None = None,
    touched: Touched | None = None,
) -> Any:
    """The message ``audience`` may see of ``payload``, or :data:`~.narrow.NOT_SENT`.

    The identity for :data:`EVERYONE`. ``state`` is the room's current state
    (the outbound's last), which messages other than deltas are read against;
    ``vis`` the outbound's record of which rows each audience sees;
    ``touched`` what a delta touched (worked out once for all audiences).

    Raises:
        PolicyBroken: the audience's row predicate no longer compiles.
    """
    if audience == EVERYONE:
        return payload.msg if isinstance(payload, Message) else payload.delta
    if isinstance(payload, Message):
        return render_message(payload.msg, audience, state)
    if payload.after is None:  # the room never replays the resume log to a restricted audience
        raise ValueError("a delta without its state cannot be rendered for a restricted audience")
    return render_delta(payload.delta, payload.before, payload.after, audience, vis, touched)


class Outbound:
    """The outbound choke point of one room, with its per-state snapshot cache."""

    def __init__(self) -> None:
        self._snapshots: dict[tuple[Audience, str], tuple[State, bytes]] = {}
        self.state: State | None = None  # the last state a welcome or delta carried
        self.visibility = Visibility()  # which rows each audience with a row predicate sees
        self.encodes = 0  # encodings made (the encode-once tests read it)

    def deliver(self, payload: Outgoing, subscribers: Iterable[Subscriber]) -> None:
        """Queue ``payload`` for every subscriber, rendered per audience, encoded once per group.

        Never waits: each subscriber's bounded queue applies the slow-consumer
        policy (PROTOCOL.md section 10).
        """
        if isinstance(payload, WelcomeOut):
            self.state = payload.state
            for s in subscribers:
                s.push(self._welcome(payload, s))
            return
        if isinstance(payload, DeltaOut) and payload.after is not None:
            self.state = payload.after
            if self._snapshots:
                self.forget()  # the room's state moved on: no join can use a snapshot of the old one
        droppable = payload.droppable if isinstance(payload, Message) else True
        subs = subscribers if isinstance(subscribers, list) else list(subscribers)
        rendered: dict[Any, Any] = {}  # each audience's message, rendered once for every envelope
        if len(subs) == 1:  # a reply: one subscriber, one group (the tick sends one per batch)
            s = subs[0]
            groups: dict[tuple[Audience, bool], list[Subscriber]] = {(s.audience, s.binary): subs}
        else:
            groups = {}
            for s in subs:
                groups.setdefault((s.audience, s.binary), []).append(s)
        touched = None  # what a delta touched, worked out once for every audience with a row predicate
        if (
            isinstance(payload, DeltaOut)
            and payload.after is not None
            and any(a.rows is not None for a, _ in groups)
        ):
            touched = Touched(payload.delta, payload.before, payload.inserted)
        for (audience, binary), members in groups.items():
            data = self._encode(payload, audience, binary, rendered, touched)
            if data is None:
                continue
            for s in members:
                s.push(data, droppable=droppable)
        if isinstance(payload, DeltaOut) and payload.after is not None:
            self.visibility.keep(a for a, _ in groups)  # an audience nobody has any more goes

    def forget(self) -> None:
        """Drop the cached snapshots (the state moved on, or the room has no session left).

        A welcome queued for a session keeps its own bytes; the cache only
        lets joins at the same state share one encoding, and must not keep a
        snapshot alive after its joiners have gone.
        """
        self._snapshots.clear()

    def _encode(
        self,
        payload: Message | DeltaOut,
        audience: Audience,
        binary: bool,
        rendered: dict[Any, Any],
        touched: Touched | None = None,
    ) -> Payload | None:
        """``payload`` rendered for ``audience`` (once, kept in ``rendered``) and encoded, or None
        when it gets nothing.

        A delta an audience sees whole is the everyone encoding; one that
        shows an audience no row at all (only its seqs) is encoded once for
        every such audience.
        """
        if isinstance(payload, DeltaOut) and audience == EVERYONE:
            return payload.encoded.payload(binary)
        msg = rendered.get(audience, _UNRENDERED)
        if msg is _UNRENDERED:
            msg = rendered[audience] = render(payload, audience, self.state, self.visibility, touched)
        if msg is NOT_SENT:
            return None
        if isinstance(payload, DeltaOut):
            if msg is payload.delta:
                return payload.encoded.payload(binary)
            if msg.upserts is None and not msg.deleted and msg.schema is None and msg.meta is None:
                key = (_SEQS_ONLY, binary)  # the same bytes for every audience that sees no row
                data = rendered.get(key)
                if data is None:
                    self.encodes += 1
                    data = rendered[key] = encode(msg, binary=binary)
                return data  # type: ignore[no-any-return]
        self.encodes += 1
        return encode(msg, binary=binary)

    # ------------------------------------------------------------ welcome

    def _welcome(self, w: WelcomeOut, s: Subscriber) -> Callable[[], Awaitable[Payload]] | Payload:
        """The welcome for ``s``: big snapshots are encoded in a worker thread, when sent."""
        if s.audience != EVERYONE:  # the metadata it may see, read now, on the loop thread
            assert w.narrow_meta is not None, "a restricted audience needs the room's narrowed doc"
            w = dataclasses.replace(w, meta=w.narrow_meta(s.audience.hide))
        if w.reason == "resume" or not w.snapshot:
            return encode(self._welcome_msg(w, s, None), binary=s.binary)
        if w.state.frame.height < BIG_SNAPSHOT_ROWS:
            return self._welcome_bytes(w, s)
        return lambda: asyncio.to_thread(self._welcome_bytes, w, s)

    def _welcome_bytes(self, w: WelcomeOut, s: Subscriber) -> Payload:
        state, audience = w.state, s.audience
        codec = s.codecs[0] if s.binary and s.codecs else None
        snapshot: Any = None
        if codec is not None and state.frame.height >= BIG_SNAPSHOT_ROWS:
            # One Parquet file, or compressed Arrow IPC (a quarter of the bytes
            # either way), encoded once per (state, audience, codec): joins at
            # the same seq share it.
            cached = self._snapshots.get((audience, codec))
            if cached is not None and cached[0] is state:
                snapshot = cached[1]
            elif codec == "parquet":
                snapshot = frame_to_parquet(self._frame(state, audience))
                self._snapshots[(audience, codec)] = (state, snapshot)
            else:
                snapshot = table_to_ipc(frame_to_arrow(self._frame(state, audience)), compression=codec)
                self._snapshots[(audience, codec)] = (state, snapshot)
        if snapshot is None:
            snapshot = frame_to_arrow(self._frame(state, audience))
        self.encodes += 1
        return encode(self._welcome_msg(w, s, snapshot), binary=s.binary)

    @staticmethod
    def _frame(state: State, audience: Audience) -> Any:
        return narrow_state(state, audience).frame

    @staticmethod
    def _welcome_msg(w: WelcomeOut, s: Subscriber, snapshot: Any) -> Welcome:
        return Welcome(
            room=w.room,
            seq=w.seq,
            client=s.client,
            schema=narrow_schema(w.state.catalog.to_wire(), s.audience),
            snapshot=snapshot,
            meta=w.meta,
            role=w.role if w.role == "viewer" else s.role,
            resumed=w.reason == "resume" or not w.snapshot,
            reason=w.reason,
            limits=w.limits,
            re=w.re,
        )
