"""The live views of one room: its table in the views process, view subscriptions and dashboards.

Each :class:`~server.rooms.room.Room` has one :class:`RoomViews`. Perspective
itself runs in the node's views process (:mod:`.process`, :mod:`.host`);
this is the room's side of it. The room's table is built there the first
time something needs it (a ``subscribe``, or a dashboard through
:meth:`RoomViews.attach`): about 4 s at 1M rows, and a room nobody watches
should not pay for it. It is dropped :attr:`Budgets.ttl` seconds after the
last view and dashboard left, and when the room unloads.

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
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from protocol import Delta, Error, ErrorCode, Subscribe, Unsubscribe, View

from ..ops.state import State
from . import jobs
from .config import ViewConfigError, check_columns
from .jobs import Budgets, vkey_of, zones_of
from .process import ViewsFailed, ViewsLost, ViewsProcess
from .sessions import Dashboards
from .subscription import Subscription, no_such_view, refusal, view_exists
from .upkeep import Upkeep
from .watchers import Watchers

if TYPE_CHECKING:
    from ..rooms.session import Session

__all__ = ["RoomViews", "Subscription", "Budgets"]

log = logging.getLogger("coframe.views")


class RoomViews(Dashboards, Upkeep):
    """The room's table in the views process, its subscriptions and the dashboards watching it."""

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
        self.name = name  # also the Perspective table's name, e.g. "sales/main"
        self.key = name  # the table's key in the views process (one audience per room today)
        self.process = process
        self.budgets = budgets or Budgets()
        self.ttl = ttl
        self._send = send  # the room's outbound choke point: (session, message, droppable)
        self._current = current  # the room's published (state, seq)
        self.built: int | None = None  # the process generation the table was built in
        self.seq = 0  # the room seq the table reflects
        self.subs: dict[tuple[str, str], Subscription] = {}
        self.builds = 0  # tables built so far (first load, rebuilds, after a lost process)
        self.caught_up = 0  # deltas that arrived while a table was being built
        self._watchers = Watchers(on_idle)  # the dashboards attached
        self._sessions: dict[int, Callable[..., Any]] = {}  # dashboard sessions in the process: sid -> reset
        self._lock = asyncio.Lock()  # one request at a time for this room
        self._incoming: list[Delta] = []
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._building = False
        self._closed = False
        self._expiry: asyncio.TimerHandle | None = None
        self._unlisten = process.on_lost(self._lost)
        state, _ = current()
        self._columns = {c["id"]: c["name"] for c in state.catalog.to_wire()}
        self._zones = zones_of(state.catalog.to_wire())

    # ---------------------------------------------------------------- jobs

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` as a task these views own: :meth:`close` cancels it and waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def barrier(self) -> None:
        """Return once every request of this room queued before this call is done."""
        async with self._lock:
            pass

    @property
    def has_table(self) -> bool:
        """The table exists in the running views process."""
        return (
            self.built is not None and self.built == self.process.generation and self.process.pid is not None
        )

    async def ensure(self) -> None:
        """Build the room's table if it is not built.

        Raises:
            ValueError: a column has no Perspective type (named in the message).
            RuntimeError: the room is closing.
        """
        async with self._lock:
            await self._ensure_locked()

    async def _ensure_locked(self) -> None:
        if self._closed:
            raise RuntimeError(f"room {self.name} is closing")
        self._cancel_expiry()
        if not self.has_table:
            await self._build_locked()

    async def _build_locked(self) -> None:
        """(Re)build the table from the room's current state (the lock is held)."""
        state, seq = self._current()
        for sub in self.subs.values():
            sub.vkey = None  # the old table's views go with it
        self._building = True
        try:
            gen = await self.process.start()
            await jobs.build(self.process, self.key, self.name, state, None, self.budgets)
        except ViewsFailed as e:
            self._fail_subs(f"the room's Perspective table could not be built: {e.message}")
            raise ValueError(e.message) from None
        except BaseException as e:
            self._fail_subs(f"the room's Perspective table could not be built: {e}")
            raise
        finally:
            self._building = False
        self.built = gen
        self.seq = seq
        self.builds += 1
        # Older deltas are in the state; the pump applies the newer ones.
        self._incoming = [d for d in self._incoming if d.seq_to > seq]

    # ---------------------------------------------------------------- ticks

    def on_delta(self, delta: Delta) -> None:
        """Follow one tick's delta (call after the room published the state it leads to)."""
        if delta.schema is not None:
            self._schema_changed(delta)
        if (self.built is None and not self._building) or self._closed:
            return  # no table, none being built: a build starts from the state then
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
        except ViewsLost:
            pass  # _lost rebuilds
        except Exception:
            log.exception("views of room %s failed to follow its deltas", self.name)
        finally:
            self._pump = None
            self._kick()  # after a failure, deltas that came in meanwhile still get applied

    async def _pump_once(self) -> None:
        batch = [d for d in self._incoming if d.seq_to > self.seq]
        self._incoming = []
        if not batch or not self.has_table:
            return
        if any(d.schema is not None for d in batch):
            # Dashboards hold views on the old table: they are told to reconnect.
            reason = f"the schema changed at seq {batch[-1].seq_to}; reconnect to see the new columns"
            self._watchers.reset_all(reason)
            if not (self.subs or self._watchers):
                await jobs.drop(self.process, self.key, self.budgets)  # rebuilt on next need
                self.built = None
                return
            await self._build_locked()
            await self._reopen_locked()
            return
        subs = [s for s in self.subs.values() if s.vkey is not None]
        out = await jobs.apply(
            self.process, self.key, self.name, batch, subs, self._zones, None, self.budgets
        )
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
        except ViewsLost as e:
            self._detach(sub)
            code = ErrorCode.TOO_EXPENSIVE if e.overran else ErrorCode.INTERNAL
            text = self._overran_reason() if e.overran else f"the views process restarted ({e.reason})"
            self._reply(session, Error(code, f"cannot open view '{msg.view}': {text}", re=msg.id))
        except Exception as e:
            self._detach(sub)
            code = ErrorCode.BAD_DTYPE if isinstance(e, ValueError) else ErrorCode.INTERNAL
            self._reply(session, Error(code, f"cannot open a view on room {self.name}: {e}", re=msg.id))

    async def _subscribe_locked(self, sub: Subscription, msg: Subscribe) -> None:
        await self._ensure_locked()
        if self.subs.get(sub.key) is not sub or sub.session.closed:
            self._detach(sub)
            return  # gone meanwhile (a session's own requests run in order: never unsubscribed)
        try:
            if sub.closing is not None:  # a schema change made the config impossible
                raise ViewConfigError(
                    ErrorCode.NO_SUCH_COLUMN, f"cannot open the view: {sub.closing}", field="config"
                )
            check_columns(sub.config, ["_rid", *self._columns.values()])
            result = await self._open_locked(sub)
        except ViewConfigError as e:
            self._detach(sub)
            self._reply(sub.session, Error(e.code, e.message, e.details, re=msg.id))
            return
        if result is not None:
            self._deliver(sub, result, "snapshot", re=msg.id)

    async def _open_locked(self, sub: Subscription) -> tuple[pa.Table, int] | None:
        """Open ``sub``'s view and read it; None (and the view released) if ``sub`` went meanwhile."""
        vkey = vkey_of(sub.config)
        sub.vkey = vkey
        try:
            result = await jobs.open_view(self.process, self.key, self.name, sub, self._zones, self.budgets)
        except ViewsFailed as e:
            sub.vkey = None
            code = ErrorCode.BAD_VIEW if e.code == "bad_view" else ErrorCode.INTERNAL
            raise ViewConfigError(code, e.message, field="config") from None
        except BaseException:
            sub.vkey = None
            raise
        if self.subs.get(sub.key) is not sub:
            sub.vkey = None
            await jobs.unref(self.process, self.key, vkey, self.budgets)
            return None
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
        subs = [s for s in self.subs.values() if s.session is session and s.vkey is not None]
        if subs:
            self.spawn(self._resend(subs))

    async def _resend(self, subs: list[Subscription]) -> None:
        try:
            async with self._lock:
                live = [s for s in subs if s.vkey is not None and self.subs.get(s.key) is s]
                if not live or not self.has_table:
                    return
                out = await jobs.read(self.process, self.key, self.name, live, self._zones, self.budgets)
                for sub, result in zip(live, out, strict=True):
                    sub.last = None
                    self._deliver(sub, result, "snapshot")
        except ViewsLost:
            pass  # _lost sends snapshots after the rebuild

    async def _reopen_locked(self) -> None:
        """After a rebuild: reopen every subscription's view and send it a snapshot."""
        for sub in list(self.subs.values()):
            if sub.vkey is not None or sub.session.closed or not sub.sent:
                continue  # a first subscribe still waiting for the lock opens its own view
            result = None
            if sub.closing is None:
                try:
                    check_columns(sub.config, ["_rid", *self._columns.values()])
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
        self._maybe_expire()

    async def _forget(self, sub: Subscription) -> None:
        self._detach(sub)
        vkey, sub.vkey = sub.vkey, None
        if vkey is not None and self.has_table:
            try:
                async with self._lock:
                    if self.has_table:
                        await jobs.unref(self.process, self.key, vkey, self.budgets)
            except ViewsLost:
                pass

    def _fail_subs(self, reason: str) -> None:
        for sub in list(self.subs.values()):
            if sub.sent:
                self._close_sub(sub, reason)

    def _reply(self, session: Session, msg: Any) -> None:
        self._send(session, msg, False)

    # ---------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Drop the table (the room is unloading), then end the views' tasks."""
        self._closed = True
        self._cancel_expiry()
        self._unlisten()
        self._watchers.reset_all("the room is unloading")
        async with self._lock:
            self.subs.clear()
            if self.has_table:
                try:
                    await jobs.drop(self.process, self.key, self.budgets)
                except (ViewsLost, RuntimeError):
                    pass
            self.built = None
        tasks = [t for t in (self._pump, *self._tasks) if t is not None and t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
