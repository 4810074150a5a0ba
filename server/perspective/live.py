"""The live Perspective side of one room: its table, view subscriptions and dashboards.

Each :class:`~server.rooms.room.Room` has one :class:`RoomViews`. The room's
Perspective table is built the first time something needs it (a
``subscribe``, or a dashboard through :meth:`RoomViews.attach`), in a worker
thread: it takes about 4 s at 1M rows, and a room nobody watches should not
pay for it. It is kept until the room unloads.

Once built, the table follows the room: the tick loop calls
:meth:`RoomViews.on_delta` once per tick with the tick's delta, which is
applied (removes, update, one poll) and then every subscription whose
content changed gets **one** ``view`` message. Deltas that arrive while the
table is being built are queued and applied when it is ready. A schema
change (add, drop, rename, cast) rebuilds the table from the room's state;
subscriptions are rewritten (renamed columns follow, dropped ones leave
``columns``, :mod:`.subscription`) and get a fresh snapshot, or a
``closed`` view naming the reason when they cannot be kept.

**Threads.** Every Perspective call runs in a thread of the Perspective
executor (:mod:`.service`; never the default executor), one at a time per
room (``_lock``), so the event loop stays free: acks and deltas never wait
for views (:mod:`.jobs`). Deltas queue up while Perspective is busy and are
applied together (one poll): a slow view updates less often, never slows the room.

**Where things are.** Here: the table's life, following deltas, and
subscribe/unsubscribe. :mod:`.subscription`: one subscription's state and
messages. :mod:`.jobs`: the worker-thread jobs. :mod:`.watchers`: the
dashboards attached, and what ``reset`` must do.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from protocol import Delta, Error, ErrorCode, Subscribe, Unsubscribe, View

from ..ops.state import State
from .config import ViewConfigError, check_columns
from .jobs import apply_and_read, close_all, drop, open_and_read, read_all, rebuild, zones_of
from .subscription import Subscription, no_such_view, refusal, view_exists
from .tables import RoomTables
from .watchers import Reset, Watchers

if TYPE_CHECKING:
    from ..rooms.session import Session

__all__ = ["RoomViews", "Subscription"]

log = logging.getLogger("coframe.views")

T = TypeVar("T")


class RoomViews:
    """Perspective table, subscriptions and dashboard watchers of one room.

    ``executor`` runs its Perspective calls: the app's pool (:mod:`.service`),
    shared by every room and closed by its owner, never asyncio's default one.
    """

    def __init__(
        self,
        name: str,
        current: Callable[[], tuple[State, int]],
        on_idle: Callable[[], None] | None,
        send: Callable[[Any, Any, bool], None],
        *,
        executor: Executor,
    ) -> None:
        self.name = name  # also the Perspective table's name, e.g. "sales/main"
        self._send = send  # the room's outbound choke point: (session, message, droppable)
        self._current = current  # the room's published (state, seq)
        self.tables: RoomTables | None = None  # one Perspective Server per room, made on first need
        self.seq = 0  # the room seq the table reflects
        self.subs: dict[tuple[str, str], Subscription] = {}
        self.builds = 0  # tables built so far (first load and rebuilds)
        self.caught_up = 0  # deltas that arrived while a table was being built
        self._watchers = Watchers(on_idle)  # the dashboards attached
        self._lock = asyncio.Lock()  # one Perspective job at a time, in a worker thread
        self._incoming: list[Delta] = []
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._building = False
        self._closed = False
        self._executor = executor
        state, _ = current()
        self._columns = {c["id"]: c["name"] for c in state.catalog.to_wire()}
        self._zones = zones_of(state.catalog.to_wire())

    # ---------------------------------------------------------------- jobs

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (Perspective work) in a worker thread, after any job before it."""
        async with self._lock:
            return await self._run(fn, *args)

    def _run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` in the Perspective executor (the caller holds the lock)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` as a task these views own: :meth:`close` cancels it and waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def _has_table(self) -> bool:
        return self.tables is not None and self.name in self.tables._tables

    async def ensure(self) -> RoomTables:
        """The room's tables, once its table is built.

        Raises:
            ValueError: a column has no Perspective type (named in the message).
            RuntimeError: the room is closing.
        """
        async with self._lock:
            return await self._ensure_locked()

    async def _ensure_locked(self) -> RoomTables:
        if self._closed:
            raise RuntimeError(f"room {self.name} is closing")
        if self.tables is None:
            self.tables = RoomTables()
        if not self._has_table:
            await self._build_locked([])
        return self.tables

    async def _build_locked(self, closers: list[Callable[[], None]]) -> None:
        """(Re)build the table from the room's current state (the lock is held)."""
        tables = self.tables
        assert tables is not None
        state, seq = self._current()
        for sub in self.subs.values():
            sub.view = None  # RoomTables.close deletes the old views
        self._building = True
        try:
            await self._run(rebuild, tables, self.name, state, closers)
        except BaseException as e:
            self._fail_subs(f"the room's Perspective table could not be built: {e}")
            raise
        finally:
            self._building = False
        self.seq = seq
        self.builds += 1
        # Older deltas are in the state; the pump applies the newer ones.
        self._incoming = [d for d in self._incoming if d.seq_to > seq]

    # ---------------------------------------------------------------- ticks

    def on_delta(self, delta: Delta) -> None:
        """Follow one tick's delta (call after the room published the state it leads to)."""
        if delta.schema is not None:
            self._schema_changed(delta)
        if self.tables is None or self._closed:
            return
        if self._building:
            self.caught_up += 1
        self._incoming.append(delta)
        self._kick()

    def _kick(self) -> None:
        """Start the pump that applies queued deltas, unless it is running."""
        if self._pump is None and self._incoming and not self._closed:
            self._pump = asyncio.get_running_loop().create_task(self._run_pump(), name=f"views:{self.name}")

    async def _run_pump(self) -> None:
        try:
            while self._incoming and not self._closed:
                async with self._lock:
                    await self._pump_once()
        except Exception:
            log.exception("views of room %s failed to follow its deltas", self.name)
        finally:
            self._pump = None
            self._kick()  # after a failure, deltas that came in meanwhile still get applied

    async def _pump_once(self) -> None:
        batch = [d for d in self._incoming if d.seq_to > self.seq]
        self._incoming = []
        if not batch or not self._has_table:
            return
        if any(d.schema is not None for d in batch):
            # Dashboards hold views on the old table (and a table with views cannot
            # be deleted): their sessions are closed first, and they reconnect.
            reason = f"the schema changed at seq {batch[-1].seq_to}; reconnect to see the new columns"
            closers = self._watchers.reset_all(reason)
            if not (self.subs or self._watchers):
                await self._run(drop, self.tables, self.name, closers)  # rebuilt on next need
                return
            await self._build_locked(closers)
            await self._reopen_locked()
            return
        subs = [s for s in self.subs.values() if s.view is not None]
        assert self.tables is not None
        out = await self._run(apply_and_read, self.tables, self.name, batch, subs, self._zones)
        self.seq = batch[-1].seq_to
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
        except Exception as e:
            if self.subs.get(key) is sub:
                del self.subs[key]
            code = ErrorCode.BAD_DTYPE if isinstance(e, ValueError) else ErrorCode.INTERNAL
            self._reply(session, Error(code, f"cannot open a view on room {self.name}: {e}", re=msg.id))

    async def _subscribe_locked(self, sub: Subscription, msg: Subscribe) -> None:
        tables = await self._ensure_locked()
        if self.subs.get(sub.key) is not sub or sub.session.closed:
            self._detach(sub)
            return  # gone meanwhile (a session's own requests run in order: never unsubscribed)
        try:
            if sub.closing is not None:  # a schema change made the config impossible
                raise ViewConfigError(
                    ErrorCode.NO_SUCH_COLUMN, f"cannot open the view: {sub.closing}", field="config"
                )
            check_columns(sub.config, ["_rid", *self._columns.values()])
            result = await self._open_locked(tables, sub)
        except ViewConfigError as e:
            self._detach(sub)
            self._reply(sub.session, Error(e.code, e.message, e.details, re=msg.id))
            return
        if result is not None:
            self._deliver(sub, result, "snapshot", re=msg.id)

    async def _open_locked(self, tables: RoomTables, sub: Subscription) -> tuple[pa.Table, int] | None:
        """Open ``sub``'s view and read it; None (and the view deleted) if ``sub`` went meanwhile."""
        view, result = await self._run(open_and_read, tables, self.name, sub, self._zones)
        if self.subs.get(sub.key) is not sub:
            await self._run(view.delete)
            return None
        sub.view = view
        return result

    async def unsubscribe(self, session: Session, msg: Unsubscribe) -> None:
        sub = self.subs.get((session.client, msg.view))
        if sub is None or sub.session is not session:
            self._reply(session, no_such_view(msg))
            return
        await self._forget(sub)
        self._reply(session, View(msg.view, "closed", self.seq, reason="unsubscribed", re=msg.id))

    def drop_session(self, session: Session) -> None:
        """Delete every view of a session that left."""
        for sub in [s for s in self.subs.values() if s.session is session]:
            self.spawn(self._forget(sub))

    def resend(self, session: Session) -> None:
        """Queue a fresh snapshot of each of ``session``'s views (after a resync dropped updates)."""
        subs = [s for s in self.subs.values() if s.session is session and s.view is not None]
        if subs:
            self.spawn(self._resend(subs))

    async def _resend(self, subs: list[Subscription]) -> None:
        async with self._lock:
            live = [s for s in subs if s.view is not None and self.subs.get(s.key) is s]
            out = await self._run(read_all, live, self._zones)
            for sub, result in zip(live, out, strict=True):
                sub.last = None
                self._deliver(sub, result, "snapshot")

    async def _reopen_locked(self) -> None:
        """After a rebuild: reopen every subscription's view and send it a snapshot."""
        assert self.tables is not None
        for sub in list(self.subs.values()):
            if sub.view is not None or sub.session.closed or not sub.sent:
                continue  # a first subscribe still waiting for the lock opens its own view
            result = None
            if sub.closing is None:
                try:
                    check_columns(sub.config, ["_rid", *self._columns.values()])
                    result = await self._open_locked(self.tables, sub)
                except ViewConfigError as e:
                    sub.closing = e.message
            if self.subs.get(sub.key) is not sub:
                continue  # unsubscribed or dropped meanwhile
            if sub.closing is not None:
                self._close_sub(sub, sub.closing)
            elif result is not None:
                self._deliver(sub, result, "snapshot")

    def _deliver(
        self, sub: Subscription, result: tuple[pa.Table, int] | Exception, kind: str, re: Any = None
    ) -> None:
        if self.subs.get(sub.key) is not sub:
            return  # closed meanwhile: nothing about a view follows its ``closed``
        if isinstance(result, Exception):
            log.error("reading view %s of %s failed: %r", sub.name, sub.session.client, result)
            self._close_sub(sub, f"the view could not be read ({type(result).__name__}: {result})")
            return
        table, rows = result
        msg = sub.message(kind, self.seq, table, rows, re)
        if msg is not None:
            self._send(sub.session, msg, kind == "update")

    def _close_sub(self, sub: Subscription, reason: str) -> None:
        self._detach(sub)  # at once, so no update can follow the ``closed``
        self.spawn(self._forget(sub))
        self._reply(sub.session, View(sub.name, "closed", self.seq, reason=reason))

    def _detach(self, sub: Subscription) -> None:
        if self.subs.get(sub.key) is sub:
            del self.subs[sub.key]

    async def _forget(self, sub: Subscription) -> None:
        self._detach(sub)
        view, sub.view = sub.view, None
        if view is not None:
            await self.call(view.delete)

    def _fail_subs(self, reason: str) -> None:
        for sub in list(self.subs.values()):
            if sub.sent:
                self._close_sub(sub, reason)

    def _reply(self, session: Session, msg: Any) -> None:
        self._send(session, msg, False)

    # ---------------------------------------------------------------- dashboards

    @property
    def watchers(self) -> int:
        """Dashboards attached (they keep the room loaded)."""
        return len(self._watchers)

    async def attach(self, reset: Reset) -> RoomTables:
        """Pin the room for a dashboard and return its tables (built if needed).

        Before the table is rebuilt after a schema change or closed,
        ``reset(reason)`` is called on the loop (see :mod:`.watchers` for what
        it must do). Every other Perspective call for the dashboard goes
        through :meth:`call`. Call :meth:`detach` with the same ``reset`` once
        the dashboard is gone.
        """
        self._watchers.add(reset)
        try:
            return await self.ensure()
        except BaseException:
            self.detach(reset)
            raise

    def detach(self, reset: Reset) -> None:
        self._watchers.remove(reset)

    # ---------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Delete every view and the table (the room is unloading), then end the views' tasks.

        The pump and other jobs wait for the lock that this holds while the
        table goes, so they are cancelled after, and awaited: none outlives
        the views.
        """
        self._closed = True
        closers = self._watchers.reset_all("the room is unloading")
        async with self._lock:
            views = [s.view for s in self.subs.values() if s.view is not None]
            self.subs.clear()
            if self.tables is not None:
                await self._run(close_all, self.tables, views, closers)
        tasks = [t for t in (self._pump, *self._tasks) if t is not None and t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
