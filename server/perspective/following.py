"""A room's tables in the views process, kept in step with the room (mixed into :class:`~.live.RoomViews`).

:class:`Following` builds the table of an audience when a view needs it
(wider when a view needs a column it lacks), and follows the room: each
tick's delta is queued on every table that is built or being built, with
the room's state after it; one pump sends the queued deltas of each table
to the views process (its audience's stream, one poll) and delivers one
update per view; the fast views have a pump of their own
(:mod:`.fastviews`). A schema change rebuilds each table.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol import Delta

from ..ops.state import State
from ..rooms.policy import EVERYONE, Audience, visible_names
from . import jobs
from .audience import table_key
from .fastviews import touched_rids
from .jobs import Budgets, zones_of
from .process import ViewsFailed, ViewsLost, ViewsProcess
from .subscription import Subscription
from .vtable import ViewTable, wanted_columns
from .watchers import Watchers

__all__ = ["Following"]

log = logging.getLogger("coframe.views")


class Following:
    """The tables of one room and the pump that keeps them in step (see module doc)."""

    if TYPE_CHECKING:
        name: str
        process: ViewsProcess
        budgets: Budgets
        tables: dict[Audience, ViewTable]
        subs: dict[tuple[str, str], Subscription]
        builds: int
        caught_up: int
        _current: Callable[[], tuple[State, int]]
        _watchers: Watchers
        _lock: asyncio.Lock
        _pump: asyncio.Task[None] | None
        _fast_pump: asyncio.Task[None] | None
        _touched: deque[tuple[int, int, np.ndarray | None]]
        _fast_dirty: bool
        _closed: bool
        _columns: dict[int, str]
        _zones: dict[str, str]

        def _cancel_expiry(self, t: ViewTable) -> None: ...

        def _fail_subs(self, t: ViewTable, reason: str) -> None: ...

        async def _reopen_locked(self, t: ViewTable) -> None: ...

        def _deliver(
            self, sub: Subscription, result: Any, kind: str, re: Any = None, seq: int | None = None
        ) -> None: ...

        def _replan(self) -> None: ...

        async def _run_fast_pump(self) -> None: ...

        def _step_soon(self) -> None: ...

    def _table(self, audience: Audience) -> ViewTable:
        t = self.tables.get(audience)
        if t is None:
            t = self.tables[audience] = ViewTable(audience, table_key(self.name, audience))
        return t

    def live(self, t: ViewTable) -> bool:
        """``t`` exists in the running views process."""
        return t.built is not None and t.built == self.process.generation and self.process.pid is not None

    @property
    def built(self) -> int | None:
        """The generation the EVERYONE table was built in (None: not built)."""
        t = self.tables.get(EVERYONE)
        return None if t is None else t.built

    @property
    def has_table(self) -> bool:
        """The EVERYONE table (the dashboards') exists in the running views process."""
        t = self.tables.get(EVERYONE)
        return t is not None and self.live(t)

    def _wanted(self, t: ViewTable, extra: list[dict[str, Any]] = ()) -> set[str] | None:  # type: ignore[assignment]
        configs = [s.config for s in self.subs.values() if s.table is t and s.closing is None]
        everything = self._watchers.watching(t.audience)
        return wanted_columns([*configs, *extra], everything)

    async def ensure(self, audience: Audience = EVERYONE) -> None:
        """Build ``audience``'s table with every visible column (for a dashboard), if it is not.

        Raises:
            ValueError: a column has no Perspective type (named in the message).
            PolicyBroken: the audience's row predicate no longer compiles.
            RuntimeError: the room is closing.
        """
        async with self._lock:
            await self._ensure_locked(self._table(audience))

    async def _ensure_locked(self, t: ViewTable | None = None, config: dict[str, Any] | None = None) -> None:
        """Build ``t`` (default: EVERYONE's) if it is not, with the columns ``config`` needs too."""
        if self._closed:
            raise RuntimeError(f"room {self.name} is closing")
        t = t or self._table(EVERYONE)
        self._cancel_expiry(t)
        wanted = self._wanted(t, [config] if config is not None else [])
        if not self.live(t):
            await self._build_locked(t, wanted)
        elif not t.covers(wanted):  # a view needs a column the table lacks: rebuild it wider
            await self._build_locked(t, wanted)
            await self._reopen_locked(t)

    async def _build_locked(self, t: ViewTable, wanted: set[str] | None = None) -> None:
        """(Re)build ``t`` from the room's current state, holding ``wanted`` (the lock is held)."""
        state, seq = self._current()
        for sub in self.subs.values():
            if sub.table is t:
                sub.vkey = None  # the old table's views go with it
        visible = set(visible_names(state.catalog, t.audience))
        columns = None if wanted is None else sorted(wanted & visible)
        t.building = True
        try:
            gen = await self.process.start()
            await jobs.build(self.process, t.key, self.name, state, t.audience, columns, self.budgets)
        except ViewsFailed as e:
            self._fail_subs(t, f"the room's Perspective table could not be built: {e.message}")
            raise ValueError(e.message) from None
        except BaseException as e:
            self._fail_subs(t, f"the room's Perspective table could not be built: {e}")
            raise
        finally:
            t.building = False
        t.built, t.seq = gen, seq
        t.columns = None if columns is None else frozenset(columns)
        self.builds += 1
        # Older deltas are in the state; the pump applies the newer ones.
        t.incoming = [(d, st) for d, st in t.incoming if d.seq_to > seq]

    # ---------------------------------------------------------------- ticks

    def on_delta(self, delta: Delta) -> None:
        """Follow one tick's delta (call after the room published the state it leads to)."""
        if delta.schema is not None:
            self._schema_changed(delta)
        if self._closed:
            return
        if any(s.fast is not None or s.demoted for s in self.subs.values()):
            # Only while fast views exist: a plan that finds a gap reads in full instead.
            self._touched.append((delta.seq_from, delta.seq_to, touched_rids(delta)))
            self._step_soon()
        state = self._current()[0]
        for t in self.tables.values():
            if t.built is None and not t.building:
                continue  # no table, none being built: a build starts from the state then
            if t.building:
                self.caught_up += 1
            t.incoming.append((delta, state))
        self._kick()

    def _kick(self) -> None:
        """Start the pumps that apply queued deltas (tables) and read the fast views, unless running."""
        if self._closed:
            return
        if self._pump is None and self._pending():
            self._pump = asyncio.get_running_loop().create_task(self._run_pump(), name=f"views:{self.name}")
        if self._fast_pump is None and self._fast_dirty:
            self._fast_pump = asyncio.get_running_loop().create_task(
                self._run_fast_pump(), name=f"fast-views:{self.name}"
            )

    def _pending(self) -> bool:
        return any(t.incoming for t in self.tables.values())

    async def _run_pump(self) -> None:
        try:
            while not self._closed and self._pending():
                async with self._lock:
                    for t in list(self.tables.values()):
                        if t.incoming:
                            await self._pump_once(t)
        except ViewsLost:
            pass  # _lost rebuilds
        except Exception:
            log.exception("views of room %s failed to follow its deltas", self.name)
        finally:
            self._pump = None
            self._kick()  # after a failure, deltas that came in meanwhile still get applied

    async def _pump_once(self, t: ViewTable) -> None:
        items = [(d, st) for d, st in t.incoming if d.seq_to > t.seq]
        t.incoming = []
        if not items or not self.live(t):
            return
        batch, state = [d for d, _ in items], items[-1][1]
        if any(d.schema is not None for d in batch):
            if self._watchers.watching(t.audience):  # dashboards hold views on the old table: they reconnect
                reason = f"the schema changed at seq {batch[-1].seq_to}; reconnect to see the new columns"
                self._watchers.reset_for(t.audience, reason)
            if not any(s.table is t for s in self.subs.values()) and not self._watchers.watching(t.audience):
                await jobs.drop(self.process, t.key, self.budgets)  # rebuilt on next need
                t.built = None
                return
            await self._build_locked(t, self._wanted(t))
            await self._reopen_locked(t)
            return
        subs = [s for s in self.subs.values() if s.table is t and s.vkey is not None]
        out = await jobs.apply(
            self.process,
            t.key,
            self.name,
            batch,
            state,
            t.audience,
            t.columns,
            subs,
            self._zones,
            self.budgets,
        )
        t.seq = batch[-1].seq_to
        for sub, result in zip(subs, out, strict=True):
            if self.subs.get(sub.key) is sub:
                self._deliver(sub, result, "update")

    def _schema_changed(self, delta: Delta) -> None:
        assert delta.schema is not None
        new = {c["id"]: c["name"] for c in delta.schema}
        renamed = {old: new[i] for i, old in self._columns.items() if i in new and new[i] != old}
        dropped = {old for i, old in self._columns.items() if i not in new}
        self._columns = new
        self._zones = zones_of(delta.schema)
        for sub in self.subs.values():
            sub.follow_schema(renamed, dropped, delta.seq_to)
        self._replan()
