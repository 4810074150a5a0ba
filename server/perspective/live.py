"""The live views of one room: its table in the views process, view subscriptions and dashboards.

Each :class:`~server.rooms.room.Room` has one :class:`RoomViews`. Perspective
itself runs in the node's views process (:mod:`.process`, :mod:`.host`);
this is the room's side of it. The room has one table there per
**audience** that has views (:mod:`.audience`, :mod:`.vtable`): the
audience's rows and the visible columns its views use. A table is built
the first time something needs it (a ``subscribe``, or a dashboard through
:meth:`RoomViews.attach`): about 4 s at 1M rows, and a room nobody watches
should not pay for it. A view that needs a column the table lacks rebuilds
it with that column (its other views get a fresh snapshot); ``ttl``
seconds after the last view left, the table is dropped, or rebuilt without
the columns no view uses any more; and every table goes when the room
unloads.

Once built, the table follows the room: the tick loop calls
:meth:`RoomViews.on_delta` once per tick with the tick's delta; deltas
queue up while the process is busy and are sent together (one poll), then
every subscription whose content changed gets **one** ``view`` message. A
schema change (add, drop, rename, cast) rebuilds the table from the room's
state; subscriptions are rewritten (renamed columns follow, dropped ones
leave ``columns``, :mod:`.subscription`) and get a fresh snapshot, or a
``closed`` view naming the reason when they cannot be kept.

**Never in the room's way.** Every request to the process is awaited here,
one at a time per room (``_lock``), in tasks the room does not wait for:
acks and deltas never wait for views. **Budgets**: each request has a time
budget (:class:`.jobs.Budgets`). When the process is lost (a request over
its budget, or over its memory) every room hears of it (:meth:`_lost`): the
view whose request overran is closed with the reason, the other views get
their table rebuilt and a fresh snapshot, and dashboards are told to
reconnect.

**Where things are.** Here: the table's life, following deltas, and
subscribe/unsubscribe. :mod:`.subscription`: one subscription's state and
messages. :mod:`.jobs`: the requests to the process. :mod:`.watchers`: the
dashboards attached, and what ``reset`` must do.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from protocol import Error, ErrorCode, Subscribe, Unsubscribe, View

from ..ops.state import State
from ..rooms.policy import EVERYONE, Audience, visible_names
from . import jobs
from .audience import expression_columns
from .config import ViewConfigError, check_columns
from .fastviews import TOUCHED_DELTAS, FastViews
from .following import Following
from .jobs import Budgets, vkey_of, zones_of
from .process import ViewsFailed, ViewsLost, ViewsProcess
from .sessions import Dashboards
from .subscription import Subscription, no_such_view, refusal, view_exists
from .upkeep import Upkeep
from .vtable import ViewTable
from .watchers import Watchers

if TYPE_CHECKING:
    from ..rooms.session import Session

__all__ = ["RoomViews", "Subscription", "Budgets"]

log = logging.getLogger("coframe.views")


class RoomViews(Following, Dashboards, Upkeep, FastViews):
    """The room's tables in the views process, its subscriptions and the dashboards watching it."""

    def __init__(
        self,
        name: str,
        current: Callable[[], tuple[State, int]],
        on_idle: Callable[[], None] | None,
        send: Callable[[Any, Any, bool], None],
        *,
        process: ViewsProcess,
        budgets: Budgets | None = None,
        ttl: float = 30.0,
    ) -> None:
        self.name = name  # also the Perspective tables' name, e.g. "sales/main"
        self.key = name  # the EVERYONE table's key in the views process
        self.process = process
        self.budgets = budgets or Budgets()
        self.ttl = ttl
        self._send = send  # the room's outbound choke point: (session, message, droppable)
        self._current = current  # the room's published (state, seq)
        self.tables: dict[Audience, ViewTable] = {}
        self.subs: dict[tuple[str, str], Subscription] = {}
        self.builds = 0  # tables built so far (first load, rebuilds, after a lost process)
        self.caught_up = 0  # deltas that arrived while a table was being built
        self._watchers = Watchers(on_idle)  # the dashboards attached
        self._sessions: dict[int, Callable[..., Any]] = {}  # dashboard sessions in the process: sid -> reset
        self._session_tables: dict[int, ViewTable] = {}  # sid -> the table its session is on
        self._lock = asyncio.Lock()  # one request at a time for this room
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._fast_dirty = False  # a tick since the fast views were last read
        self._fast_kind = "update"  # "snapshot" after a schema change rewrote their configs
        # The rows each recent delta upserted, for the grouped fast views (GroupedPlan.read).
        self._touched: deque[tuple[int, int, np.ndarray | None]] = deque(maxlen=TOUCHED_DELTAS)
        self._fast_pump: asyncio.Task[None] | None = None  # reads the fast views; never waits for Perspective
        self._stepper: asyncio.Task[None] | None = None  # moves the fast views with the deltas (.fastviews)
        self._step_due = False
        self._next_step = 0.0  # the loop time before which no step starts (fastviews.STEP_SHARE)
        self.full_reads = (
            0  # fast view reads over the whole frame (the first, then when a step cannot follow)
        )
        self._unlisten = process.on_lost(self._lost)
        state, _ = current()
        self._columns = {c["id"]: c["name"] for c in state.catalog.to_wire()}
        self._zones = zones_of(state.catalog.to_wire())

    # ---------------------------------------------------------------- tables

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` as a task these views own: :meth:`close` cancels it and waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def settled(self) -> None:
        """Return once every delta handed to :meth:`on_delta` so far has reached every view."""

        def pumps() -> list[asyncio.Task[None]]:
            return [p for p in (self._stepper, self._pump, self._fast_pump) if p is not None]

        while pumps():
            await asyncio.gather(*(asyncio.shield(p) for p in pumps()))

    async def barrier(self) -> None:
        """Return once every request of this room queued before this call is done."""
        async with self._lock:
            pass

    # ---------------------------------------------------------------- subscriptions

    def open_views(self, session: Session) -> int:
        """Views ``session`` has open (or being opened)."""
        return sum(1 for s in self.subs.values() if s.session is session)

    async def subscribe(self, session: Session, msg: Subscribe) -> None:
        """Open a view and reply with its snapshot, or one ``error`` (a refused expression
        before the table is even built: :func:`.subscription.refusal`)."""
        key = (session.client, msg.view)
        old = self.subs.get(key)
        if old is not None and old.session is not session:  # a replaced connection's, not yet dropped
            self.spawn(self._forget(old))
        elif old is not None:
            self._reply(session, view_exists(msg))
            return
        refused = refusal(msg)
        if refused is not None:
            self._reply(session, refused)
            return
        sub = Subscription(session, msg.view, msg.config, msg.viewport)
        self.subs[key] = sub  # reserved while the table builds
        try:
            async with self._lock:
                await self._subscribe_locked(sub, msg)
        except ViewsLost as e:
            self._detach(sub)
            code = ErrorCode.TOO_EXPENSIVE if e.overran else ErrorCode.INTERNAL
            text = (
                self._overran_reason(e.reason) if e.overran else f"the views process restarted ({e.reason})"
            )
            self._reply(session, Error(code, f"cannot open view '{msg.view}': {text}", re=msg.id))
        except Exception as e:
            self._detach(sub)
            code = ErrorCode.BAD_DTYPE if isinstance(e, ValueError) else ErrorCode.INTERNAL
            self._reply(session, Error(code, f"cannot open a view on room {self.name}: {e}", re=msg.id))

    def _check(self, sub: Subscription) -> None:
        """Raise ViewConfigError if ``sub``'s config names a column its audience cannot see."""
        if sub.closing is not None:  # a schema change made the config impossible
            raise ViewConfigError(
                ErrorCode.NO_SUCH_COLUMN, f"cannot open the view: {sub.closing}", field="config"
            )
        audience = getattr(sub.session, "audience", EVERYONE)
        visible = visible_names(self._current()[0].catalog, audience)
        check_columns(sub.config, ["_rid", *visible])
        exprs = sub.config.get("expressions", {})
        for name, text in exprs.items():
            for col in sorted(expression_columns(text) - set(visible) - set(exprs) - {"_rid"}):
                raise ViewConfigError(
                    ErrorCode.NO_SUCH_COLUMN,
                    f"view expression '{name}' names column '{col}', which is not in the table;"
                    f" columns: {', '.join(visible)}",
                    field="config.expressions",
                    column=col,
                )

    async def _subscribe_locked(self, sub: Subscription, msg: Subscribe) -> None:
        try:
            self._check(sub)
        except ViewConfigError as e:
            self._detach(sub)
            self._reply(sub.session, Error(e.code, e.message, e.details, re=msg.id))
            return
        sub.fast = self._plan(sub)
        if sub.fast is not None and await self._open_fast(sub, msg.id):
            return  # served from the frame: no Perspective table needed
        await self._open_perspective(sub, msg.id)

    async def _open_perspective(self, sub: Subscription, re: Any) -> None:
        """Open ``sub``'s view in its audience's table (built or widened first); a snapshot follows."""
        if sub.closing is not None:
            self._close_sub(sub, sub.closing)
            return
        t = self._table(getattr(sub.session, "audience", EVERYONE))
        await self._ensure_locked(t, sub.config)
        if self.subs.get(sub.key) is not sub or sub.session.closed:
            self._detach(sub)
            return  # gone meanwhile (a session's own requests run in order: never unsubscribed)
        sub.table = t
        try:
            result = await self._open_locked(sub)
        except ViewConfigError as e:
            self._detach(sub)
            self._reply(sub.session, Error(e.code, e.message, e.details, re=re))
            return
        if result is not None:
            self._deliver(sub, result, "snapshot", re=re)

    async def _open_locked(self, sub: Subscription) -> tuple[pa.Table, int] | None:
        """Open ``sub``'s view and read it; None (and the view released) if ``sub`` went meanwhile."""
        t = sub.table
        vkey = vkey_of(sub.config)
        sub.vkey = vkey
        try:
            result = await jobs.open_view(self.process, t.key, self.name, sub, self._zones, self.budgets)
        except ViewsFailed as e:
            sub.vkey = None
            code = {"bad_view": ErrorCode.BAD_VIEW, "too_expensive": ErrorCode.TOO_EXPENSIVE}.get(
                e.code, ErrorCode.INTERNAL
            )
            raise ViewConfigError(code, e.message, field="config") from None
        except BaseException:
            sub.vkey = None
            raise
        if self.subs.get(sub.key) is not sub:
            sub.vkey = None
            await jobs.unref(self.process, t.key, vkey, self.budgets)
            return None
        return result

    async def unsubscribe(self, session: Session, msg: Unsubscribe) -> None:
        sub = self.subs.get((session.client, msg.view))
        if sub is None or sub.session is not session:
            self._reply(session, no_such_view(msg))
            return
        await self._forget(sub)
        self._reply(session, View(msg.view, "closed", self._seq_of(sub), reason="unsubscribed", re=msg.id))

    def drop_session(self, session: Session) -> None:
        """Delete every view of a session that left."""
        for sub in [s for s in self.subs.values() if s.session is session]:
            self.spawn(self._forget(sub))

    def close_session(self, session: Session, reason: str) -> None:
        """Close every view of ``session`` with ``reason`` (its access changed)."""
        for sub in [s for s in self.subs.values() if s.session is session]:
            self._close_sub(sub, reason)

    def resend(self, session: Session) -> None:
        """Queue a fresh snapshot of each of ``session``'s views (after a resync dropped updates)."""
        subs = [s for s in self.subs.values() if s.session is session and s.vkey is not None]
        if subs:
            self.spawn(self._resend(subs))
        fast = [s for s in self.subs.values() if s.session is session and s.fast is not None]
        if fast:
            self.spawn(self._resend_fast(fast))

    async def _resend_fast(self, subs: list[Subscription]) -> None:
        async with self._lock:
            await self._update_fast("snapshot", only=[s for s in subs if self.subs.get(s.key) is s])

    async def _resend(self, subs: list[Subscription]) -> None:
        try:
            async with self._lock:
                for t in {id(s.table): s.table for s in subs}.values():
                    live = [
                        s for s in subs if s.table is t and s.vkey is not None and self.subs.get(s.key) is s
                    ]
                    if not live or not self.live(t):
                        continue
                    out = await jobs.read(self.process, t.key, self.name, live, self._zones, self.budgets)
                    for sub, result in zip(live, out, strict=True):
                        sub.last = None
                        self._deliver(sub, result, "snapshot")
        except ViewsLost:
            pass  # _lost sends snapshots after the rebuild

    async def _reopen_locked(self, t: ViewTable) -> None:
        """After ``t`` was rebuilt: reopen each of its subscriptions' views and send a snapshot."""
        for sub in list(self.subs.values()):
            if sub.table is not t or sub.vkey is not None or sub.session.closed or not sub.sent:
                continue  # a first subscribe still waiting for the lock opens its own view
            result = None
            if sub.closing is None:
                try:
                    self._check(sub)
                    result = await self._open_locked(sub)
                except ViewConfigError as e:
                    sub.closing = e.message
            if self.subs.get(sub.key) is not sub:
                continue  # unsubscribed or dropped meanwhile
            if sub.closing is not None:
                self._close_sub(sub, sub.closing)
            elif result is not None:
                sub.last = None
                self._deliver(sub, result, "snapshot")

    def _seq_of(self, sub: Subscription) -> int:
        """The room seq ``sub``'s content reflects (its table's, or the room's for a fast view)."""
        return sub.table.seq if sub.table is not None and sub.fast is None else self._current()[1]

    def _deliver(
        self,
        sub: Subscription,
        result: tuple[pa.Table, int] | Exception,
        kind: str,
        re: Any = None,
        seq: int | None = None,
    ) -> None:
        if self.subs.get(sub.key) is not sub:
            return  # closed meanwhile: nothing about a view follows its ``closed``
        if isinstance(result, Exception):
            log.error("reading view %s of %s failed: %r", sub.name, sub.session.client, result)
            self._close_sub(sub, f"the view could not be read ({type(result).__name__}: {result})")
            return
        table, rows = result
        msg = sub.message(kind, self._seq_of(sub) if seq is None else seq, table, rows, re)
        if msg is not None:
            self._send(sub.session, msg, kind == "update")

    def _close_sub(self, sub: Subscription, reason: str) -> None:
        self._detach(sub)  # at once, so no update can follow the ``closed``
        self.spawn(self._forget(sub))
        self._reply(sub.session, View(sub.name, "closed", self._seq_of(sub), reason=reason))

    def _detach(self, sub: Subscription) -> None:
        if self.subs.get(sub.key) is sub:
            del self.subs[sub.key]
        if sub.table is not None:
            self._maybe_expire(sub.table)

    async def _forget(self, sub: Subscription) -> None:
        self._detach(sub)
        vkey, sub.vkey = sub.vkey, None
        t = sub.table
        if vkey is not None and t is not None and self.live(t):
            try:
                async with self._lock:
                    if self.live(t):
                        await jobs.unref(self.process, t.key, vkey, self.budgets)
            except ViewsLost:
                pass

    def _fail_subs(self, t: ViewTable, reason: str) -> None:
        for sub in list(self.subs.values()):
            if sub.sent and sub.table is t:
                self._close_sub(sub, reason)

    def _reply(self, session: Session, msg: Any) -> None:
        self._send(session, msg, False)

    # ---------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Drop the tables (the room is unloading), then end the views' tasks."""
        self._closed = True
        for t in self.tables.values():
            self._cancel_expiry(t)
        self._unlisten()
        self._watchers.reset_all("the room is unloading")
        async with self._lock:
            self.subs.clear()
            for t in self.tables.values():
                if self.live(t):
                    try:
                        await jobs.drop(self.process, t.key, self.budgets)
                    except (ViewsLost, RuntimeError):
                        pass
                t.built = None
        pumps = (self._stepper, self._pump, self._fast_pump, *self._tasks)
        tasks = [t for t in pumps if t is not None and t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
