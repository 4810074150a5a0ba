"""``/perspective/{dataset}?branch=``: Perspective's WebSocket protocol, read-only, for dashboards.

Based on perspective-python 5.5.1's ``handlers/starlette.py``, with three
differences:

- Each connection gets a session on the room's own Perspective ``Server``
  in the node's views process (``room.views.open_session()``), which hosts
  only that room's table; the server proxies the bytes both ways.
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

**Audiences.** A user under a row or column policy (an audience other
than EVERYONE, which the auth middleware puts in the scope) is served
that audience's own table: its rows and visible columns only, so every
aggregate is over what the user may see (docs/security.md "HTTP and
dashboards"). The middleware also hands the endpoint a ``watch`` function
(``coframe.watch`` in the scope): a grant change reconnects the dashboard
(1012; it comes back under the new grant), a revocation closes it.

Each forwarded request is one request to the views process, in order with
the room's other view work (:meth:`.live.RoomViews.session_request`), with
the views time budget: a request over it (a runaway expression) gets the
process restarted and this dashboard closed with 4010 and the reason; the
others reconnect (1012). Perspective's replies come back as pushes, into
this connection's :class:`ReplyQueue`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from protocol import CloseCode

from ..ops.state import OpError
from ..rooms.policy import EVERYONE, Audience, PolicyBroken, row_filter
from ..storage.types import NotFound, StorageCorrupt
from .editor import DashboardEditor
from .edits import wants_edit
from .process import ViewsFailed, ViewsLost
from .readonly import Gate, WireError, error_response

if TYPE_CHECKING:
    from ..rooms import Registry
    from ..settings import Settings
    from .live import RoomViews

__all__ = ["perspective_endpoint", "ReplyQueue", "AUDIENCE", "WATCH", "EXPRESSION_CAP"]

#: Scope keys the auth middleware (server.auth.http) fills: what the user may see, and how to
#: follow changes to their access (a layer below auth cannot import it, so it is handed down).
AUDIENCE, WATCH = "coframe.audience", "coframe.watch"
#: The signed-in user's cap on one expression (``user_max_expression_chars``), absent under
#: ``--auth none``; the auth middleware puts it in the scope, as it does the audience.
EXPRESSION_CAP = "coframe.expression_cap"

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
        self.closing: str | None = None  # set by reset(): close with ``code`` after what is queued
        self.code: int = CloseCode.RELOADING
        self._items: asyncio.Queue[bytes | None] = asyncio.Queue()

    def reset(self, reason: str, code: int = CloseCode.RELOADING) -> None:
        """Close the socket with ``code`` (1012: reconnect) after what is queued.

        The room's table is being rebuilt or dropped, the views process was
        lost, or (``code`` 4010) this dashboard's own request ran over its budget.
        """
        if self.closing is not None:
            return
        self.closing = reason
        self.code = code
        self._items.put_nowait(None)

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
                        await ws.close(self.code, (self.closing or "")[:120])
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
    audience: Audience = ws.scope.get(AUDIENCE, EVERYONE)
    try:  # a row predicate that no longer compiles: no access rather than more than granted
        row_filter(room.state, audience)
    except PolicyBroken as e:
        await ws.close(CloseCode.FORBIDDEN, e.message[:120])
        return
    replies = ReplyQueue(settings.send_queue_messages, settings.send_queue_bytes)
    try:
        await room.views.attach(replies.reset, audience)
    except PolicyBroken as e:  # the predicate broke meanwhile
        await ws.close(CloseCode.FORBIDDEN, e.message[:120])
        return
    except Exception as e:
        log.exception("dashboard for %s: the Perspective table could not be built", room.name)
        await ws.close(CloseCode.INTERNAL, f"cannot show {room.name}: {e}"[:120])
        return
    unwatch = _watch(ws, replies)
    editor = None
    if wants_edit(ws.query_params):  # its writes are checked against the user's policy in the tick
        editor = DashboardEditor.for_connection(room, settings, audience=audience)
    try:
        cap = ws.scope.get(EXPRESSION_CAP)
        gate = Gate(room.views.name, editable=editor is not None, max_expression_chars=cap)
        await _serve(ws, room.views, gate, settings, replies, editor, audience)
    finally:
        unwatch()
        room.views.detach(replies.reset)
        if editor is not None:
            await editor.close()


def _watch(ws: WebSocket, replies: ReplyQueue) -> Callable[[], None]:
    """Follow changes to the user's access (see the module doc); returns the function that stops."""
    watch = ws.scope.get(WATCH)
    if watch is None:  # no auth middleware in front (an in-process test): nothing to follow
        return lambda: None

    async def close(code: int, reason: str) -> None:
        replies.reset(reason, code)

    def on_change(role: str, audience: Audience) -> None:
        replies.reset("your access to this dataset changed; reconnecting")

    return watch(close, on_change)  # type: ignore[no-any-return]


_SIDS = itertools.count(1)


async def _serve(
    ws: WebSocket,
    views: RoomViews,
    gate: Gate,
    settings: Settings,
    replies: ReplyQueue,
    editor: DashboardEditor | None = None,
    audience: Audience = EVERYONE,
) -> None:
    loop = asyncio.get_running_loop()
    sid = next(_SIDS)
    await views.open_session(sid, replies.push, replies.reset, audience)
    writer = loop.create_task(replies.run(ws), name="dashboard-writer")
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
                    await views.session_request(sid, data)
                except ViewsLost:
                    pass  # reset() already said why: 4010 if this request overran, else 1012
                except ViewsFailed as e:  # a malformed request body Perspective could not read
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
        # Deletes this session's views; shielded, so it happens even on cancel
        # (a task the views own, so it is still awaited if the room closes first).
        closing = views.spawn(views.close_dashboard(sid))
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:  # the server is stopping: the views await the task on close
            pass
        writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            pass
        except Exception as e:  # the socket went away under the writer
            log.debug("dashboard writer ended: %r", e)
