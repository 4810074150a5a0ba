"""Keeping one room's table right: after the views process was lost, and when nobody uses it.

:class:`Upkeep` is mixed into :class:`~.live.RoomViews`:

- **A lost process** (:meth:`Upkeep._lost`, a :class:`~.process.ViewsProcess`
  listener): the views whose request overran its budget are closed with the
  reason (a dashboard's with 4010); every other view gets its table rebuilt
  in the new process and a fresh snapshot; dashboards are told to reconnect.
  When one poll updated every view of the table, the views with expressions
  are blamed (the others are plain reads Perspective does in bounded time);
  if none has one, all the views the request read are.
- **An unused table** is dropped ``ttl`` seconds after its last view (and,
  for a table dashboards are on, the last dashboard) left (:meth:`Upkeep._maybe_expire`),
  and built again on next need. A table that holds columns its remaining
  views no longer use is rebuilt without them, ``ttl`` seconds after the
  last view that used them left (its views get a fresh snapshot).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from protocol import CloseCode

from ..rooms.outbound import Audience
from . import jobs
from .jobs import Budgets, Tag
from .process import ViewsLost, ViewsProcess
from .subscription import Subscription
from .vtable import ViewTable
from .watchers import Watchers

__all__ = ["Upkeep"]

log = logging.getLogger("coframe.views")


class Upkeep:
    """Recovery and expiry of one room's table (mixed into :class:`~.live.RoomViews`)."""

    if TYPE_CHECKING:
        name: str
        process: ViewsProcess
        budgets: Budgets
        ttl: float
        tables: dict[Audience, ViewTable]
        subs: dict[tuple[str, str], Subscription]
        _lock: asyncio.Lock
        _watchers: Watchers
        _sessions: dict[int, Any]
        _closed: bool

        def live(self, t: ViewTable) -> bool: ...

        def spawn(self, work: Any) -> asyncio.Task[Any]: ...

        def _close_sub(self, sub: Subscription, reason: str) -> None: ...

        def _wanted(self, t: ViewTable, extra: list[dict[str, Any]] = ...) -> set[str] | None: ...

        async def _build_locked(self, t: ViewTable, wanted: set[str] | None = None) -> None: ...

        async def _reopen_locked(self, t: ViewTable) -> None: ...

    # ---------------------------------------------------------------- a lost process

    def _lost(self, reason: str, tag: Any) -> None:
        """The views process was lost: close the view that overran, rebuild for the others."""
        if self._closed or not any(t.built is not None or t.building for t in self.tables.values()):
            return
        for t in self.tables.values():
            t.built, t.incoming = None, []
        culprits = self._culprits(tag)
        for sub in self.subs.values():
            sub.vkey = None
        for sub in culprits:
            if isinstance(sub, Subscription) and sub.sent:
                self._close_sub(sub, self._overran_reason(reason))
            elif isinstance(sub, int) and sub in self._sessions:  # a dashboard's request overran
                self._sessions[sub](self._overran_reason(reason, dashboard=True), CloseCode.TOO_EXPENSIVE)
        self._sessions.clear()
        self._watchers.reset_all(f"the views process restarted ({reason}); reconnecting")
        if any(s.sent for s in self.subs.values()):
            self.spawn(self._recover())

    def _culprits(self, tag: Any) -> list[Any]:
        """The subscriptions (or dashboard session ids) a request that overran was for."""
        if not isinstance(tag, Tag) or tag.room != self.name:
            return []
        subs = list(tag.subs)
        if tag.kind == "apply":  # one poll updated every view: blame the ones with expressions
            with_exprs = [s for s in subs if s.config.get("expressions")]
            subs = with_exprs or subs
        return subs

    def _overran_reason(self, why: str, dashboard: bool = False) -> str:
        """Why a view (or a dashboard) was closed: ``why`` is the views process's reason."""
        what = "a request of this dashboard" if dashboard else "this view"
        again = "reload without it" if dashboard else "subscribe again"
        return (
            f"{what} was closed and the views process restarted: {why}; make it cheaper (a simpler"
            f" expression, a filter, fewer rows) and {again}"
        )

    async def _recover(self) -> None:
        """Rebuild every table that has views in the new process; each view gets a fresh snapshot."""
        try:
            async with self._lock:
                for t in list(self.tables.values()):
                    if (
                        self._closed
                        or self.live(t)
                        or not any(s.table is t and s.sent for s in self.subs.values())
                    ):
                        continue
                    await self._build_locked(t, self._wanted(t))
                    await self._reopen_locked(t)
        except ViewsLost:
            pass  # lost again: the next loss starts another recovery
        except Exception:
            log.exception(
                "views of room %s could not be rebuilt after the views process restarted", self.name
            )

    # ---------------------------------------------------------------- unused tables and columns

    def _in_use(self, t: ViewTable) -> bool:
        return any(s.table is t for s in self.subs.values()) or self._watchers.watching(t.audience)

    def _maybe_expire(self, t: ViewTable) -> None:
        """In ``ttl`` seconds, drop ``t`` if nobody uses it, or shrink it to the columns its views use."""
        if self._closed or t.built is None or t.expiry is not None:
            return
        if self._in_use(t):
            wanted = self._wanted(t)
            if wanted is None or (t.columns is not None and t.columns <= wanted):
                return  # its views use every column it holds
        t.expiry = asyncio.get_running_loop().call_later(self.ttl, self._expire, t)

    def _cancel_expiry(self, t: ViewTable) -> None:
        if t.expiry is not None:
            t.expiry.cancel()
            t.expiry = None

    def _expire(self, t: ViewTable) -> None:
        t.expiry = None
        if not self._closed:
            self.spawn(self._drop_or_shrink(t))

    async def _drop_or_shrink(self, t: ViewTable) -> None:
        try:
            async with self._lock:
                if self._closed or not self.live(t):
                    return
                if not self._in_use(t):
                    t.built, t.incoming = None, []
                    await jobs.drop(self.process, t.key, self.budgets)
                    t.dropped.set()
                    log.info(
                        "views of room %s: table %s dropped (unused for %g s)", self.name, t.key, self.ttl
                    )
                    return
                wanted = self._wanted(t)
                if wanted is not None and (t.columns is None or not t.columns <= wanted):
                    await self._build_locked(t, wanted)  # without the columns no view uses any more
                    await self._reopen_locked(t)
        except ViewsLost:
            pass
