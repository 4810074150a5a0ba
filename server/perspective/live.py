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
``columns``) and get a fresh snapshot, or a ``closed`` view naming the
reason when they cannot be kept.

Everything here runs on the event loop thread, except the table build.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from protocol import Delta, Error, ErrorCode, Subscribe, Unsubscribe, View, encode

from ..ops.state import State
from .config import ViewConfigError, check_columns, for_perspective, remap
from .payload import read_view
from .tables import RoomTables, RoomView, release_memory

if TYPE_CHECKING:
    from ..rooms.session import Session

__all__ = ["RoomViews", "Subscription"]

log = logging.getLogger("coframe.views")


@dataclass(eq=False, slots=True)
class Subscription:
    """One ``subscribe`` of one session: its config, viewport and Perspective view."""

    session: Session
    name: str
    config: dict[str, Any]
    viewport: tuple[int, int] | None
    view: RoomView | None = None
    last: pa.Table | None = None  # the content last sent, to skip unchanged updates
    closing: str | None = None  # why the view cannot survive the last schema change
    sent: int = field(default=0)


class RoomViews:
    """Perspective table, subscriptions and dashboard watchers of one room."""

    def __init__(
        self,
        name: str,
        current: Callable[[], tuple[State, int]],
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.name = name  # also the Perspective table's name, e.g. "sales/main"
        self._current = current  # the room's published (state, seq)
        self._on_idle = on_idle
        self.tables: RoomTables | None = None  # one Perspective Server per room, made on first need
        self.seq = 0  # the room seq the table reflects
        self._resets: list[Callable[[str], None]] = []  # one per attached dashboard
        self.subs: dict[tuple[str, str], Subscription] = {}
        self.builds = 0  # tables built so far (first load and rebuilds)
        self.caught_up = 0  # deltas queued during builds, then applied
        self._build: asyncio.Task[None] | None = None
        self._pending: list[Delta] = []
        self._restart = False
        self._closed = False
        state, _ = current()
        self._columns = {c["id"]: c["name"] for c in state.catalog.to_wire()}
        self._zones = _zones(state.catalog.to_wire())

    # ---------------------------------------------------------------- state

    @property
    def ready(self) -> bool:
        """True when the table exists and is in step with the room."""
        return self.tables is not None and self._build is None and self.name in self.tables._tables

    async def ensure(self) -> RoomTables:
        """The room's tables, once its table is built and in step.

        Raises:
            ValueError: a column has no Perspective type (named in the message).
            RuntimeError: the room is closing.
        """
        while not self.ready:
            if self._closed:
                raise RuntimeError(f"room {self.name} is closing")
            if self._build is None:
                self._start_build()
            assert self._build is not None
            await asyncio.shield(self._build)
        assert self.tables is not None
        return self.tables

    def _start_build(self) -> None:
        if self.tables is None:
            self.tables = RoomTables()
        self._build = asyncio.get_running_loop().create_task(self._run_build(), name=f"views:{self.name}")

    async def _run_build(self) -> None:
        tables = self.tables
        assert tables is not None
        try:
            while True:
                state, seq = self._current()
                self._pending, self._restart = [], False
                await asyncio.to_thread(_open_and_trim, tables, self.name, state)
                self.builds += 1
                if self._closed or not self._restart:
                    break
                tables.close(self.name)  # a schema change came in meanwhile: build again from it
            if self._closed:
                tables.close(self.name)
                return
            self.seq = seq
            for delta in self._pending:
                tables.apply_delta(self.name, delta)
                self.seq = delta.seq_to
            self.caught_up += len(self._pending)
            self._pending = []
        except BaseException as e:
            tables.close(self.name)
            self._fail_subs(f"the room's Perspective table could not be built: {e}")
            raise
        finally:
            self._build = None
        self._resubscribe()

    # ---------------------------------------------------------------- ticks

    def on_delta(self, delta: Delta) -> None:
        """Follow one tick's delta (call after the room published the state it leads to)."""
        if delta.schema is not None:
            self._schema_changed(delta)
        if self.tables is None or self._closed:
            return
        if self._build is not None:
            if delta.schema is not None:
                self._restart = True
            else:
                self._pending.append(delta)
            return
        if self.name not in self.tables._tables:
            return
        if delta.schema is not None:
            # Dashboards hold views on the old table (and a table with views cannot
            # be deleted): they are told to reconnect, which deletes their views.
            for reset in list(self._resets):
                reset(f"the schema changed at seq {delta.seq_to}; reconnect to see the new columns")
            self._drop_views()
            self.tables.close(self.name)
            if self.subs or self.watchers:
                self._start_build()
            return
        self.tables.apply_delta(self.name, delta)
        self.seq = delta.seq_to
        for sub in self.subs.values():
            self._send(sub, "update")

    def _schema_changed(self, delta: Delta) -> None:
        assert delta.schema is not None
        new = {c["id"]: c["name"] for c in delta.schema}
        renamed = {old: new[i] for i, old in self._columns.items() if i in new and new[i] != old}
        dropped = {old for i, old in self._columns.items() if i not in new}
        self._columns = new
        self._zones = _zones(delta.schema)
        for sub in self.subs.values():
            if sub.closing is None:
                sub.config, why = remap(sub.config, renamed, dropped)
                if why is not None:
                    sub.closing = f"{why} at seq {delta.seq_to}"

    # ---------------------------------------------------------------- subscriptions

    async def subscribe(self, session: Session, msg: Subscribe) -> None:
        """Open a view for ``session`` and reply with its snapshot (or an ``error``)."""
        key = (session.client, msg.view)
        if key in self.subs:
            self._reply(
                session,
                Error(
                    ErrorCode.VIEW_EXISTS,
                    f"view '{msg.view}' is already open here; unsubscribe it or use another name",
                    {"field": "view"},
                    re=msg.id,
                ),
            )
            return
        sub = Subscription(session, msg.view, msg.config, msg.viewport)
        self.subs[key] = sub  # reserved while the table builds
        try:
            await self.ensure()
        except Exception as e:
            if self.subs.get(key) is sub:
                del self.subs[key]
            code = ErrorCode.BAD_DTYPE if isinstance(e, ValueError) else ErrorCode.INTERNAL
            self._reply(session, Error(code, f"cannot open a view on room {self.name}: {e}", re=msg.id))
            return
        if self.subs.get(key) is not sub or session.closed:
            return  # unsubscribed or gone meanwhile
        if sub.closing is not None:  # a schema change during the build made the config impossible
            del self.subs[key]
            self._reply(
                session,
                Error(
                    ErrorCode.NO_SUCH_COLUMN,
                    f"cannot open the view: {sub.closing}",
                    {"field": "config"},
                    re=msg.id,
                ),
            )
            return
        if sub.view is None:
            try:
                self._open_view(sub)
            except ViewConfigError as e:
                del self.subs[key]
                self._reply(session, Error(e.code, e.message, e.details, re=msg.id))
                return
        self._send(sub, "snapshot", re=msg.id)

    def unsubscribe(self, session: Session, msg: Unsubscribe) -> None:
        sub = self.subs.get((session.client, msg.view))
        if sub is None or sub.session is not session:
            self._reply(
                session,
                Error(
                    ErrorCode.NO_SUCH_VIEW,
                    f"no view '{msg.view}' is open on this connection",
                    {"field": "view"},
                    re=msg.id,
                ),
            )
            return
        self._forget(sub)
        self._reply(session, View(msg.view, "closed", self.seq, reason="unsubscribed", re=msg.id))

    def drop_session(self, session: Session) -> None:
        """Delete every view of a session that left."""
        for sub in [s for s in self.subs.values() if s.session is session]:
            self._forget(sub)

    def resend(self, session: Session) -> None:
        """Queue a fresh snapshot of each of ``session``'s views (after a resync dropped updates)."""
        for sub in self.subs.values():
            if sub.session is session and sub.view is not None:
                sub.last = None
                self._send(sub, "snapshot")

    def _open_view(self, sub: Subscription) -> None:
        assert self.tables is not None
        columns = [c for c in self.tables.table(self.name).columns()]
        check_columns(sub.config, columns)
        try:
            sub.view = self.tables.view(self.name, **for_perspective(sub.config))
        except Exception as e:  # PyPerspectiveError, or a serde error for a bad value
            text = str(e).removeprefix("Abort(): ").strip()
            raise ViewConfigError(
                ErrorCode.BAD_VIEW, f"Perspective rejected the view config: {text}", field="config"
            ) from None
        sub.last = None

    def _resubscribe(self) -> None:
        """After a (re)build: reopen every subscription's view and send it a snapshot."""
        for sub in list(self.subs.values()):
            if sub.view is not None or sub.session.closed or not sub.sent:
                continue  # a first subscribe still waiting in subscribe() opens its own view
            if sub.closing is None:
                try:
                    self._open_view(sub)
                except ViewConfigError as e:
                    sub.closing = e.message
            if sub.closing is not None:
                self._close_sub(sub, sub.closing)
            else:
                self._send(sub, "snapshot")

    def _send(self, sub: Subscription, kind: str, re: Any = None) -> None:
        if sub.view is None or sub.view.closed:
            return
        try:
            table, rows = read_view(sub.view.handle, sub.config, sub.viewport, self._zones)
        except Exception as e:
            log.exception("reading view %s of %s failed", sub.name, sub.session.client)
            self._close_sub(sub, f"the view could not be read ({type(e).__name__}: {e})")
            return
        if kind == "update" and sub.last is not None and table.equals(sub.last):
            return
        sub.last = table
        sub.sent += 1
        msg = View(sub.name, kind, self.seq, table, rows, re=re)
        sub.session.push(encode(msg, binary=sub.session.binary), droppable=kind == "update")

    def _close_sub(self, sub: Subscription, reason: str) -> None:
        self._forget(sub)
        self._reply(sub.session, View(sub.name, "closed", self.seq, reason=reason))

    def _forget(self, sub: Subscription) -> None:
        key = (sub.session.client, sub.name)
        if self.subs.get(key) is sub:
            del self.subs[key]
        if sub.view is not None:
            sub.view.delete()
            sub.view = None

    def _fail_subs(self, reason: str) -> None:
        for sub in list(self.subs.values()):
            if sub.sent:
                self._close_sub(sub, reason)

    def _drop_views(self) -> None:
        for sub in self.subs.values():
            sub.view = None  # RoomTables.close deletes the Perspective views

    def _reply(self, session: Session, msg: Any) -> None:
        session.push(encode(msg, binary=session.binary))

    # ---------------------------------------------------------------- dashboards

    @property
    def watchers(self) -> int:
        """Dashboards attached (they keep the room loaded)."""
        return len(self._resets)

    async def attach(self, reset: Callable[[str], None]) -> RoomTables:
        """Pin the room for a dashboard and return its tables (built if needed).

        ``reset(reason)`` is called, synchronously, before the table is
        rebuilt after a schema change: it must close the dashboard's
        Perspective session then and there (deleting its views), and tell
        the browser to reconnect. Call :meth:`detach` with the same
        ``reset`` exactly once when the dashboard disconnects.
        """
        self._resets.append(reset)
        try:
            return await self.ensure()
        except BaseException:
            self.detach(reset)
            raise

    def detach(self, reset: Callable[[str], None]) -> None:
        if reset in self._resets:
            self._resets.remove(reset)
        if not self._resets and self._on_idle is not None:
            self._on_idle()

    # ---------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Delete every view and the table (the room is unloading)."""
        self._closed = True
        if self._build is not None:
            try:
                await asyncio.shield(self._build)
            except BaseException:
                pass
        for sub in list(self.subs.values()):
            self._forget(sub)
        if self.tables is not None:
            self.tables.close_all()
            release_memory()


def _open_and_trim(tables: RoomTables, name: str, state: State) -> None:
    tables.open(name, state)
    release_memory()


def _zones(schema: Any) -> dict[str, str]:
    """Zoned timestamp columns of a wire schema: name -> zone (dtype ``Datetime[Europe/Paris]``)."""
    return {c["name"]: c["dtype"][9:-1] for c in schema if c["dtype"].startswith("Datetime[")}
