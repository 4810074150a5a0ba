"""The app's live views: every room's :class:`~.live.RoomViews`, on one Perspective executor.

Perspective work (building a table, opening, updating and reading views,
the dashboards' requests) runs in worker threads so the event loop stays
free. Those threads are a pool of their own, :attr:`LiveViews.executor`,
never asyncio's default executor: storage (chunk reads, diffs, uploads,
exports) and heavy ops use that one, and a slow view, even one in every
room, must not hold them up. Each room runs one Perspective job at a time,
so :data:`THREADS` rooms' views work at once and the others' wait their
turn; nothing else does.

The registry owns the factory and calls :meth:`LiveViews.close` once every
room is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..ops.state import State
from .live import RoomViews

__all__ = ["LiveViews", "THREADS"]

#: Perspective worker threads for the whole process.
THREADS = 4


class LiveViews:
    """Makes each room's views (the registry's ``views`` factory) and owns their executor."""

    def __init__(self, threads: int = THREADS) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="perspective")

    def __call__(
        self,
        name: str,
        current: Callable[[], tuple[State, int]],
        on_idle: Callable[[], None],
        send: Callable[[Any, Any, bool], None],
    ) -> RoomViews:
        return RoomViews(name, current, on_idle, send, executor=self.executor)

    async def close(self) -> None:
        """Shut the executor down. Every room's views are closed by now, so no job is left;
        the threads end without the loop waiting for them."""
        self.executor.shutdown(wait=False, cancel_futures=True)
