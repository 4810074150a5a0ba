"""The async Python client (README.md "Using it", PROTOCOL.md).

``connect(url, dataset)`` joins a room and keeps ``room.frame`` — a Polars
mirror including ``_rid`` — live. Mutating calls return after the server's
ack and raise :class:`OpRejected` on an ``error``. If the connection drops,
the client reconnects with ``since=`` (resume) and resends its unacked ops
with their original ``client_seq``, so each is applied exactly once.

:class:`Room` is the public API; the socket, the reconnect loop and the
sans-I/O protocol core under it are :class:`client.link.RoomLink`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import urllib.parse
import uuid
from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa

from protocol import (
    Ack,
    AddColumn,
    CastColumn,
    Commit,
    Committed,
    Delete,
    DropColumn,
    FillNull,
    Insert,
    Op,
    OpBatch,
    Ping,
    Presence,
    Query,
    Redo,
    RenameColumn,
    Result,
    SetCells,
    Subscribe,
    Undo,
    Unsubscribe,
    check_view_config,
)

from .errors import ConnectionClosed, OpRejected, RoomRefused
from .link import RoomLink
from .streams import DeltaEvent, DeltaStream
from .views import LiveView

__all__ = ["connect", "Room", "OpRejected", "ConnectionClosed", "RoomRefused", "DeltaEvent", "DeltaStream"]


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


class Room(RoomLink):
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
        token = token if token is not None else os.environ.get("COFRAME_TOKEN")
        if token:
            params["token"] = token
        query = "?" + urllib.parse.urlencode(params)
        super().__init__(
            f"{base}/ws/{dataset}{query}",
            client_id or f"py-{uuid.uuid4().hex[:12]}",
            reconnect=reconnect,
            open_timeout=open_timeout,
        )
        self.dataset = dataset
        self.branch = branch
        self._view_names = itertools.count(1)

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

    async def open(self) -> Room:
        """Connect and return once the welcome arrived.

        Raises:
            TimeoutError: no welcome within ``open_timeout``.
            ConnectionError: the server cannot be reached.
            RoomRefused: the server refused the room with an error (its ``code``:
                ``storage_corrupt`` when a chunk is missing or corrupt, ...).
            ConnectionClosed: the server closed the socket for good first.
        """
        await super().open()
        return self

    async def __aenter__(self) -> Room:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ requests

    async def apply(self, ops: Sequence[Op]) -> Ack:
        """Send an atomic batch of ops; return the ack."""
        cs = self._conn.next_id()
        return await self._send(OpBatch(cs, self._conn.base_seq, tuple(ops), id=cs))

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
        cs = self._conn.next_id()
        return await self._send(Undo(cs, self._conn.base_seq, id=cs))

    async def redo(self) -> Ack:
        cs = self._conn.next_id()
        return await self._send(Redo(cs, self._conn.base_seq, id=cs))

    async def commit(self, message: str = "") -> str:
        """Commit the room's current state as a new version; return its commit id.

        Raises:
            OpRejected: ``read_only`` (a time-travel room: create a branch from its version).
        """
        done: Committed = await self._request("commit", lambda cs: Commit(message, id=cs))
        return done.commit

    async def diff(self, from_: str, to: str = "live") -> dict[str, Any]:
        """What changed from version ``from_`` to ``to`` (a commit, tag, branch, or ``live``).

        Returns ``{"added": [rid], "deleted": [rid], "changed": DataFrame(rid, column_id,
        column, old, new), "schema": [...], "summary": {...}}``.

        Raises:
            OpRejected: ``not_found`` for an unknown version.
        """
        res: Result = await self._request("query", lambda cs: Query("diff", from_, to, id=cs))
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
        res: Result = await self._request("query", lambda cs: Query("log", ref, None, limit, id=cs))
        return list(res.data or [])

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
            await self._request("subscribe", lambda cs: Subscribe(name, config, viewport, id=cs))
        except BaseException:
            self._views.pop(name, None)
            raise
        return view

    async def _unsubscribe(self, view: LiveView) -> None:
        if self._views.get(view.name) is not view:
            return
        try:
            await self._request("unsubscribe", lambda cs: Unsubscribe(view.name, id=cs))
        except (OpRejected, ConnectionClosed):
            pass  # already gone on the server
        self._views.pop(view.name, None)

    async def set_presence(self, state: dict[str, Any] | None) -> None:
        if self._conn.send(Presence(state)):
            await self._flush()

    async def ping(self) -> None:
        """Round-trip to the server."""
        await self._request("ping", lambda cs: Ping(cs))

    # ------------------------------------------------------------ waiting

    async def sync(self) -> None:
        """Return once the mirror holds every op acked before this call."""
        await self.wait_for_seq(self._conn.acked_seq)

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
