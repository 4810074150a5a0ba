"""One Perspective table per room, updated once per tick (PROTOCOL.md §14).

:class:`RoomTables` owns one Perspective ``Server`` (created with
``on_poll_request``) and a local client. Updates and removes are queued by
Perspective and only applied by ``Server.poll()``; :meth:`RoomTables.apply_delta`
calls it exactly once per tick, after the delta's removes and update.

Perspective 5.5.1 facts this relies on (checked on this machine):

- ``client.table(arrow_table, index="_rid", name=...)`` holds the rows at
  once (no poll needed); ``table.update(arrow)`` and ``table.remove([rids])``
  only take effect after ``server.poll()``. ``on_poll_request`` fires
  synchronously inside those calls.
- ``table.remove`` takes a Python list of index values (an Arrow table is
  rejected) and ignores absent keys. On a ``uint64`` index it fails, and on
  an ``int64`` index it silently ignores keys >= 2**31; hence the float64
  ``_rid`` from :mod:`.types` (exact below 2**53).
- A partial update (``_rid`` + some columns) leaves other columns as they
  were; a null in an update sets the cell to null.
- ``table.delete()`` fails with "Cannot delete table with views": views
  are deleted first, explicitly. A deleted table's name can be reused.
- A table's schema is immutable, so a schema change rebuilds the table.
"""

from __future__ import annotations

import ctypes
from typing import Any

import perspective
import polars as pl
import pyarrow as pa

from protocol import Delta
from protocol.dtypes import frame_to_arrow

from ..ops.state import State
from .types import RID, to_perspective

__all__ = ["RoomTables", "RoomView", "read_arrow", "release_memory"]


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Building a 1M-row table leaves about 200 MB of freed conversion buffers
    in the allocator's arenas; without this the process keeps them.
    """
    if _TRIM is not None:
        _TRIM(0)


def read_arrow(ipc: bytes) -> pl.DataFrame:
    """A view's ``to_arrow()`` IPC bytes as a DataFrame; dictionary strings become plain strings."""
    table = pa.ipc.open_stream(ipc).read_all()
    cols = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pl.from_arrow(pa.Table.from_arrays(cols, names=table.column_names))  # type: ignore[return-value]


class RoomView:
    """A Perspective view over a room's table, tracked so it is deleted with the table.

    A rebuild (schema change) or close deletes it; :attr:`closed` then turns
    True and :meth:`read` raises.
    """

    __slots__ = ("room", "config", "_view", "_owner")

    def __init__(self, owner: RoomTables, room: str, view: Any, config: dict[str, Any]) -> None:
        self._owner = owner
        self.room = room
        self.config = config
        self._view: Any = view

    @property
    def closed(self) -> bool:
        return self._view is None

    @property
    def handle(self) -> Any:
        """The underlying ``perspective.View`` (e.g. for ``on_update``)."""
        if self._view is None:
            raise RuntimeError(f"view on room '{self.room}' was deleted (table closed or rebuilt)")
        return self._view

    def read(self) -> pl.DataFrame:
        """The view's current content, via ``view.to_arrow()``."""
        return read_arrow(self.handle.to_arrow())

    def delete(self) -> None:
        """Delete the Perspective view (idempotent)."""
        if self._view is not None:
            view, self._view = self._view, None
            self._owner._forget(self)
            view.delete()

    def _drop(self) -> None:
        if self._view is not None:
            view, self._view = self._view, None
            view.delete()


