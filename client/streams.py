"""Bounded async streams of events, registered in their producer's list of subscribers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import polars as pl

__all__ = ["EventStream", "DeltaEvent", "DeltaStream"]

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


@dataclass(frozen=True, slots=True)
class DeltaEvent:
    """One applied delta, as seen by ``room.deltas()``."""

    seq: int
    seq_from: int
    upserts: pl.DataFrame
    deleted: list[int]
    by: tuple[str, ...]
    schema_changed: bool
    resync: bool = False


class DeltaStream(EventStream[DeltaEvent]):
    """An async iterator of :class:`DeltaEvent`; ``close()`` unsubscribes."""
