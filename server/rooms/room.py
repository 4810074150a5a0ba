"""A Room: the one owner of a live frame (docs/architecture.md "Rooms").

Everything that changes the frame reaches the room through its queue. One
task runs the tick loop: drain the queue, apply each message as an atomic
batch (:mod:`server.rooms.tick` over :mod:`server.rooms.core`), make the
batch durable (:mod:`server.rooms.durability`), send the acks, then deliver
**one** delta for the tick through the outbound choke point
(:mod:`server.rooms.outbound`), which encodes it once per audience.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from protocol import (
    CloseCode,
    Commit,
    Committed,
    Error,
    ErrorCode,
    Meta,
    OpBatch,
    Presence,
    Query,
    Subscribe,
    Undo,
    Unsubscribe,
)

from ..ops import ExprCost
from ..ops.state import State
from ..storage.audit_types import AuditEvent
from .config import RoomConfig
from .core import RoomCore
from .deltas import DeltaLog, EncodedDelta
from .durability import Durability
from .joins import Joins
from .lifecycle import ROOM, next_state
from .listeners import MakeViews, NoViews, RoomListener
from .metadoc import MetaDoc
from .outbound import DeltaOut, Message, Outbound
from .policy import EVERYONE
from .queries import answer
from .requests import Requests
from .session import Session
from .sharing import Sharing
from .tick import Batch, Gate, apply_batches

WAKE = Batch("wake", "", None, None)  # queued to make the loop look at its autocommit timer again

if TYPE_CHECKING:
    from ..storage.service import BranchHandle, Storage

__all__ = ["Room", "RoomConfig"]

log = logging.getLogger("coframe.room")


class Room(Joins):
    """One open (dataset, branch), or a read-only room at a past version."""

    def __init__(
        self,
        dataset: str,
        branch: str,
        state: State,
        seq: int = 0,
        *,
        config: RoomConfig | None = None,
        read_only: bool = False,
        on_empty: Callable[[Room], None] | None = None,
        durable: BranchHandle | None = None,
        storage: Storage | None = None,
        core: RoomCore | None = None,
        views: MakeViews | None = None,
        exprs: ExprCost | None = None,
    ) -> None:
        self.dataset = dataset
        self.branch = branch
        self.name = f"{dataset}/{branch}"
        self.config = config or RoomConfig()
        self.read_only = read_only
        self.exprs = exprs or ExprCost(max_literal=self.config.expr_max_literal)  # registry: worker processes
        # The dataset's versions, for queries: a branch room's own, or a time-travel room's.
        self.storage = durable.storage if durable is not None else storage
        self.log_ref = durable.branch if durable is not None else branch.removeprefix("@")
        self.core = core or RoomCore(state, seq)
        state, seq = self.core.state, self.core.seq
        self.meta = MetaDoc(state.catalog, max_bytes=self.config.max_meta_doc_bytes)
        self.shared = Sharing(
            self.meta, reply=self.reply, broadcast=self._broadcast, resync=self._meta_resync
        )
        self.log = DeltaLog(max_entries=self.config.delta_log_entries, max_bytes=self.config.delta_log_bytes)
        self.sessions: dict[str, Session] = {}
        self.outbound = Outbound()
        # A restricted sender's ack is read against the outbound's state: a room no welcome or
        # delta went through yet (only a dashboard's editor in it) must still answer its first edit.
        self.outbound.state = state
        self.lifecycle = "loading"
        self.ticks = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._published: tuple[State, int] = (state, seq)
        self._task: asyncio.Task[None] | None = None
        self._tick_done = asyncio.Condition()
        self._on_empty = on_empty
        self.durability = Durability(
            self.name,
            durable,
            autocommit_ops=self.config.autocommit_ops,
            autocommit_seconds=self.config.autocommit_seconds,
            autocommit_share=self.config.autocommit_share,
            announce=self._broadcast,
            written=lambda: self._queue.put_nowait(WAKE),  # the loop re-arms its autocommit timer
        )
        self._tasks: set[asyncio.Task[None]] = set()  # queries and view requests in flight
        self.views: RoomListener = (
            views(self.name, lambda: self._published, self._views_idle, self._send)
            if views is not None
            else NoViews(self.name, self._send)
        )
        # Queries in flight and view requests in order, per session, with their limits.
        self.requests = Requests(
            self.config, self.views, lambda q, audience: answer(self, q, audience), self.reply, self._spawn
        )

    # ------------------------------------------------------------ lifecycle

    def _move(self, event: str) -> None:
        self.lifecycle = next_state(ROOM, self.lifecycle, event, machine=f"room {self.name}")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"room:{self.name}")
        self._move("loaded")

    async def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "room unloading") -> State:
        """Stop the loop after the queue drains, commit, close every session; return the final state."""
        if self.lifecycle == "live":
            self._move("unload")
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # Commit first: a query or view request still in flight (below) may
        # wait on a worker thread for long, and must not hold the commit back.
        if self.durability.handle is not None and self.durability.uncommitted and not self.broken:
            await self.durability.autocommit(self.durability.prepare(self.core), "autocommit (room unload)")
        # Queries and view requests in flight finish next (a Perspective call
        # in a worker thread cannot be cancelled halfway); view requests still waiting go.
        self.requests.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.views.close()
        for s in list(self.sessions.values()):
            s.abort(code, reason)
            await s.stop()
        self.sessions.clear()
        if self.lifecycle == "unloading":
            self._move("unloaded")
        return self.core.state

    @property
    def state(self) -> State:
        return self._published[0]

    @property
    def seq(self) -> int:
        return self._published[1]

    @property
    def durable(self) -> BranchHandle | None:
        return self.durability.handle

    @property
    def broken(self) -> str | None:
        return self.durability.broken

    async def leave(self, session: Session) -> None:
        self.requests.leave(session)
        self.views.drop_session(session)
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]
            self.shared.left(session)
        await session.stop()
        if not self.sessions:  # no join can reuse a cached snapshot now: let it go
            self.outbound.forget()
        self._views_idle()

    def _views_idle(self) -> None:
        """No session left (or the last dashboard detached): the room may unload when idle."""
        if not self.sessions and not self.views.watchers and self._on_empty is not None:
            self._on_empty(self)

    # ------------------------------------------------------------ input

    def submit(self, session: Session, msg: Any, gate: Gate | None = None) -> None:
        """Take one decoded client message (after hello); ``gate`` checks what an undo or redo pops."""
        if isinstance(msg, Presence):
            self.shared.presence(session, msg)
        elif isinstance(msg, Meta):
            if session.audience != EVERYONE:
                message = (
                    "metadata sync is not available under a row or column policy: your welcome"
                    " carries the metadata you may see"
                )
                self.reply(session, Error(ErrorCode.FORBIDDEN, message, re=msg.id))
                return
            self.shared.sync(session, msg)
        elif isinstance(msg, Query):
            self.requests.query(session, msg)
        elif isinstance(msg, (Subscribe, Unsubscribe)):
            self.requests.view(session, msg)
        elif isinstance(msg, (Commit, OpBatch, Undo)):
            refusal = self._refusal(msg)
            if refusal is not None:
                self.reply(session, Error(ErrorCode.READ_ONLY, refusal, re=msg.id))
                return
            if not isinstance(msg, Commit):
                session.base_seq = max(session.base_seq, msg.base_seq)
            self._queue.put_nowait(Batch(msg.type, session.client, msg, session, gate))
        else:  # pragma: no cover - the endpoint handles ping and hello
            raise TypeError(type(msg).__name__)

    def _refusal(self, msg: Any) -> str | None:
        """Why this room refuses a write (None: it accepts it)."""
        if self.read_only:
            what = "commit" if isinstance(msg, Commit) else "edit"
            version = self.branch.removeprefix("@")
            return (
                f"room {self.name} is a read-only view of a past version; to {what} from it, create a"
                f" branch from that version (POST /api/datasets/{self.dataset}/branches with"
                f' {{"name": NAME, "from": "{version}"}}, or coframe branch {self.dataset} NAME'
                f" --from {version}) and join that branch"
            )
        return None

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ output

    def reply(self, session: Session, msg: Any) -> None:
        """Send ``msg`` to one session (never dropped)."""
        self.outbound.deliver(Message(msg), [session])

    def _send(self, session: Session, msg: Any, droppable: bool) -> None:
        self.outbound.deliver(Message(msg, droppable=droppable), [session])

    def _broadcast(self, msg: Any, *, skip: Session | None = None) -> None:
        """Send ``msg`` to every session (but ``skip``); a slow one may lose it and is resynced."""
        self.outbound.deliver(
            Message(msg, droppable=True), [s for s in self.sessions.values() if s is not skip]
        )

    # ------------------------------------------------------------ tick loop

    async def _run(self) -> None:
        while True:
            if self._queue.empty():
                try:  # no task per tick: asyncio.timeout only arms a timer (none when nothing is pending)
                    async with asyncio.timeout(self.durability.wait()):
                        first = await self._queue.get()
                except TimeoutError:
                    ops = self.durability.uncommitted >= self.durability.autocommit_ops
                    self._autocommit("autocommit (ops)" if ops else "autocommit (time)")
                    continue
            else:
                first = self._queue.get_nowait()
            items = [first]
            while len(items) < self.config.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._tick(items)
            except Exception:  # a bug must not kill the room's loop
                log.exception("tick failed in room %s", self.name)
            finally:
                for _ in items:
                    self._queue.task_done()
                self.ticks += 1
                async with self._tick_done:
                    self._tick_done.notify_all()

    async def _tick(self, items: list[Batch]) -> None:
        core = self.core
        commits = [b for b in items if b.kind == "commit"]
        batches = [b for b in items if b.kind not in ("commit", "wake")]
        done = await apply_batches(
            core,
            batches,
            max_rows=self.config.max_rows_per_op,
            max_total=self.config.max_rows_per_message,
            exprs=self.exprs,
        )
        if done.entries and not await self.durability.append(done.entries):
            self._fail(done.replies)
            return
        core.flush()
        delta = None
        if core.seq >= done.seq_from:
            meta = self.meta.sync(core.state.catalog) if done.builder.schema_changed else None
            built = done.builder.build(done.before, core.state, done.seq_from, core.seq, tuple(done.by), meta)
            delta = EncodedDelta(built)
        self._published = (core.state, core.seq)
        sessions = list(self.sessions.values())
        for s in sessions:  # each client's acks and the delta go out in one write
            s.hold()
        try:
            for session, reply in done.replies:
                self.reply(session, reply)
            if delta is not None:
                inserted = bool(done.builder.inserted)
                self.outbound.deliver(DeltaOut(delta, core.state, done.before, inserted), sessions)
        finally:
            for s in sessions:
                s.release()
        if delta is not None:
            self.log.append(delta)
            try:
                self.views.on_delta(delta.delta)  # the Perspective table, then one update per view
            except Exception:
                log.exception("views failed to follow delta %d in room %s", core.seq, self.name)
        if self.meta.over_limit:  # the schema's own updates made the doc too big
            self.meta.compact()
            self._meta_resync()
        if self.ticks % self.config.prune_every == 0:
            mark = min((s.base_seq for s in self.sessions.values()), default=core.seq)
            core.clock.prune(mark)
        for b in commits:  # captured now, in order; written while the room goes on
            self._spawn(self._answer_commit(b, self.durability.prepare(core)))
        if self.durability.due:
            self._autocommit("autocommit (ops)")

    def _fail(self, replies: list[tuple[Session, Any]]) -> None:
        """The WAL failed: nothing is acked; close every session so clients resend to a reloaded room."""
        reason = self.durability.broken or "durability failed"
        for s in {*(s for s, _ in replies), *self.sessions.values()}:
            s.abort(CloseCode.INTERNAL, reason[:120])
        if self._on_empty is not None:
            self._on_empty(self)

    # ------------------------------------------------------------ commits

    def _autocommit(self, message: str) -> None:
        """Capture a commit now and write it in the background (the room never waits for it)."""
        if self.durability.handle is None or not self.durability.uncommitted or self.durability.busy:
            return
        prepared = self.durability.prepare(self.core)
        self._spawn(self.durability.autocommit(prepared, message))

    async def _answer_commit(self, b: Batch, prepared: Any) -> None:
        user = getattr(b.sender, "user", None)  # the signed-in user (None under --auth none)
        done = await self.durability.answer(prepared, user or b.client, b.msg)
        self.reply(b.sender, done)
        if user is not None and isinstance(done, Committed) and self.storage is not None:
            try:  # the audit trail: who committed what, when (issue 12 §4)
                what = f"{self.branch} {done.commit[:12]}"
                event = AuditEvent(time.time(), "commit", user, self.dataset, what)
                await self.storage.catalog.add_audit(event)
            except Exception:
                log.exception("could not record a commit by %s in the audit trail", user)

    # ------------------------------------------------------------ waiting

    async def wait_seq(self, seq: int) -> None:
        """Return once the room has published ``seq`` (for tests and tools)."""
        async with self._tick_done:
            await self._tick_done.wait_for(lambda: self.seq >= seq)
