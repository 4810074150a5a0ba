"""What a room needs from its live views, as a small protocol.

Rooms never import Perspective (an import-linter contract checks it). The
app hands the registry a :data:`ViewsFactory`; each room makes its views with
it and feeds them one delta per tick. Views answer ``subscribe`` and
``unsubscribe`` and send their ``view`` messages through the room's outbound
choke point (the ``send`` callback). Without a factory, rooms answer view
requests with an error that says views are off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from protocol import Delta, Error, ErrorCode, Subscribe, Unsubscribe

from ..ops.state import State

__all__ = ["RoomListener", "ViewsFactory", "Send", "NoViews"]

# send(session, message, droppable): the room's outbound choke point.
Send = Callable[[Any, Any, bool], None]


class RoomListener(Protocol):
    """The live views of one room (server.perspective.live.RoomViews implements it)."""

    @property
    def watchers(self) -> int:
        """Dashboards attached: the room stays loaded while any is."""
        ...

    def on_delta(self, delta: Delta) -> None:
        """Follow one tick's delta (called after its acks and deltas were queued)."""

    async def subscribe(self, session: Any, msg: Subscribe) -> None: ...

    async def unsubscribe(self, session: Any, msg: Unsubscribe) -> None: ...

    def resend(self, session: Any) -> None:
        """Queue fresh snapshots of ``session``'s views (after a resync dropped updates)."""

    def drop_session(self, session: Any) -> None:
        """Forget every view of a session that left."""

    async def close(self) -> None: ...


# (room name, published (state, seq) getter, idle callback, send) -> listener
ViewsFactory = Callable[[str, Callable[[], tuple[State, int]], Callable[[], None], Send], RoomListener]


class NoViews:
    """The listener of a room served without live views."""

    def __init__(self, name: str, send: Send) -> None:
        self.name = name
        self._send = send

    @property
    def watchers(self) -> int:
        return 0

    def on_delta(self, delta: Delta) -> None:
        return None

    async def subscribe(self, session: Any, msg: Subscribe) -> None:
        self._refuse(session, msg.id)

    async def unsubscribe(self, session: Any, msg: Unsubscribe) -> None:
        self._refuse(session, msg.id)

    def _refuse(self, session: Any, re: Any) -> None:
        err = Error(ErrorCode.BAD_VIEW, f"room {self.name} serves no live views on this server", re=re)
        self._send(session, err, False)

    def resend(self, session: Any) -> None:
        return None

    def drop_session(self, session: Any) -> None:
        return None

    async def close(self) -> None:
        return None
