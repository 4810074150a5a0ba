"""A Room: the one owner of a live frame (DESIGN.md "server/rooms/").

Everything that changes the frame reaches the room through its queue. One
task runs the tick loop: drain the queue, apply each message as an atomic
batch (:mod:`server.rooms.core`), make the batch durable (the WAL hook; a
no-op until storage lands), send the acks, then encode **one** delta for the
tick and push the same bytes to every session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol import (
    PROTOCOL_VERSION,
    Ack,
    CloseCode,
    Commit,
    Committed,
    Error,
    ErrorCode,
    Hello,
    Meta,
    OpBatch,
    Presence,
    PresenceUpdate,
    ProtocolError,
    Query,
    SetCells,
    Subscribe,
    Undo,
    Unsubscribe,
    Welcome,
    encode,
    table_to_ipc,
)

from ..ops.state import OpError, State
from ..perspective.live import RoomViews
from ..storage.types import WalEntry
from .core import RoomCore, describe_error, is_heavy, run_general
from .deltas import DeltaBuilder, DeltaLog, EncodedDelta, frame_to_arrow
from .lifecycle import ROOM, next_state
from .metadoc import MetaDoc
from .queries import answer
from .session import Payload, Session, SessionLimits, Transport
from .wal import make_entry

if TYPE_CHECKING:
    from ..storage.service import BranchHandle

__all__ = ["Room", "RoomConfig"]

log = logging.getLogger("coframe.room")

BIG_SNAPSHOT_ROWS = 50_000


@dataclass(frozen=True, slots=True)
class RoomConfig:
    max_batch: int = 4096  # messages drained per tick
    session: SessionLimits = SessionLimits()
    delta_log_entries: int = 4096
    delta_log_bytes: int = 64 * 1024 * 1024
    prune_every: int = 64  # ticks between cell-clock prunes
    max_message_bytes: int = 8 * 1024 * 1024
    max_rows_per_op: int = 1_000_000
    autocommit_ops: int = 10_000  # commit after this many batches...
    autocommit_seconds: float = 60.0  # ...or this long after the first uncommitted one


class Room:
    """One open (dataset, branch)."""

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
        core: RoomCore | None = None,
    ) -> None:
        self.dataset = dataset
        self.branch = branch
        self.name = f"{dataset}/{branch}"
        self.config = config or RoomConfig()
        self.read_only = read_only
        self.core = core or RoomCore(state, seq)
        state, seq = self.core.state, self.core.seq
        self.meta = MetaDoc(state.catalog)
        self.log = DeltaLog(max_entries=self.config.delta_log_entries, max_bytes=self.config.delta_log_bytes)
        self.sessions: dict[str, Session] = {}
        self.lifecycle = "loading"
        self.ticks = 0
        self._queue: asyncio.Queue[tuple[str, Session, Any]] = asyncio.Queue()
        self._published: tuple[State, int] = (state, seq)
        self._task: asyncio.Task[None] | None = None
        self._tick_done = asyncio.Condition()
        self._on_empty = on_empty
        self.durable = durable
        self.broken: str | None = None  # set when durability failed: the room must reload
        self.uncommitted = 0  # batches since the last commit
        self._queries: set[asyncio.Task[None]] = set()
        self._snapshot_cache: tuple[State, str, bytes] | None = None
        self._first_uncommitted: float | None = None
        self.views = RoomViews(self.name, lambda: self._published, self._views_idle)

    # ------------------------------------------------------------ lifecycle

    def _move(self, event: str) -> None:
        self.lifecycle = next_state(ROOM, self.lifecycle, event, machine=f"room {self.name}")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"room:{self.name}")
        self._move("loaded")

    async def close(self, code: int = 1001, reason: str = "room unloading") -> State:
        """Stop the loop after the queue drains; return the final state."""
        if self.lifecycle == "live":
            self._move("unload")
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.durable is not None and not self.broken:
            await self._autocommit("autocommit (room unload)")
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

    # ------------------------------------------------------------ joining

    def join(self, hello: Hello, transport: Transport, *, binary: bool, role: str = "editor") -> Session:
        """Register a session and queue its welcome (and any resume deltas).

        Synchronous, so the welcome's state and the deltas that follow it
        are consistent: no tick can run in between.

        Raises:
            ProtocolError: ``bad_version``.
        """
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.BAD_VERSION,
                f"protocol version {hello.version} is not supported; this server speaks {PROTOCOL_VERSION}",
            )
        old = self.sessions.pop(hello.client, None)
        if old is not None:
            old.abort(4001, "replaced by a newer connection of the same client")
        session = Session(
            hello.client, transport, binary=binary, limits=self.config.session, resync=self._resync_payload
        )
        session.awareness_id = random.getrandbits(31)
        session.codecs = hello.codecs
        state, seq = self._published
        replay = self.log.since(hello.since, seq) if hello.since is not None else None
        session.base_seq = seq if replay is None else hello.since or 0
        self.sessions[hello.client] = session
        if replay is None:
            first = self._welcome_payload(session, state, seq, "join", hello.id)
        else:
            welcome = self._welcome(session, state, seq, "resume", None, hello.id, self.meta.state())
            first = _ready(encode(welcome, binary=binary))
        session.start(first)
        for d in replay or ():
            session.push(d.payload(binary), droppable=True)
        if self.meta.presence:
            update = PresenceUpdate(self.meta.presence_update(), self.meta.presence_states())
            session.push(encode(update, binary=binary), droppable=True)
        return session

    def _welcome(
        self, session: Session, state: State, seq: int, reason: str, snapshot: Any, re: Any, meta: bytes
    ) -> Welcome:
        return Welcome(
            room=self.name,
            seq=seq,
            client=session.client,
            schema=tuple(state.catalog.to_wire()),
            snapshot=snapshot,
            meta=meta,
            role="viewer" if self.read_only else "editor",
            resumed=reason == "resume",
            reason=reason,
            limits={
                "max_message_bytes": self.config.max_message_bytes,
                "max_rows_per_op": self.config.max_rows_per_op,
                "send_queue": self.config.session.max_messages,
            },
            re=re,
        )

    def _welcome_payload(
        self, session: Session, state: State, seq: int, reason: str, re: Any
    ) -> Awaitable[Payload]:
        """Encode a snapshot welcome; big frames are encoded in a worker thread."""
        meta = self.meta.state()  # captured now, with the state, on the loop thread

        def build() -> Payload:
            snapshot: Any = None
            codec = session.codecs[0] if session.binary and session.codecs else None
            if codec is not None and state.frame.height >= BIG_SNAPSHOT_ROWS:
                # Compressed Arrow IPC (a quarter of the bytes), encoded once per
                # (state, codec): joins at the same seq share it.
                cached = self._snapshot_cache
                if cached is not None and cached[0] is state and cached[1] == codec:
                    snapshot = cached[2]
                else:
                    snapshot = table_to_ipc(frame_to_arrow(state.frame), compression=codec)
                    self._snapshot_cache = (state, codec, snapshot)
            if snapshot is None:
                snapshot = frame_to_arrow(state.frame)
            w = self._welcome(session, state, seq, reason, snapshot, re, meta)
            return encode(w, binary=session.binary)

        if state.frame.height >= BIG_SNAPSHOT_ROWS:
            return asyncio.to_thread(build)
        return _ready(build())

    async def _resync_payload(self, session: Session) -> Payload:
        """Called by a session's writer once it caught up after an overflow."""
        state, seq = self._published
        session.resync_pending = False  # deltas after this point queue behind the welcome
        session.base_seq = seq
        payload = self._welcome_payload(session, state, seq, "resync", None)
        self.views.resend(session)  # view updates were dropped too: fresh snapshots follow the welcome
        return await payload

    async def leave(self, session: Session) -> None:
        self.views.drop_session(session)
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]
            if session.awareness_id in self.meta.presence:
                session.awareness_clock += 1
                update = self.meta.set_presence(
                    session.awareness_id, session.awareness_clock, session.client, None
                )
                self._broadcast_presence(update, {session.client: None})
        await session.stop()
        self._views_idle()

    def _views_idle(self) -> None:
        """No session left (or the last dashboard detached): the room may unload when idle."""
        if not self.sessions and not self.views.watchers and self._on_empty is not None:
            self._on_empty(self)

    # ------------------------------------------------------------ input

    def submit(self, session: Session, msg: Any) -> None:
        """Take one decoded client message (after hello)."""
        if isinstance(msg, Presence):
            self._presence(session, msg)
        elif isinstance(msg, Meta):
            self._meta(session, msg)
        elif isinstance(msg, Query):
            self._spawn(self._answer(session, msg))
        elif isinstance(msg, Subscribe):
            self._spawn(self.views.subscribe(session, msg))
        elif isinstance(msg, Unsubscribe):
            self._spawn(self.views.unsubscribe(session, msg))
        elif isinstance(msg, Commit):
            if self.durable is None:
                why = "this room is read-only" if self.read_only else "this server runs without storage"
                self.reply(session, Error(ErrorCode.READ_ONLY, f"cannot commit: {why}", re=msg.id))
                return
            self._queue.put_nowait(("commit", session, msg))
        elif isinstance(msg, (OpBatch, Undo)):
            if self.read_only:
                self.reply(session, Error(ErrorCode.READ_ONLY, f"room {self.name} is read-only", re=msg.id))
                return
            session.base_seq = max(session.base_seq, msg.base_seq)
            self._queue.put_nowait((msg.type, session, msg))
        else:  # pragma: no cover - the endpoint handles ping and hello
            raise TypeError(type(msg).__name__)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        self._queries.add(task)
        task.add_done_callback(self._queries.discard)

    async def _answer(self, session: Session, q: Query) -> None:
        try:
            out = await answer(self, q)
        except Exception as e:  # a bug must surface as a coded error, not a silent drop
            log.exception("query failed in room %s", self.name)
            out = Error(ErrorCode.INTERNAL, f"query failed ({type(e).__name__})", re=q.id)
        self.reply(session, out)

    def reply(self, session: Session, msg: Any) -> None:
        session.push(encode(msg, binary=session.binary))

    def _presence(self, session: Session, msg: Presence) -> None:
        session.awareness_clock += 1
        update = self.meta.set_presence(
            session.awareness_id, session.awareness_clock, session.client, msg.state
        )
        self._broadcast_presence(update, {session.client: msg.state})

    def _broadcast_presence(self, update: bytes, states: dict[str, Any]) -> None:
        self._broadcast(PresenceUpdate(update, states))

    def _broadcast(self, msg: Any, *, skip: Session | None = None) -> None:
        """Push ``msg`` to every session (but ``skip``), encoded at most once per envelope."""
        cache: dict[bool, Payload] = {}
        for s in self.sessions.values():
            if s is skip:
                continue
            if s.binary not in cache:
                cache[s.binary] = encode(msg, binary=s.binary)
            s.push(cache[s.binary], droppable=True)

    def _meta(self, session: Session, msg: Meta) -> None:
        try:
            reply, relay = self.meta.handle(msg.update)
        except ProtocolError as e:
            self.reply(session, Error(e.code, e.message, e.details, re=msg.id))
            return
        if reply is not None:
            self.reply(session, Meta(reply, re=msg.id))
        if relay is not None:
            self._broadcast(Meta(relay), skip=session)

    # ------------------------------------------------------------ tick loop

    async def _run(self) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), self._autocommit_wait())
            except TimeoutError:
                await self._autocommit("autocommit (time)")
                continue
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

    async def _tick(self, items: list[tuple[str, Session, Any]]) -> None:
        core = self.core
        before, seq_from = core.state, core.seq + 1
        builder = DeltaBuilder()
        replies: list[tuple[Session, Ack | Error]] = []
        by: list[str] = []
        entries: list[WalEntry] = []
        commits = [(s, m) for k, s, m in items if k == "commit"]
        for kind, session, msg in items:
            if kind == "commit":
                continue
            try:
                reply = await self._apply_one(kind, session, msg, builder)
            except Exception:  # a bug in one batch must not take the others down
                log.exception("batch %s from %s failed in room %s", msg.client_seq, session.client, self.name)
                reply = Error(ErrorCode.INTERNAL, "internal error; this batch was not applied", {})
            replies.append((session, _with_re(reply, msg.id)))
            if isinstance(reply, Ack) and not reply.duplicate:
                if self.durable is not None:
                    entries.append(
                        make_entry(reply.seq, session.client, msg.client_seq, kind, core.last_applied, reply)
                    )
                if session.client not in by:
                    by.append(session.client)
        if entries and not await self._make_durable(entries, replies):
            return
        core.flush()
        seq_to = core.seq
        delta = None
        if seq_to >= seq_from:
            meta_update = self.meta.sync(core.state.catalog) if builder.schema_changed else None
            delta = EncodedDelta(builder.build(before, core.state, seq_from, seq_to, tuple(by), meta_update))
        # Durability hook (issue 3): the WAL write goes here, before any ack.
        self._published = (core.state, core.seq)
        for session, reply in replies:
            self.reply(session, reply)
        if delta is not None:
            self.log.append(delta)
            for s in self.sessions.values():
                s.push(delta.payload(s.binary), droppable=True)
            try:
                self.views.on_delta(delta.delta)  # the Perspective table, then one update per view
            except Exception:
                log.exception("views failed to follow delta %d in room %s", seq_to, self.name)
        if self.ticks % self.config.prune_every == 0:
            mark = min((s.base_seq for s in self.sessions.values()), default=core.seq)
            core.clock.prune(mark)
        if entries:
            self.uncommitted += len(entries)
            if self._first_uncommitted is None:
                self._first_uncommitted = time.monotonic()
        for session, msg in commits:
            await self._commit(session, msg)
        if self.uncommitted >= self.config.autocommit_ops:
            await self._autocommit("autocommit (ops)")

    # ------------------------------------------------------------ durability

    async def _make_durable(
        self, entries: list[WalEntry], replies: list[tuple[Session, Ack | Error]]
    ) -> bool:
        """Append the tick's WAL entries (one transaction) before any ack.

        If that fails, nothing is acked: the in-memory state is ahead of the
        durable one, so the room closes and reloads from storage; clients
        resend their unacked batches to the reloaded room.
        """
        assert self.durable is not None
        try:
            await self.durable.append(entries)
            return True
        except Exception as e:
            log.exception("WAL append failed in room %s", self.name)
            self.broken = f"could not make batches durable ({type(e).__name__}); reconnect and resend"
            for s in {*(s for s, _ in replies), *self.sessions.values()}:
                s.abort(CloseCode.INTERNAL, self.broken[:120])
            if self._on_empty is not None:
                self._on_empty(self)
            return False

    def _autocommit_wait(self) -> float | None:
        if self.durable is None or self._first_uncommitted is None or self.broken:
            return None
        return max(0.0, self._first_uncommitted + self.config.autocommit_seconds - time.monotonic())

    async def _autocommit(self, message: str) -> None:
        if self.durable is not None and self.uncommitted and not self.broken:
            try:
                await self.commit_now("coframe", message)
            except Exception:
                log.exception("autocommit failed in room %s", self.name)

    async def commit_now(self, author: str, message: str) -> Committed:
        """Commit the current state (call from the tick loop, or when it is idle)."""
        assert self.durable is not None
        core = self.core
        core.flush()
        if self.durable.head.seq == core.seq:
            head = self.durable.head
        else:
            dirty = core.take_dirty()
            try:
                head = await self.durable.commit(
                    core.state,
                    core.seq,
                    dirty,
                    author=author,
                    message=message,
                    clients=core.replies.high_water(),
                )
            except BaseException:
                core.dirty_rids = None  # unknown what was written: rewrite every chunk next time
                raise
        self.uncommitted = 0
        self._first_uncommitted = None
        out = Committed(head.id, head.seq, head.rows, head.message, head.author, head.time, head.parents)
        self._broadcast(out)
        return out

    async def _commit(self, session: Session, msg: Commit) -> None:
        try:
            done = await self.commit_now(session.client, msg.message)
        except Exception as e:
            log.exception("commit failed in room %s", self.name)
            self.reply(
                session, Error(ErrorCode.INTERNAL, f"commit failed ({type(e).__name__}: {e})", re=msg.id)
            )
            return
        self.reply(session, dataclasses.replace(done, re=msg.id))

    async def _apply_one(self, kind: str, session: Session, msg: Any, builder: DeltaBuilder) -> Ack | Error:
        core, client = self.core, session.client
        prior = core.replies.get(client, msg.client_seq)
        if prior is not None:
            if isinstance(prior, Ack):
                return Ack(prior.seq, prior.client_seq, prior.rids, prior.overwritten, duplicate=True)
            return prior
        ops: tuple[Any, ...]
        try:
            if kind == "op":
                ops = msg.ops
                self._check_limits(ops)
            else:
                ops = core.pop_undo(client, kind)
        except OpError as e:
            err = describe_error(e, core.clock, core.seq)
            core.replies.put(client, msg.client_seq, err)
            return err
        try:
            if kind == "op" and all(isinstance(o, SetCells) for o in ops):
                return core.apply_sets(client, msg.client_seq, msg.base_seq, ops, builder)
            core.flush()
            base = msg.base_seq if kind == "op" else core.seq
            if is_heavy(ops):
                result = await asyncio.to_thread(run_general, core.state, core.clock, client, base, ops)
            else:
                result = run_general(core.state, core.clock, client, base, ops)
            return core.commit_general(client, msg.client_seq, result, builder, kind)
        except OpError as e:
            if kind != "op":
                core.restore_undo(client, kind, ops)
            err = describe_error(e, core.clock, core.seq)
            core.replies.put(client, msg.client_seq, err)
            return err

    def _check_limits(self, ops: tuple[Any, ...]) -> None:
        limit = self.config.max_rows_per_op
        for i, op in enumerate(ops):
            rows = getattr(op, "rows", None)
            n = 0 if rows is None else (rows.num_rows if hasattr(rows, "num_rows") else len(rows))
            if n > limit:
                raise OpError(
                    ErrorCode.TOO_LARGE,
                    f"ops[{i}] touches {n} rows; the limit is {limit} rows per op, split it into several ops",
                    op_index=i,
                )

    # ------------------------------------------------------------ waiting

    async def wait_seq(self, seq: int) -> None:
        """Return once the room has published ``seq`` (for tests and tools)."""
        async with self._tick_done:
            await self._tick_done.wait_for(lambda: self.seq >= seq)


def _with_re(reply: Ack | Error, re: Any) -> Ack | Error:
    if reply.re == re:
        return reply
    if isinstance(reply, Ack):
        return Ack(reply.seq, reply.client_seq, reply.rids, reply.overwritten, reply.duplicate, re)
    return Error(reply.code, reply.message, reply.details, re)


def _ready(value: Payload) -> Awaitable[Payload]:
    fut: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut
