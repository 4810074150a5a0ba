"""Live views on the client side (README.md "Using it", PROTOCOL.md).

``await room.subscribe_view(group_by=[...], ...)`` returns a
:class:`LiveView`: its :attr:`LiveView.frame` is the view's content as a
Polars DataFrame, replaced by every ``view`` message the server sends (a
grouped view's whole result, or a plain view's viewport).
``async for ev in view.updates()`` yields each change; ``await view.close()``
unsubscribes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from protocol import View

from .streams import EventStream

__all__ = ["LiveView", "ViewEvent", "ViewStream"]


@dataclass(frozen=True, slots=True)
class ViewEvent:
    """One change of a view: ``kind`` is ``snapshot`` or ``update``; ``frame`` its new content."""

    kind: str
    seq: int
    rows: int
    frame: pl.DataFrame


class LiveView:
    """A subscribed view, kept live by the server. Create it with ``room.subscribe_view``."""

    def __init__(
        self,
        name: str,
        config: dict[str, Any],
        viewport: tuple[int, int] | None,
        unsubscribe: Callable[[LiveView], Awaitable[None]],
    ) -> None:
        self.name = name
        self.config = config
        self.viewport = viewport
        self.frame = pl.DataFrame()
        self.seq = -1  # the room seq the frame reflects
        self.rows = 0  # the view's total row count (a plain view's frame holds only its viewport)
        self.closed = False
        self.reason: str | None = None  # why the server closed it, if it did
        self.updates_seen = 0
        self._unsubscribe = unsubscribe
        self._streams: list[ViewStream] = []
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"LiveView({self.name!r}, seq={self.seq}, rows={self.rows}, closed={self.closed})"

    def _apply(self, msg: View) -> None:
        if msg.kind == "closed":
            self._end(msg.reason)
            return
        if msg.config is not None:
            self.config = msg.config  # the server follows renames; resubscribe with its names
        if msg.data is not None:
            frame = pl.from_arrow(msg.data)
            assert isinstance(frame, pl.DataFrame)
            self.frame = frame
        self.seq, self.rows = msg.seq, msg.rows
        self.updates_seen += 1
        ev = ViewEvent(msg.kind, msg.seq, msg.rows, self.frame)
        for s in self._streams:
            s.put(ev)
        self._changed.set()
        self._changed = asyncio.Event()

    def _end(self, reason: str | None) -> None:
        if self.closed:
            return
        self.closed, self.reason = True, reason
        for s in list(self._streams):
            s.put(None)
        self._changed.set()

    def updates(self, maxsize: int = 1000) -> ViewStream:
        """Each change from this call on: ``async for ev in view.updates()``.

        The stream ends when the view closes. Past ``maxsize`` unread events
        the oldest are dropped (``stream.dropped`` counts them); the frame
        itself is always current.
        """
        stream = ViewStream(self._streams, maxsize)
        if self.closed:
            stream.put(None)
        return stream

    async def wait_for(self, predicate: Callable[[pl.DataFrame], bool]) -> pl.DataFrame:
        """Return the frame once ``predicate(frame)`` holds (checked now and after each change).

        Raises:
            RuntimeError: the view closed first.
        """
        while not predicate(self.frame):
            if self.closed:
                raise RuntimeError(f"view '{self.name}' closed: {self.reason}")
            await self._changed.wait()
        return self.frame

    async def close(self) -> None:
        """Unsubscribe (idempotent)."""
        if not self.closed:
            await self._unsubscribe(self)
            self._end("unsubscribed")


class ViewStream(EventStream[ViewEvent]):
    """An async iterator of :class:`ViewEvent`; ends when the view closes; ``close()`` stops it."""
