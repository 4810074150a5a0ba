"""The app's live views: every room's :class:`~.live.RoomViews`, on the node's views process.

Perspective runs in a process of its own (:mod:`.process`, :mod:`.worker`),
started on the first view or dashboard and restarted after a loss. Each room's
views send it their requests one at a time; every room shares it.

The registry owns the factory and calls :meth:`LiveViews.close` once every
room is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ops.state import State
from .jobs import Budgets
from .live import RoomViews
from .process import ViewsProcess

__all__ = ["LiveViews"]


class LiveViews:
    """Makes each room's views (the registry's ``views`` factory) and owns the views process."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        build_timeout: float = 120.0,
        memory_bytes: int = 0,
        ttl: float = 30.0,
    ) -> None:
        self.process = ViewsProcess(memory_bytes=memory_bytes)
        self.budgets = Budgets(view=timeout, build=build_timeout)
        self.ttl = ttl

    def __call__(
        self,
        name: str,
        current: Callable[[], tuple[State, int]],
        on_idle: Callable[[], None],
        send: Callable[[Any, Any, bool], None],
    ) -> RoomViews:
        return RoomViews(
            name, current, on_idle, send, process=self.process, budgets=self.budgets, ttl=self.ttl
        )

    async def close(self) -> None:
        """Stop the views process (every room's views are closed by now)."""
        await self.process.close()
