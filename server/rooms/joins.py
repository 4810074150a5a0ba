"""Joining a room: sessions, welcomes, resyncs and re-filtering (a part of :class:`.room.Room`).

:class:`Joins` is the :class:`~.room.Room`'s joining half, kept apart so that
each module stays small: a join registers a :class:`~.session.Session` with
its audience and role and queues its welcome (and any resume deltas), in one
synchronous step, so no tick runs between the welcome's state and the deltas
that follow it. A resync, a metadata-doc compaction and a grant change send
fresh welcomes through the same outbound choke point.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from protocol import CloseCode, Hello

from ..ops.state import State
from .outbound import DeltaOut, Message, WelcomeOut
from .policy import EVERYONE, Audience
from .session import Session, Transport

if TYPE_CHECKING:
    from .config import RoomConfig
    from .deltas import DeltaLog
    from .listeners import RoomListener
    from .metadoc import MetaDoc
    from .outbound import Outbound
    from .sharing import Sharing

__all__ = ["Joins"]


class Joins:
    """The joining methods of a room (mixed into :class:`~.room.Room`, which sets these)."""

    name: str
    config: RoomConfig
    read_only: bool
    sessions: dict[str, Session]
    outbound: Outbound
    log: DeltaLog
    meta: MetaDoc
    shared: Sharing
    views: RoomListener
    _published: tuple[State, int]

    # ------------------------------------------------------------ joining

    def join(
        self,
        hello: Hello,
        transport: Transport,
        *,
        binary: bool,
        audience: Audience = EVERYONE,
        role: str = "editor",
        user: str | None = None,
        display: str | None = None,
    ) -> Session:
        """Register a session and queue its welcome (and any resume deltas).

        A restricted ``audience`` (a row or column policy) always gets a
        snapshot: the resume log keeps deltas as everyone sees them.

        Synchronous, so the welcome's state and the deltas that follow it
        are consistent: no tick can run in between. The connection core
        (protocol.server_conn) has already checked the protocol version.
        """
        old = self.sessions.pop(hello.client, None)
        if old is not None:
            old.abort(CloseCode.REPLACED, "replaced by a newer connection of the same client")
        session = Session(
            hello.client,
            transport,
            binary=binary,
            limits=self.config.session,
            resync=self._resync,
            audience=audience,
            role=role,
            user=user,
            display=display,
        )
        session.awareness_id = random.getrandbits(31)
        session.codecs = hello.codecs
        state, seq = self._published
        resumable = hello.since is not None and audience == EVERYONE
        replay = self.log.since(hello.since, seq) if resumable else None
        session.base_seq = seq if replay is None else hello.since or 0
        self.sessions[hello.client] = session
        reason = "join" if replay is None else "resume"
        self.outbound.deliver(self._welcome(state, seq, reason, hello.id), [session])
        for d in replay or ():
            self.outbound.deliver(DeltaOut(d), [session])
        presence = self.shared.joined()
        if presence is not None:
            self.outbound.deliver(Message(presence, droppable=True), [session])
        session.start()
        return session

    def _welcome(self, state: State, seq: int, reason: str, re: Any, *, snapshot: bool = True) -> WelcomeOut:
        c = self.config
        return WelcomeOut(
            room=self.name,
            state=state,
            seq=seq,
            reason=reason,
            meta=self.meta.state(),  # captured now, with the state, on the loop thread
            narrow_meta=self.meta.narrowed,
            role="viewer" if self.read_only else "editor",
            limits={
                "max_message_bytes": c.max_message_bytes,
                "max_rows_per_op": c.max_rows_per_op,
                "max_rows_per_message": c.max_rows_per_message,
                "max_presence_bytes": c.max_presence_bytes,
                "max_meta_bytes": c.max_meta_bytes,
                "send_queue": c.session.max_messages,
            },
            re=re,
            snapshot=snapshot,
        )

    def _resync(self, session: Session) -> None:
        """Called by a session's writer once it caught up after an overflow."""
        state, seq = self._published
        session.resync_pending = False  # deltas after this point queue behind the welcome
        session.base_seq = seq
        self.outbound.deliver(self._welcome(state, seq, "resync", None), [session])
        self.views.resend(session)  # view updates were dropped too: fresh snapshots follow the welcome

    def refilter(self, session: Session, audience: Audience, role: str) -> None:
        """``session``'s grant changed: from now on it sees what the new one allows.

        A changed audience closes its views (they read the old audience's
        table) and sends a fresh snapshot (a ``welcome``, reason ``resync``).
        """
        session.role = role
        if audience == session.audience:
            return
        session.audience = audience
        self.views.close_session(session, "your access changed: subscribe again")
        self._resync(session)

    def _meta_resync(self) -> None:
        """The metadata doc was compacted: every client gets it in a welcome without a snapshot.

        The resume log goes too: its deltas' ``meta`` updates belong to the old doc.
        """
        self.log.clear()
        state, seq = self._published
        for s in list(self.sessions.values()):
            self.outbound.deliver(self._welcome(state, seq, "resync", None, snapshot=False), [s])
