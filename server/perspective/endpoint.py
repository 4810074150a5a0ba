"""``/perspective/{dataset}?branch=``: Perspective's WebSocket protocol, read-only, for dashboards.

Based on perspective-python 5.5.1's ``handlers/starlette.py``, with three
differences:

- Each connection gets a session on the room's own Perspective ``Server``
  (``room.views.attach()``), which hosts only that room's table.
- Replies go through a bounded per-connection queue drained by one writer
  task, so order is kept and a slow browser costs a bounded amount of
  memory. A browser that lets it overflow is closed with 4008 and a reason
 ; the room never waits for it.
- Every request passes a :class:`.readonly.Gate` first: reads, views and
  subscriptions on this room's table and this connection's own views are
  forwarded; anything that would change a table, or names another table
  or someone else's view, is answered with a ``ServerError`` and never
  reaches Perspective. On a connection opened with ``edit=1`` a
  ``table_update_req`` (a datagrid edit) is not refused: a
  :class:`.editor.DashboardEditor` submits it to the room as coframe ops,
  and answers it with the room's ack or error.

The room's Perspective server is created with ``on_poll_request``, so
nothing is processed until someone polls: after each forwarded request we
call ``tables.poll()`` (a no-op unless Perspective asked for it). Every
Perspective call goes through ``room.views.call``: one at a time, in a worker
thread (see :mod:`.live`); Perspective's replies come back to the loop with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from protocol import CloseCode

from ..ops.state import OpError
from ..storage.types import NotFound, StorageCorrupt
from .editor import DashboardEditor
from .edits import wants_edit
from .readonly import Gate, WireError, error_response

if TYPE_CHECKING:
    from ..rooms import Registry
    from ..settings import Settings
    from .live import RoomViews
    from .tables import RoomTables

__all__ = ["perspective_endpoint", "ReplyQueue"]

log = logging.getLogger("coframe.dashboard")


class ReplyQueue:
    """Perspective's replies for one connection: bounded in messages and bytes, one writer.

    :meth:`push` is Perspective's session callback: it never blocks. When a
    push would go over either bound, the queue stops taking messages and
    :attr:`overflow` says why; the writer then closes the socket with 4008.
    The byte bound is on the backlog: one reply bigger than it is still
    sent when nothing is queued ahead of it.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.bytes = 0
        self.overflow: str | None = None
        self.closing: str | None = None  # set by reset(): close with 1012 after what is queued
        self.session: Any = None  # the Perspective session these replies belong to
        self._items: asyncio.Queue[bytes | None] = asyncio.Queue()

    def reset(self, reason: str) -> Callable[[], None] | None:
        """The room's table is being rebuilt (or the room unloads): close 1012.

        Returns the session's ``close`` (it deletes the session's views, so
        the table can be deleted), for the room to run in its Perspective
        thread before the table goes.
        """
        if self.closing is not None:
            return None
        self.closing = reason
        session, self.session = self.session, None
        self._items.put_nowait(None)
        return None if session is None else session.close

    def push(self, data: bytes) -> None:
        if self.overflow is not None:
            return
        size = len(data)
        queued = self._items.qsize()
        if queued >= self.max_messages or (queued and self.bytes + size > self.max_bytes):
            self.overflow = (
                f"dashboard fell behind: over {self.max_messages} messages or {self.max_bytes} bytes"
                " queued; reload the page"
            )
            self._items.put_nowait(None)  # wakes the writer, which closes the socket
            return
        self.bytes += size
        self._items.put_nowait(bytes(data))

    async def run(self, ws: WebSocket) -> None:
        """Send queued replies in order until an overflow (close 4008) or cancellation."""
        while True:
            data = await self._items.get()
            if data is None:
                if ws.application_state != WebSocketState.DISCONNECTED:
                    if self.overflow is not None:
                        await ws.close(CloseCode.SLOW_CONSUMER, self.overflow[:120])
                    else:
                        await ws.close(CloseCode.RELOADING, (self.closing or "")[:120])
                return
            self.bytes -= len(data)
            await ws.send_bytes(data)


