"""The one outbound choke point of a room (docs/architecture.md "Outbound").

Every payload a subscriber receives (welcome snapshot, delta, view, query
result, presence, meta, commit notice, ack and error) leaves through
:meth:`Outbound.deliver`. Its inputs are the *structured* payload and the
subscribers; each subscriber carries an :class:`Audience`, what it may see.

``deliver`` groups subscribers by audience and envelope (msgpack or JSON),
renders the payload once per audience and encodes it once per group, then
writes the same bytes to every subscriber of the group (PROTOCOL.md §10:
encode once, never wait for the slowest reader).

Today there is one audience, :data:`EVERYONE`, and rendering is the
identity. Identity with row and column policies will give audiences their
meaning here, in :func:`render`, without another rework: a delta carries the
changed rids and columns plus the room state after the tick, which is what a
row predicate needs to turn an edit that moves a row out of view into a
delete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from protocol import Delta, Welcome, encode, table_to_ipc
from protocol.arrow import frame_to_parquet
from protocol.dtypes import RID

from ..ops.state import State
from .deltas import EncodedDelta, frame_to_arrow

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
# for clients that read compressed Arrow IPC, cached per (state, audience, codec).
BIG_SNAPSHOT_ROWS = 50_000

Payload = bytes | str


@dataclass(frozen=True, slots=True)
class Audience:
    """What a subscriber may see: visible columns and a row predicate.

    ``columns=None`` means every column and ``rows=None`` every row. Equal
    audiences share one rendering and one encoding of each payload.
    """

    columns: frozenset[str] | None = None
    rows: str | None = None


EVERYONE = Audience()


class Subscriber(Protocol):
    """What :meth:`Outbound.deliver` needs from a session."""

    client: str
    audience: Audience
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
    re: Any = None
    snapshot: bool = True


Outgoing = Message | DeltaOut | WelcomeOut


def render(payload: Message | DeltaOut, audience: Audience) -> Any:
    """The message ``audience`` may see of ``payload`` (the identity for :data:`EVERYONE`).

    Raises:
        NotImplementedError: an audience narrower than EVERYONE (policies come with identity).
    """
    if audience != EVERYONE:  # pragma: no cover - no narrower audience exists yet
        raise NotImplementedError("row and column policies are not implemented yet")
    return payload.msg if isinstance(payload, Message) else payload.delta


class Outbound:
    """The outbound choke point of one room, with its per-state snapshot cache."""

    def __init__(self) -> None:
        self._snapshots: dict[tuple[Audience, str], tuple[State, bytes]] = {}
        self.encodes = 0  # encodings made (the encode-once tests read it)

    def deliver(self, payload: Outgoing, subscribers: Iterable[Subscriber]) -> None:
        """Queue ``payload`` for every subscriber, rendered per audience, encoded once per group.

        Never waits: each subscriber's bounded queue applies the slow-consumer
        policy (PROTOCOL.md section 10).
        """
        if isinstance(payload, WelcomeOut):
            for s in subscribers:
                s.push(self._welcome(payload, s))
            return
        droppable = payload.droppable if isinstance(payload, Message) else True
        subs = subscribers if isinstance(subscribers, list) else list(subscribers)
        if len(subs) == 1:  # a reply: one subscriber, one group (the tick sends one per batch)
            s = subs[0]
            s.push(self._encode(payload, s.audience, s.binary), droppable=droppable)
            return
        groups: dict[tuple[Audience, bool], list[Subscriber]] = {}
        for s in subs:
            groups.setdefault((s.audience, s.binary), []).append(s)
        for (audience, binary), subs in groups.items():
            data = self._encode(payload, audience, binary)
            for s in subs:
                s.push(data, droppable=droppable)

    def _encode(self, payload: Message | DeltaOut, audience: Audience, binary: bool) -> Payload:
        if isinstance(payload, DeltaOut) and audience == EVERYONE:
            return payload.encoded.payload(binary)
        self.encodes += 1
        return encode(render(payload, audience), binary=binary)

    # ------------------------------------------------------------ welcome

    def _welcome(self, w: WelcomeOut, s: Subscriber) -> Callable[[], Awaitable[Payload]] | Payload:
        """The welcome for ``s``: big snapshots are encoded in a worker thread, when sent."""
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
        if audience != EVERYONE:  # pragma: no cover - no narrower audience exists yet
            raise NotImplementedError("row and column policies are not implemented yet")
        return state.frame

    @staticmethod
    def _welcome_msg(w: WelcomeOut, s: Subscriber, snapshot: Any) -> Welcome:
        return Welcome(
            room=w.room,
            seq=w.seq,
            client=s.client,
            schema=tuple(w.state.catalog.to_wire()),
            snapshot=snapshot,
            meta=w.meta,
            role=w.role,
            resumed=w.reason == "resume" or not w.snapshot,
            reason=w.reason,
            limits=w.limits,
            re=w.re,
        )
