"""``SyncRoom``: a blocking wrapper for notebooks and scripts.

It runs an event loop in a daemon thread and forwards each call to the
async :class:`client.room.Room`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import polars as pl

from protocol import Ack

from .room import Room
from .views import LiveView

__all__ = ["SyncRoom", "SyncView"]

T = TypeVar("T")


class SyncRoom:
    """``with SyncRoom(url, dataset) as room: room.set_cells(...)``."""

    def __init__(self, url: str, dataset: str, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="coframe-sync", daemon=True)
        self._thread.start()
        try:
            self._room = self._call(self._make(url, dataset, kw))
        except BaseException:
            self._stop()
            raise

    async def _make(self, url: str, dataset: str, kw: dict[str, Any]) -> Room:
        return await Room(url, dataset, **kw).open()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def frame(self) -> pl.DataFrame:
        return self._room.frame

    @property
    def seq(self) -> int:
        return self._room.seq

    @property
    def client_id(self) -> str:
        return self._room.client_id

    def set_cells(
        self, rids: Sequence[int], col: str | int, values: Any, *, if_unchanged: bool = False
    ) -> Ack:
        return self._call(self._room.set_cells(rids, col, values, if_unchanged=if_unchanged))

    def insert_rows(self, rows: Any) -> list[int]:
        return self._call(self._room.insert_rows(rows))

    def delete_rows(self, rids: Sequence[int] | None = None, *, where: str | None = None) -> Ack:
        return self._call(self._room.delete_rows(rids, where=where))

    def add_column(
        self, name: str, dtype: str | None = None, *, default: Any = None, expr: str | None = None
    ) -> Ack:
        return self._call(self._room.add_column(name, dtype, default=default, expr=expr))

    def drop_column(self, col: str | int) -> Ack:
        return self._call(self._room.drop_column(col))

    def rename_column(self, col: str | int, new_name: str) -> Ack:
        return self._call(self._room.rename_column(col, new_name))

    def cast_column(self, col: str | int, dtype: str, *, strict: bool = True) -> Ack:
        return self._call(self._room.cast_column(col, dtype, strict=strict))

    def fill_null(self, col: str | int, value: Any = None, *, strategy: str | None = None) -> Ack:
        return self._call(self._room.fill_null(col, value, strategy=strategy))

    def commit(self, message: str = "") -> str:
        return self._call(self._room.commit(message))

    def undo(self) -> Ack:
        return self._call(self._room.undo())

    def redo(self) -> Ack:
        return self._call(self._room.redo())

    def sync(self) -> None:
        self._call(self._room.sync())

    def subscribe_view(self, **config: Any) -> SyncView:
        """A live view (see ``Room.subscribe_view``); its ``.frame`` updates in the background."""
        return SyncView(self, self._call(self._room.subscribe_view(**config)))

    def close(self) -> None:
        try:
            self._call(self._room.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        """Stop the loop's thread, then close the loop (its selector and self-pipe sockets)."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncRoom:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncView:
    """A :class:`~client.views.LiveView` for blocking code: ``.frame`` is always current."""

    def __init__(self, room: SyncRoom, view: LiveView) -> None:
        self._room = room
        self.view = view

    @property
    def frame(self) -> pl.DataFrame:
        return self.view.frame

    @property
    def seq(self) -> int:
        return self.view.seq

    @property
    def rows(self) -> int:
        return self.view.rows

    def wait_for(self, predicate: Callable[[pl.DataFrame], bool], timeout: float = 60.0) -> pl.DataFrame:
        """Block until ``predicate(frame)`` holds (raises ``TimeoutError`` after ``timeout``)."""
        return self._room._call(self.view.wait_for(predicate), timeout)

    def close(self) -> None:
        self._room._call(self.view.close())
