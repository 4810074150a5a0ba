"""The async Python client (DESIGN.md "Python client contract").

``connect(url, dataset)`` joins a room and keeps ``room.frame`` — a Polars
mirror including ``_rid`` — live. Mutating calls return after the server's
ack and raise :class:`OpRejected` on an ``error``. If the connection drops,
the client reconnects with ``since=`` (resume) and resends its unacked ops
with their original ``client_seq``, so each is applied exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import random
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from protocol import (
    PROTOCOL_VERSION,
    Ack,
    AddColumn,
    CastColumn,
    Commit,
    Committed,
    Delete,
    Delta,
    DropColumn,
    Error,
    FillNull,
    Hello,
    Insert,
    Meta,
    Op,
    OpBatch,
    Ping,
    Pong,
    Presence,
    PresenceUpdate,
    Query,
    Redo,
    RenameColumn,
    Result,
    SetCells,
    Subscribe,
    Undo,
    Unsubscribe,
    View,
    Welcome,
    check_view_config,
    decode_server,
    encode,
)

from .mirror import Mirror
from .streams import EventStream
from .views import LiveView

__all__ = ["connect", "Room", "OpRejected", "ConnectionClosed", "DeltaEvent", "DeltaStream"]

log = logging.getLogger("coframe.client")

_RESUBSCRIBE = "resubscribe:"  # request id prefix of the subscribes sent again after a reconnect


class OpRejected(Exception):
    """The server rejected a request: ``code`` is stable, ``message`` says what to do."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


class ConnectionClosed(Exception):
    """The room is closed (by you, or by the server with a code that forbids reconnecting)."""


@dataclass(frozen=True, slots=True)
class DeltaEvent:
    """One applied delta, as seen by ``room.deltas()``."""

    seq: int
    seq_from: int
    upserts: pl.DataFrame
    deleted: list[int]
    by: tuple[str, ...]
    schema_changed: bool
    resync: bool = False