class RoomTables:
    """The Perspective tables of one process/event loop, one per room, named after it.

    Not thread-safe: call every method from the same thread (the loop thread).
    """

    def __init__(self) -> None:
        self._poll_requested = False
        self.server = perspective.Server(on_poll_request=self._on_poll_request)
        self.client = self.server.new_local_client()
        self._tables: dict[str, Any] = {}
        self._views: dict[str, list[RoomView]] = {}

    # -- polling -----------------------------------------------------------

    def _on_poll_request(self, *_args: Any) -> None:
        self._poll_requested = True

    @property
    def poll_requested(self) -> bool:
        """True when Perspective has queued work that the next :meth:`poll` flushes."""
        return self._poll_requested

    def poll(self) -> None:
        """Flush queued updates/removes (and ``on_update`` callbacks) if any were requested."""
        if self._poll_requested:
            self._poll_requested = False
            self.server.poll()

    # -- tables ------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the tables hosted by this server (``client.get_hosted_table_names()``)."""
        return list(self.client.get_hosted_table_names())

    def table(self, room: str) -> Any:
        """The ``perspective.Table`` of an open room.

        Raises:
            KeyError: the room is not open.
        """
        try:
            return self._tables[room]
        except KeyError:
            raise KeyError(f"no Perspective table open for room '{room}'") from None

    def open(self, room: str, state: State) -> Any:
        """Create the room's table from ``state.frame``, indexed on ``_rid``.

        Raises:
            ValueError: the room is already open, or a column has no
                Perspective type (see :func:`.types.to_perspective`).
        """
        if room in self._tables:
            raise ValueError(f"room '{room}' already has a Perspective table; close or rebuild it")

        data = to_perspective(frame_to_arrow(state.frame))
        table = self.client.table(data, index=RID, name=room)
        self._tables[room] = table
        self._views[room] = []
        self.poll()
        return table

    def apply_delta(self, room: str, delta: Delta, state: State | None = None, *, poll: bool = True) -> None:
        """Apply one tick's delta: removes, then the update, then one poll.

        A delta with ``schema`` set (add/drop/rename/cast column) cannot be
        applied in place; the table is rebuilt from ``state`` (the room's
        state after the delta), which is then required.

        Raises:
            ValueError: a schema change without ``state``, or an unmappable column.
            KeyError: the room is not open.
        """
        table = self.table(room)
        if delta.schema is not None:
            if state is None:
                raise ValueError(
                    f"delta {delta.seq_from}..{delta.seq_to} changes the schema; pass the room state"
                )
            self.rebuild(room, state)
            return
        if delta.deleted:
            table.remove(list(delta.deleted))
        if delta.upserts is not None and delta.upserts.num_rows:
            table.update(to_perspective(delta.upserts))
        if poll:
            self.poll()

    def rebuild(self, room: str, state: State) -> Any:
        """Replace the room's table (same name) with one built from ``state``.

        The old table's views are deleted first, then the table.
        """
        self.close(room)
        return self.open(room, state)

    def close(self, room: str) -> None:
        """Delete the room's views and table explicitly (no-op if not open)."""
        table = self._tables.pop(room, None)
        views = self._views.pop(room, [])
        for v in views:
            v._drop()
        if table is not None:
            table.delete()
            self.poll()

    def close_all(self) -> None:
        """Close every room's table."""
        for room in list(self._tables):
            self.close(room)

    # -- views -------------------------------------------------------------

    def view(self, room: str, **config: Any) -> RoomView:
        """A tracked view over the room's table.

        ``config`` is passed to ``table.view``: ``columns``, ``group_by``,
        ``split_by``, ``aggregates`` (prefer ``sum``/``count``: ``mean``
        recomputes whole groups), ``filter`` (``[[col, op, value]]``),
        ``sort`` (``[[col, "asc"|"desc"]]``), ``expressions``.
        """
        v = RoomView(self, room, self.table(room).view(**config), dict(config))
        self._views[room].append(v)
        return v

    def query(self, room: str, **config: Any) -> pl.DataFrame:
        """One-shot: create a view with ``config``, read it, delete it."""
        v = self.view(room, **config)
        try:
            return v.read()
        finally:
            v.delete()

    def _forget(self, view: RoomView) -> None:
        views = self._views.get(view.room)
        if views is not None and view in views:
            views.remove(view)
