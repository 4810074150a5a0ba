"""The dashboards watching one room, and their Perspective sessions in the views process.

:class:`Dashboards` is the part of :class:`~.live.RoomViews` that the
dashboard endpoint (:mod:`.endpoint`) uses: a dashboard attaches for its
user's audience (which pins the room and builds that audience's table: its
rows and every visible column, :mod:`.audience`), opens a session on that
table in the views process (its own Perspective server, so the session sees
no other table), forwards its allowed requests one at a time, in order with
the room's other view work, and closes the session when it leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..rooms.policy import EVERYONE, Audience
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
        _session_tables: dict[int, ViewTable]

        def live(self, t: ViewTable) -> bool: ...

        async def ensure(self, audience: Audience = EVERYONE) -> None: ...

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

    async def attach(self, reset: Reset, audience: Audience = EVERYONE) -> None:
        """Pin the room for a dashboard of ``audience`` and build that audience's table if needed.

        Before the table is rebuilt after a schema change, dropped, or lost
        with the views process, ``reset(reason)`` is called on the loop (see
        :mod:`.watchers`): the dashboard must reconnect. Call :meth:`detach`
        with the same ``reset`` once the dashboard is gone.

        Raises:
            PolicyBroken: the audience's row predicate no longer compiles.
            ValueError: a column has no Perspective type.
        """
        self._watchers.add(reset, audience)
        self._cancel_expiry(self._table(audience))
        try:
            await self.ensure(audience)
        except BaseException:
            self.detach(reset)
            raise

    def detach(self, reset: Reset) -> None:
        audience = self._watchers.remove(reset)
        if audience is not None:
            self._maybe_expire(self._table(audience))

    async def open_session(
        self,
        sid: int,
        push: Callable[[bytes], None],
        reset: Callable[..., Any],
        audience: Audience = EVERYONE,
    ) -> None:
        """Open dashboard session ``sid`` on ``audience``'s table; its replies go to ``push``.

        ``reset(reason, code)`` closes the dashboard with 4010 if one of its
        own requests runs over the views budget.
        """
        async with self._lock:
            t = self._table(audience)
            await self._ensure_locked(t)
            self.process.on_push(sid, push)
            await self.process.call(
                {"op": "session_open", "table": t.key, "sid": sid}, budget=self.budgets.view, tag=None
            )
            self._sessions[sid] = reset
            self._session_tables[sid] = t

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

    async def close_dashboard(self, sid: int) -> None:
        """Close dashboard session ``sid`` (its views go with it). Not ``close_session``:
        :meth:`RoomViews.close_session` closes a coframe session's views."""
        self.process.on_push(sid, None)
        t = self._session_tables.pop(sid, None)
        if sid not in self._sessions:
            return
        self._sessions.pop(sid, None)
        try:
            async with self._lock:
                if t is not None and self.live(t):
                    await self.process.call(
                        {"op": "session_close", "sid": sid}, budget=self.budgets.view, tag=None
                    )
        except ViewsLost:
            pass
