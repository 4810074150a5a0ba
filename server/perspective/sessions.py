"""The dashboards watching one room, and their Perspective sessions in the views process.

:class:`Dashboards` is the part of :class:`~.live.RoomViews` that the
dashboard endpoint (:mod:`.endpoint`) uses: a dashboard attaches (which pins
the room and builds its table), opens a session on the room's table in the
views process, forwards its allowed requests one at a time, in order with
the room's other view work, and closes the session when it leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..rooms.outbound import EVERYONE, Audience
from .jobs import Budgets, Tag
from .process import ViewsLost, ViewsProcess
from .vtable import ViewTable
from .watchers import Reset, Watchers

__all__ = ["Dashboards"]


class Dashboards:
    """Dashboards of one room (mixed into :class:`~.live.RoomViews`, which owns the state)."""

    if TYPE_CHECKING:
        name: str
        key: str
        process: ViewsProcess
        budgets: Budgets
        _lock: asyncio.Lock
        _watchers: Watchers
        _sessions: dict[int, Callable[..., Any]]

        @property
        def has_table(self) -> bool: ...

        async def ensure(self) -> None: ...

        async def _ensure_locked(
            self, t: ViewTable | None = None, config: dict[str, Any] | None = None
        ) -> None: ...

        def _table(self, audience: Audience) -> ViewTable: ...

        def _cancel_expiry(self, t: ViewTable) -> None: ...

        def _maybe_expire(self, t: ViewTable) -> None: ...

    @property
    def watchers(self) -> int:
        """Dashboards attached (they keep the room loaded)."""
        return len(self._watchers)

    async def attach(self, reset: Reset) -> None:
        """Pin the room for a dashboard and build its table if needed.

        Before the table is rebuilt after a schema change, dropped, or lost
        with the views process, ``reset(reason)`` is called on the loop (see
        :mod:`.watchers`): the dashboard must reconnect. Call :meth:`detach`
        with the same ``reset`` once the dashboard is gone.
        """
        self._watchers.add(reset)
        self._cancel_expiry(self._table(EVERYONE))
        try:
            await self.ensure()
        except BaseException:
            self.detach(reset)
            raise

    def detach(self, reset: Reset) -> None:
        self._watchers.remove(reset)
        self._maybe_expire(self._table(EVERYONE))

    async def open_session(self, sid: int, push: Callable[[bytes], None], reset: Callable[..., Any]) -> None:
        """Open dashboard session ``sid`` on the room's table; its replies go to ``push``.

        ``reset(reason, code)`` closes the dashboard with 4010 if one of its
        own requests runs over the views budget.
        """
        async with self._lock:
            await self._ensure_locked()
            self.process.on_push(sid, push)
            await self.process.call(
                {"op": "session_open", "table": self.key, "sid": sid}, budget=self.budgets.view, tag=None
            )
            self._sessions[sid] = reset

    async def session_request(self, sid: int, data: bytes) -> None:
        """Forward one (allowed) Perspective request of dashboard ``sid``.

        Raises:
            ViewsLost: the process was lost (``overran``: by this request).
            ViewsFailed: Perspective could not handle it.
        """
        async with self._lock:
            if sid not in self._sessions:
                raise ViewsLost("the dashboard's Perspective session is gone", False)
            await self.process.call(
                {"op": "session_request", "sid": sid, "data": data},
                budget=self.budgets.view,
                tag=Tag("session", self.name, (sid,)),
            )

    async def close_session(self, sid: int) -> None:
        self.process.on_push(sid, None)
        if sid not in self._sessions:
            return
        self._sessions.pop(sid, None)
        try:
            async with self._lock:
                if self.has_table:
                    await self.process.call(
                        {"op": "session_close", "sid": sid}, budget=self.budgets.view, tag=None
                    )
        except ViewsLost:
            pass