async def perspective_endpoint(ws: WebSocket) -> None:
    """Serve one dashboard's Perspective client on the room of (dataset, branch)."""
    registry: Registry = ws.app.state.registry
    settings: Settings = ws.app.state.settings
    dataset = ws.path_params["dataset"]
    branch = ws.query_params.get("branch", "main")
    await ws.accept()
    try:
        room = await registry.open(dataset, branch)
    except (NotFound, OpError):  # OpError: bad_name (a NUL, a newline, a path)
        reason = f"no dataset {dataset!r} with branch {branch!r}"
        await ws.close(CloseCode.NO_SUCH_DATASET, reason[:120])
        return
    except StorageCorrupt:  # logged once by the registry
        reason = f"storage of {dataset!r} is corrupt: run coframe fsck"
        await ws.close(CloseCode.STORAGE_CORRUPT, reason[:120])
        return
    replies = ReplyQueue(settings.send_queue_messages, settings.send_queue_bytes)
    try:
        tables = await room.views.attach(replies.reset)
    except Exception as e:
        log.exception("dashboard for %s: the Perspective table could not be built", room.name)
        await ws.close(CloseCode.INTERNAL, f"cannot show {room.name}: {e}"[:120])
        return
    editor = DashboardEditor.for_connection(room, settings) if wants_edit(ws.query_params) else None
    try:
        gate = Gate(room.views.name, editable=editor is not None)
        await _serve(ws, room.views, tables, gate, settings, replies, editor)
    finally:
        room.views.detach(replies.reset)
        if editor is not None:
            await editor.close()


def _handle(session: Any, tables: RoomTables, data: bytes) -> None:
    """One forwarded request, in the room's Perspective thread; then poll if Perspective asked."""
    session.handle_request(data)
    tables.poll()


async def _serve(
    ws: WebSocket,
    views: RoomViews,
    tables: RoomTables,
    gate: Gate,
    settings: Settings,
    replies: ReplyQueue,
    editor: DashboardEditor | None = None,
) -> None:
    loop = asyncio.get_running_loop()

    def push(data: bytes) -> None:  # Perspective calls it in the room's Perspective thread
        loop.call_soon_threadsafe(replies.push, bytes(data))

    session = await views.call(tables.server.new_session, push)
    replies.session = session
    writer = asyncio.get_running_loop().create_task(replies.run(ws), name="dashboard-writer")
    try:
        while replies.overflow is None and replies.closing is None:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                await ws.close(CloseCode.UNSUPPORTED_DATA, "send Perspective's binary protocol messages")
                return
            if len(data) > settings.max_message_bytes:
                await ws.close(CloseCode.TOO_BIG, f"request over {settings.max_message_bytes} bytes")
                return
            try:
                decision = gate.check(data)
            except WireError as e:
                await ws.close(CloseCode.POLICY, f"not a Perspective request: {e}"[:120])
                return
            if decision.allowed:
                try:
                    await views.call(_handle, session, tables, data)
                except Exception as e:  # a malformed request body Perspective could not read
                    replies.push(error_response(decision, f"Perspective could not handle the request: {e}"))
            elif decision.edit and editor is not None:  # a grid edit: coframe ops, answered by the room
                editor.submit(decision, replies.push)
            else:
                log.info("dashboard request refused: %s", decision.reason)
                replies.push(error_response(decision))
        await writer  # overflow (4008) or reset (1012): the writer closes the socket
    except WebSocketDisconnect:
        return
    finally:
        if replies.session is not None:
            closing, replies.session = replies.session, None
            # Deletes this session's views and callbacks; shielded, so it happens even on cancel
            # (a task the views own, so it is still awaited if the room closes first).
            await asyncio.shield(views.spawn(views.call(closing.close)))
        writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            pass
        except Exception as e:  # the socket went away under the writer
            log.debug("dashboard writer ended: %r", e)