def _wire_value(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if hasattr(v, "item") and not isinstance(v, (list, tuple)):  # numpy scalars
        return v.item()
    return v


def _rows_table(rows: Any) -> pa.Table:
    if isinstance(rows, pl.DataFrame):
        return rows.to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(rows, pa.Table):
        return rows
    return pa.Table.from_pylist([{k: _wire_value(v) for k, v in r.items()} for r in rows])


# Close codes after which reconnecting cannot help.
_FATAL_CLOSE = {1008, 4004}


class Room:
    """A live connection to one room. Create it with :func:`connect`."""

    def __init__(
        self,
        url: str,
        dataset: str,
        *,
        branch: str = "main",
        token: str | None = None,
        client_id: str | None = None,
        reconnect: bool = True,
        open_timeout: float = 10.0,
        at: str | None = None,
    ) -> None:
        base = url.rstrip("/")
        params = {"at": at} if at is not None else {"branch": branch}
        if token:
            params["token"] = token
        query = "?" + urllib.parse.urlencode(params)
        self.url = f"{base}/ws/{dataset}{query}"
        self.dataset = dataset
        self.branch = branch
        self.client_id = client_id or f"py-{uuid.uuid4().hex[:12]}"
        self.reconnect = reconnect
        self.open_timeout = open_timeout
        self.mirror = Mirror()
        self.presence: dict[str, Any] = {}
        self.role = "editor"
        self.reconnects = 0
        # client_seq grows across process restarts too (exactly-once per client id).
        self._client_seq = itertools.count(time.time_ns() // 1000)
        self._pending: dict[int, tuple[OpBatch | Undo, asyncio.Future[Ack]]] = {}
        self._requests: dict[int, asyncio.Future[Any]] = {}  # commit, query and ping replies, by id
        self.last_commit: Committed | None = None  # the latest ``committed`` seen
        self._acked_seq = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._subscribers: list[DeltaStream] = []
        self._views: dict[str, LiveView] = {}
        self._view_names = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._live: ClientConnection | None = None  # joined socket: welcome received
        self._joined = asyncio.Event()
        self._closed = False
        self._fatal: Exception | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ properties

    @property
    def frame(self) -> pl.DataFrame:
        """The live mirror, including ``_rid``."""
        return self.mirror.frame

    @property
    def seq(self) -> int:
        """The last seq applied to the mirror."""
        return self.mirror.seq

    @property
    def schema(self) -> list[dict[str, Any]]:
        return list(self.mirror.schema)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> Room:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"coframe:{self.client_id}")
        joined = asyncio.ensure_future(self._joined.wait())
        done, _ = await asyncio.wait(
            {joined, self._task}, timeout=self.open_timeout, return_when="FIRST_COMPLETED"
        )
        if joined not in done:
            joined.cancel()
            if self._task in done:
                self._task.result()  # raises the connection error, if any
                await self.close()
                raise self._fatal or ConnectionClosed(f"{self.url} closed before the welcome")
            await self.close()
            raise TimeoutError(f"no welcome from {self.url} within {self.open_timeout}s")
        return self

    async def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        err = ConnectionClosed("room closed")
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        for fut_c in self._requests.values():
            if not fut_c.done():
                fut_c.set_exception(err)
        self._requests.clear()
        for sub in list(self._subscribers):
            sub.put(None)
        for view in list(self._views.values()):
            view._end("room closed")
        self._views.clear()
        self._wake_waiters()

    async def __aenter__(self) -> Room:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def drop_connection(self) -> None:
        """Close the socket without closing the room: it reconnects and resumes."""
        if self._ws is not None:
            await self._ws.close()

    # ------------------------------------------------------------ connection

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                async with ws_connect(
                    self.url, max_size=None, open_timeout=self.open_timeout, compression=None
                ) as ws:
                    self._ws = ws
                    since = self.mirror.seq if self.mirror.seq >= 0 else None
                    hello = Hello(self.client_id, PROTOCOL_VERSION, since, codecs=("zstd", "lz4"))
                    await ws.send(encode(hello, binary=True))
                    attempt = 0
                    async for data in ws:
                        self._dispatch(decode_server(data))
                    code, reason = ws.close_code, ws.close_reason
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake, TimeoutError) as e:
                if not self._joined.is_set() and attempt >= 2:
                    raise ConnectionError(f"cannot connect to {self.url}: {e}") from e
                code = getattr(getattr(e, "rcvd", None), "code", None)
                reason = getattr(getattr(e, "rcvd", None), "reason", "") or str(e)
            finally:
                self._ws = None
                self._live = None
            if self._closed or not self.reconnect or code in _FATAL_CLOSE:
                self._fail(ConnectionClosed(f"connection closed with code {code}: {reason}"))
                return
            attempt += 1
            self.reconnects += 1
            # Backoff between reconnect attempts (runtime behaviour, not a test wait).
            await asyncio.sleep(min(2.0, 0.02 * 2**attempt) * (0.5 + random.random()))

    def _fail(self, err: Exception) -> None:
        self._fatal = err
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        self._wake_waiters()

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, Delta):
            if self.mirror.apply(msg):
                self._publish(msg)
                self._wake_waiters()
        elif isinstance(msg, Ack):
            self._acked_seq = max(self._acked_seq, msg.seq)
            entry = self._pending.pop(msg.client_seq, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(msg)
        elif isinstance(msg, (Committed, Result, Pong)):
            if isinstance(msg, Committed):
                self.last_commit = msg
            fut_c = self._requests.pop(msg.re, None) if isinstance(msg.re, int) else None
            if fut_c is not None and not fut_c.done():
                fut_c.set_result(msg)
        elif isinstance(msg, View):
            view = self._views.get(msg.view)
            if view is not None:
                view._apply(msg)
                if msg.kind == "closed":
                    self._views.pop(msg.view, None)
            fut_v = self._requests.pop(msg.re, None) if isinstance(msg.re, int) else None
            if fut_v is not None and not fut_v.done():
                fut_v.set_result(msg)
        elif isinstance(msg, Error) and isinstance(msg.re, str) and msg.re.startswith(_RESUBSCRIBE):
            view = self._views.pop(msg.re.removeprefix(_RESUBSCRIBE), None)
            if view is not None:  # e.g. a column it uses was renamed or dropped meanwhile
                view._end(f"could not subscribe again after a reconnect: {msg.code}: {msg.message}")
        elif isinstance(msg, Error) and isinstance(msg.re, int) and msg.re in self._requests:
            fut_e = self._requests.pop(msg.re)
            if not fut_e.done():
                fut_e.set_exception(OpRejected(msg.code, msg.message, msg.details))
        elif isinstance(msg, Error):
            entry = self._pending.pop(msg.re, None) if isinstance(msg.re, int) else None
            if entry is not None and not entry[1].done():
                entry[1].set_exception(OpRejected(msg.code, msg.message, msg.details))
            elif entry is None:
                log.warning("server error: %s: %s", msg.code, msg.message)
        elif isinstance(msg, Welcome):
            self._welcome(msg)
        elif isinstance(msg, PresenceUpdate):
            for k, v in msg.states.items():
                if v is None:
                    self.presence.pop(k, None)
                else:
                    self.presence[k] = v
        elif isinstance(msg, Meta):
            pass

    def _welcome(self, w: Welcome) -> None:
        self.role = w.role
        if w.snapshot is not None or not w.resumed:
            resync = self.mirror.seq >= 0
            self.mirror.load(w)
            if resync:
                ev = DeltaEvent(w.seq, w.seq, self.mirror.frame, [], (), True, resync=True)
                for sub in self._subscribers:
                    sub.put(ev)
        self._joined.set()
        self._wake_waiters()
        ws = self._ws
        self._live = ws
        resend = []
        if ws is not None and self._pending:  # resend unacked ops (exactly once: same client_seq)
            resend = [encode(self._pending[cs][0], binary=True) for cs in sorted(self._pending)]
        if ws is not None and w.reason != "resync":
            # A new connection has no views: open the live ones again (their snapshots follow).
            resend += [
                encode(Subscribe(v.name, v.config, v.viewport, id=_RESUBSCRIBE + v.name), binary=True)
                for v in self._views.values()
                if v.seq >= 0
            ]
        if ws is not None and resend:
            asyncio.ensure_future(self._resend(ws, resend))

    async def _resend(self, ws: ClientConnection, frames: list[bytes | str]) -> None:
        try:
            for f in frames:
                await ws.send(f)
        except websockets.ConnectionClosed:
            pass  # resent again after the next welcome

    def _publish(self, d: Delta) -> None:
        if not self._subscribers:
            return
        up = pl.from_arrow(d.upserts) if d.upserts is not None else pl.DataFrame()
        assert isinstance(up, pl.DataFrame)
        ev = DeltaEvent(d.seq_to, d.seq_from, up, list(d.deleted), d.by, d.schema is not None)
        for sub in self._subscribers:
            sub.put(ev)

    def _wake_waiters(self) -> None:
        if not self._waiters:
            return
        keep = []
        for seq, fut in self._waiters:
            if fut.done():
                continue
            if self.mirror.seq >= seq or self._fatal is not None or self._closed:
                fut.set_result(None)
            else:
                keep.append((seq, fut))
        self._waiters = keep

    # ------------------------------------------------------------ requests

    async def _send(self, msg: OpBatch | Undo) -> Ack:
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise ConnectionClosed("room closed")
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[msg.client_seq] = (msg, fut)
        ws = self._live
        if ws is not None:
            try:
                await ws.send(encode(msg, binary=True))
            except websockets.ConnectionClosed:
                pass  # resent after the reconnect's welcome
        return await fut

    async def apply(self, ops: Sequence[Op]) -> Ack:
        """Send an atomic batch of ops; return the ack."""
        cs = next(self._client_seq)
        base = max(self.mirror.seq, 0)
        return await self._send(OpBatch(cs, base, tuple(ops), id=cs))

    async def set_cells(
        self, rids: Sequence[int], col: str | int, values: Any, *, if_unchanged: bool = False
    ) -> Ack:
        rows = tuple(int(r) for r in rids)
        if isinstance(values, (list, tuple, pl.Series)) or hasattr(values, "tolist"):
            vals = tuple(_wire_value(v) for v in list(values))
        else:
            vals = (_wire_value(values),) * len(rows)
        return await self.apply([SetCells(rows, col, vals, if_unchanged)])

    async def insert_rows(self, rows: Any) -> list[int]:
        ack = await self.apply([Insert(_rows_table(rows))])
        return list(ack.rids)

    async def delete_rows(self, rids: Sequence[int] | None = None, *, where: str | None = None) -> Ack:
        if (rids is None) == (where is None):
            raise ValueError("pass rids or where=, not both")
        return await self.apply([Delete(None if rids is None else tuple(int(r) for r in rids), where)])

    async def add_column(
        self, name: str, dtype: str | None = None, *, default: Any = None, expr: str | None = None
    ) -> Ack:
        return await self.apply([AddColumn(name, dtype, _wire_value(default), expr)])  # type: ignore[arg-type]

    async def drop_column(self, col: str | int) -> Ack:
        return await self.apply([DropColumn(col)])

    async def rename_column(self, col: str | int, new_name: str) -> Ack:
        return await self.apply([RenameColumn(col, new_name)])

    async def cast_column(self, col: str | int, dtype: str, *, strict: bool = True) -> Ack:
        return await self.apply([CastColumn(col, dtype, strict)])

    async def fill_null(self, col: str | int, value: Any = None, *, strategy: str | None = None) -> Ack:
        return await self.apply([FillNull(col, _wire_value(value), strategy)])

    async def undo(self) -> Ack:
        cs = next(self._client_seq)
        return await self._send(Undo(cs, max(self.mirror.seq, 0), id=cs))

    async def redo(self) -> Ack:
        cs = next(self._client_seq)
        return await self._send(Redo(cs, max(self.mirror.seq, 0), id=cs))

    async def commit(self, message: str = "") -> str:
        """Commit the room's current state as a new version; return its commit id.

        Raises:
            OpRejected: ``read_only`` (a time-travel room, or a server without storage).
        """
        done: Committed = await self._request(lambda cs: Commit(message, id=cs))
        return done.commit

    async def diff(self, from_: str, to: str = "live") -> dict[str, Any]:
        """What changed from version ``from_`` to ``to`` (a commit, tag, branch, or ``live``).

        Returns ``{"added": [rid], "deleted": [rid], "changed": DataFrame(rid, column_id,
        column, old, new), "schema": [...], "summary": {...}}``.

        Raises:
            OpRejected: ``not_found`` for an unknown version.
        """
        res: Result = await self._request(lambda cs: Query("diff", from_, to, id=cs))
        frames = {k: pl.from_arrow(t) for k, t in res.tables.items()}
        data = res.data or {}
        return {
            "added": frames["added"].get_column("rid").to_list(),  # type: ignore[union-attr]
            "deleted": frames["deleted"].get_column("rid").to_list(),  # type: ignore[union-attr]
            "changed": frames["changed"],
            "schema": data.get("schema", []),
            "summary": data.get("summary", {}),
        }

    async def log(self, limit: int = 100, ref: str | None = None) -> list[dict[str, Any]]:
        """Commits on this branch (or ``ref``), newest first."""
        res: Result = await self._request(lambda cs: Query("log", ref, None, limit, id=cs))
        return list(res.data or [])

    async def _request(self, make: Any) -> Any:
        cs = next(self._client_seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests[cs] = fut
        if self._live is None:
            del self._requests[cs]
            raise ConnectionClosed("not connected")
        await self._live.send(encode(make(cs), binary=True))
        return await fut

    async def subscribe_view(
        self,
        *,
        columns: list[str] | None = None,
        group_by: list[str] | None = None,
        split_by: list[str] | None = None,
        aggregates: dict[str, str] | None = None,
        filter: list[list[Any]] | None = None,
        sort: list[list[str]] | None = None,
        expressions: dict[str, str] | None = None,
        group_rollup_mode: str | None = None,
        viewport: tuple[int, int] | None = None,
        name: str | None = None,
    ) -> LiveView:
        """Open a live view over the room's Perspective table (PROTOCOL.md "Views").

        Returns once its snapshot arrived: ``view.frame`` is a Polars
        DataFrame, replaced at most once per server tick. A grouped view
        holds its whole result; a plain one its ``viewport``
        (``(start_row, end_row)``, default the first 100 rows).

        Raises:
            OpRejected: a bad config (``bad_field``, ``no_such_column``,
                ``bad_view``) naming the key or column.
        """
        given = {
            "columns": columns,
            "group_by": group_by,
            "split_by": split_by,
            "aggregates": aggregates,
            "filter": filter,
            "sort": sort,
            "expressions": expressions,
            "group_rollup_mode": group_rollup_mode,
        }
        config = check_view_config({k: v for k, v in given.items() if v is not None})
        name = name or f"v{next(self._view_names)}"
        if name in self._views:
            raise ValueError(f"a view named '{name}' is already open on this room")
        view = LiveView(name, config, viewport, self._unsubscribe)
        self._views[name] = view
        try:
            await self._request(lambda cs: Subscribe(name, config, viewport, id=cs))
        except BaseException:
            self._views.pop(name, None)
            raise
        return view

    async def _unsubscribe(self, view: LiveView) -> None:
        if self._views.get(view.name) is not view:
            return
        try:
            await self._request(lambda cs: Unsubscribe(view.name, id=cs))
        except (OpRejected, ConnectionClosed):
            pass  # already gone on the server
        self._views.pop(view.name, None)

    async def set_presence(self, state: dict[str, Any] | None) -> None:
        if self._ws is not None:
            await self._ws.send(encode(Presence(state), binary=True))

    async def ping(self) -> None:
        """Round-trip to the server."""
        await self._request(lambda cs: Ping(cs))

    # ------------------------------------------------------------ waiting

    async def sync(self) -> None:
        """Return once the mirror holds every op acked before this call."""
        await self.wait_for_seq(self._acked_seq)

    async def wait_for_seq(self, seq: int) -> None:
        """Return once the mirror has applied ``seq``.

        Raises:
            ConnectionClosed: the room closed before that.
        """
        if self.mirror.seq >= seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        self._wake_waiters()
        await fut
        if self.mirror.seq < seq:
            raise self._fatal or ConnectionClosed("room closed")

    def deltas(self, maxsize: int = 10_000) -> DeltaStream:
        """Each delta applied from this call on: ``async for d in room.deltas()``.

        The stream is registered at once, so no delta between this call and
        the first iteration is missed. Past ``maxsize`` unread events the
        oldest are dropped and ``stream.dropped`` counts them.
        """
        return DeltaStream(self._subscribers, maxsize)


class DeltaStream(EventStream[DeltaEvent]):
    """An async iterator of :class:`DeltaEvent`; ``close()`` unsubscribes."""


def connect(
    url: str,
    dataset: str,
    *,
    branch: str = "main",
    token: str | None = None,
    client_id: str | None = None,
    reconnect: bool = True,
    at: str | None = None,
) -> Room:
    """A room to use as ``async with connect(url, dataset) as room:``.

    ``at`` (a commit id or prefix, a tag or a branch) opens a read-only room at
    that version instead of the live ``branch``.
    """
    return Room(url, dataset, branch=branch, token=token, client_id=client_id, reconnect=reconnect, at=at)
