"""A bounded async stream of events, registered in its producer's list of subscribers."""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

__all__ = ["EventStream"]

E = TypeVar("E")


class EventStream(Generic[E]):
    """``async for ev in stream``; ends after ``put(None)``; ``close()`` unsubscribes.

    Past ``maxsize`` unread events the oldest are dropped and
    :attr:`dropped` counts them, so a slow reader never grows memory.
    """

    def __init__(self, subscribers: list[Any], maxsize: int) -> None:
        self._subscribers = subscribers
        self._queue: asyncio.Queue[E | None] = asyncio.Queue()
        self._maxsize = maxsize
        self.dropped = 0
        subscribers.append(self)

    def put(self, ev: E | None) -> None:
        if ev is not None and self._queue.qsize() >= self._maxsize:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(ev)

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        ev = await self._queue.get()
        if ev is None:
            self.close()
            raise StopAsyncIteration
        return ev

    def close(self) -> None:
        if self in self._subscribers:
            self._subscribers.remove(self)
