"""Keeping one room's table right: after the views process was lost, and when nobody uses it.

:class:`Upkeep` is mixed into :class:`~.live.RoomViews`:

- **A lost process** (:meth:`Upkeep._lost`, a :class:`~.process.ViewsProcess`
  listener): the views whose request overran its budget are closed with the
  reason (a dashboard's with 4010); every other view gets its table rebuilt
  in the new process and a fresh snapshot; dashboards are told to reconnect.
  When one poll updated every view of the table, the views with expressions
  are blamed (the others are plain reads Perspective does in bounded time);
  if none has one, all the views the request read are.
- **An unused table** is dropped ``ttl`` seconds after its last view and
  dashboard left (:meth:`Upkeep._maybe_expire`), and built again on next need.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from protocol import CloseCode

from . import jobs
from .jobs import Budgets, Tag
from .process import ViewsLost, ViewsProcess
from .subscription import Subscription
from .watchers import Watchers

__all__ = ["Upkeep"]

log = logging.getLogger("coframe.views")


class Upkeep:
    """Recovery and expiry of one room's table (mixed into :class:`~.live.RoomViews`)."""

    if TYPE_CHECKING:
        name: str
        key: str
        process: ViewsProcess
        budgets: Budgets
        ttl: float
        built: int | None
        subs: dict[tuple[str, str], Subscription]
        _lock: asyncio.Lock
        _watchers: Watchers
        _sessions: dict[int, Any]
        _closed: bool
        _expiry: asyncio.TimerHandle | None
        _incoming: list[Any]

        @property
        def has_table(self) -> bool: ...

        def spawn(self, work: Any) -> asyncio.Task[Any]: ...

        def _close_sub(self, sub: Subscription, reason: str) -> None: ...

        async def _build_locked(self) -> None: ...

        async def _reopen_locked(self) -> None: ...

    # ---------------------------------------------------------------- a lost process

    def _lost(self, reason: str, tag: Any) -> None:
        """The views process was lost: close the view that overran, rebuild for the others."""
        if self._closed or self.built is None:
            return
        self.built = None
        culprits = self._culprits(tag)
        for sub in self.subs.values():
            sub.vkey = None
        for sub in culprits:
            if isinstance(sub, Subscription) and sub.sent:
                self._close_sub(sub, self._overran_reason())
            elif isinstance(sub, int) and sub in self._sessions:  # a dashboard's request overran
                self._sessions[sub](self._overran_reason(dashboard=True), CloseCode.TOO_EXPENSIVE)
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

    def _overran_reason(self, dashboard: bool = False) -> str:
        what = "a request of this dashboard" if dashboard else "this view"
        again = "reload without it" if dashboard else "subscribe again"
        return (
            f"{what} took longer than {self.budgets.view:g} s to compute (views_timeout) and was closed;"
            f" make it cheaper (a simpler expression, a filter, fewer rows) and {again}"
        )

    async def _recover(self) -> None:
        """Rebuild the table in the new process and send every view a fresh snapshot."""
        try:
            async with self._lock:
                if self._closed or self.has_table:
                    return
                await self._build_locked()
                await self._reopen_locked()
        except ViewsLost:
            pass  # lost again: the next loss starts another recovery
        except Exception:
            log.exception(
                "views of room %s could not be rebuilt after the views process restarted", self.name
            )

    # ---------------------------------------------------------------- an unused table goes

    def _maybe_expire(self) -> None:
        """Drop the table ``ttl`` seconds after the last view and dashboard left."""
        if self._closed or self.subs or self._watchers or self.built is None or self._expiry is not None:
            return
        self._expiry = asyncio.get_running_loop().call_later(self.ttl, self._expire)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire(self) -> None:
        self._expiry = None
        if not (self.subs or self._watchers or self._closed):
            self.spawn(self._drop_unused())

    async def _drop_unused(self) -> None:
        async with self._lock:
            if self.subs or self._watchers or self._closed or not self.has_table:
                return
            self.built = None
            self._incoming = []
            try:
                await jobs.drop(self.process, self.key, self.budgets)
            except ViewsLost:
                pass
            log.info("views of room %s: table dropped (unused for %g s)", self.name, self.ttl)
