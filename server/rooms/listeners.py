"""What a room needs from its live views, as a small protocol.

Rooms never import Perspective (an import-linter contract checks it). The
app hands the registry a :class:`ViewsFactory`; each room makes its views with
it and feeds them one delta per tick, and the registry closes the factory
(and what its rooms' views share, such as a thread pool) when it closes. Views answer ``subscribe`` and
``unsubscribe`` and send their ``view`` messages through the room's outbound
choke point (the ``send`` callback). Without a factory, rooms answer view
requests with an error that says views are off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from protocol import Delta, Error, ErrorCode, Subscribe, Unsubscribe

from ..ops.state import State

__all__ = ["RoomListener", "MakeViews", "ViewsFactory", "Send", "NoViews"]

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

    async def subscribe(self, session: Any, msg: Subscribe) -> None:
        """Open a view and send its snapshot, or send one ``error``: exactly one reply."""

    async def unsubscribe(self, session: Any, msg: Unsubscribe) -> None:
        """Close a view and send its ``closed``, or send ``no_such_view``: exactly one reply."""

    def open_views(self, session: Any) -> int:
        """Views ``session`` has open (or being opened)."""

    def resend(self, session: Any) -> None:
        """Queue fresh snapshots of ``session``'s views (after a resync dropped updates)."""

    def drop_session(self, session: Any) -> None:
        """Forget every view of a session that left."""

    def close_session(self, session: Any, reason: str) -> None:
        """Close every view of ``session``, each with a ``closed`` naming ``reason``."""

    async def close(self) -> None: ...


# (room name, published (state, seq) getter, idle callback, send) -> listener
MakeViews = Callable[[str, Callable[[], tuple[State, int]], Callable[[], None], Send], RoomListener]


class ViewsFactory(Protocol):
    """Makes each room's views (a :data:`MakeViews`), and owns what they share."""

    def __call__(
        self, name: str, current: Callable[[], tuple[State, int]], on_idle: Callable[[], None], send: Send
    ) -> RoomListener: ...

    async def close(self) -> None:
        """Release what the views share (e.g. their threads); called once every room is closed."""


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

    def open_views(self, session: Any) -> int:
        return 0

    def resend(self, session: Any) -> None:
        return None

    def drop_session(self, session: Any) -> None:
        return None

    def close_session(self, session: Any, reason: str) -> None:
        return None

    async def close(self) -> None:
        return None
