"""Presence and the metadata doc, relayed between one room's sessions (PROTOCOL.md §9, §10).

Neither touches the frame, so neither goes through the room's queue: each
message is handled when it arrives, on the loop. Their sizes are bounded
before they get here (the connection core refuses a presence state or a
``meta`` frame over its limit), and :class:`~server.rooms.metadoc.MetaDoc`
keeps the doc itself bounded; when it compacts the doc, the room resyncs
every client (``resync``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol import Error, ErrorCode, Meta, Presence, PresenceUpdate, ProtocolError

from .metadoc import MetaDoc
from .session import Session

__all__ = ["Sharing"]


class Sharing:
    """A room's presence states and metadata doc, and how messages about them are answered."""

    def __init__(
        self,
        meta: MetaDoc,
        *,
        reply: Callable[[Session, Any], None],
        broadcast: Callable[..., None],
        resync: Callable[[], None],
    ) -> None:
        self.meta = meta
        self._reply, self._broadcast, self._resync = reply, broadcast, resync

    def joined(self) -> PresenceUpdate | None:
        """Everyone's presence, for a session that just joined (None when nobody has any)."""
        if not self.meta.presence:
            return None
        return PresenceUpdate(self.meta.presence_update(), self.meta.presence_states())

    def left(self, session: Session) -> None:
        """Clear a leaving session's presence for the others."""
        if session.awareness_id in self.meta.presence:
            self._set(session, None)

    def presence(self, session: Session, msg: Presence) -> None:
        state = msg.state
        if state is not None and session.user is not None:
            # Who it is comes from the token, never from the client: no one can pose as another.
            state = {**state, "user": session.user, "display": session.display or session.user}
        self._set(session, state)

    def _set(self, session: Session, state: dict[str, Any] | None) -> None:
        session.awareness_clock += 1
        update = self.meta.set_presence(session.awareness_id, session.awareness_clock, session.client, state)
        self._broadcast(PresenceUpdate(update, {session.client: state}))

    def sync(self, session: Session, msg: Meta) -> None:
        """A y-websocket sync frame: answer step 1, apply and relay updates, resync after a compaction."""
        try:
            out = self.meta.handle(msg.update)
        except ProtocolError as e:
            self._reply(session, Error(e.code, e.message, e.details, re=msg.id))
            return
        if out.reply is not None:
            self._reply(session, Meta(out.reply, re=msg.id))
        if out.refused is not None:
            self._reply(session, Error(ErrorCode.READ_ONLY, out.refused, re=msg.id))
        if out.compacted is not None:
            if out.compacted.dropped:
                limit = self.meta.max_bytes
                why = out.compacted.why(limit)
                self._reply(session, Error(ErrorCode.TOO_LARGE, why, {"limit": limit}, re=msg.id))
            self._resync()
        elif out.relay is not None:  # after a correction, the sender needs the update too
            self._broadcast(Meta(out.relay), skip=session if out.refused is None else None)
