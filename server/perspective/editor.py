"""A dashboard connection's grid edits, submitted to its room as that connection (issue 11 §4).

A dashboard opened with ``edit=1`` gets a :class:`DashboardEditor`. Each
``table_update_req`` the gate marks as an edit is decoded into ``set`` ops
(:mod:`.edits`) and submitted with ``room.submit`` as one ``op`` message,
exactly as a ``/ws`` client's would be: the room validates it, applies it
in its tick, writes it to the WAL, records it for undo, and broadcasts the
delta, which updates the room's Perspective table and so every grid. The
grid that made the edit shows the typed text until then.

The editor talks to the room through a :class:`~server.rooms.Session` of its
own, whose transport is not a socket: the room's ``ack`` or ``error`` for
each batch comes back to :meth:`DashboardEditor._reply`, which answers the
browser's ``table.update`` request with an empty ``TableUpdateResp`` or a
``ServerError`` carrying the room's message. That session is never in
``room.sessions``, so it gets replies only, no deltas or presence.

Identity: the editor's ``client`` (``dashboard-<random>``, one per
connection) is who the room records the edit as (``delta.by``, the cell
clock, undo). Users and roles come later; their check goes in
:meth:`DashboardEditor._admit`, the one place every edit passes before it
reaches the room.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from protocol import Ack, CoframeError, Error, ErrorCode, OpBatch
from protocol.codec import decode_server
from protocol.server_conn import TokenBucket

from ..rooms import Session
from ..rooms.policy import EVERYONE, Audience
from .edits import MAX_EDIT_BYTES, MAX_EDIT_ROWS, EditError, TableUpdate, decode_update, edit_error, to_ops
from .edits import update_response as _ok
from .readonly import Decision

if TYPE_CHECKING:
    from ..rooms import Room
    from ..settings import Settings

__all__ = ["DashboardEditor", "MAX_PENDING_EDITS"]

log = logging.getLogger("coframe.dashboard")

#: Edits of one connection the room has not answered yet; one more → ``too_many``.
MAX_PENDING_EDITS = 64

Push = Callable[[bytes], None]


class _Answers:
    """The editor session's transport: every payload the room sends it goes to ``on_reply``.

    ``direct`` takes each payload at once (the session's synchronous path),
    so nothing queues; ``send`` covers a payload queued anyway.
    """

    def __init__(self, on_reply: Callable[[bytes | str], None]) -> None:
        self._on_reply = on_reply

    def direct(self, data: bytes | str) -> bool:
        self._on_reply(data)
        return True

    async def send(self, data: bytes | str) -> None:
        self._on_reply(data)

    async def close(self, code: int, reason: str) -> None:
        return None


class DashboardEditor:
    """Turns one dashboard connection's grid edits into ``op`` messages to its room.

    Not thread-safe: call it on the event loop (the room answers there too).
    """

    def __init__(
        self,
        room: Room,
        *,
        client: str | None = None,
        ops_per_second: float = 5_000.0,
        ops_burst: int = 10_000,
        max_rows: int = MAX_EDIT_ROWS,
        max_bytes: int = MAX_EDIT_BYTES,
        max_pending: int = MAX_PENDING_EDITS,
        audience: Audience = EVERYONE,
    ) -> None:
        self.room = room
        self.client = client or f"dashboard-{secrets.token_hex(6)}"
        self.max_rows, self.max_bytes, self.max_pending = max_rows, max_bytes, max_pending
        # Like the Python client, client_seq starts at the time in µs, so it grows across connections.
        self._seq = time.time_ns() // 1000
        self._bucket = TokenBucket(ops_per_second, ops_burst, time.monotonic())
        self._pending: dict[int, tuple[Decision, Push]] = {}
        # The user's audience: the tick checks a restricted sender's ops against it (rows by rid,
        # visible columns and rows only, WITH CHECK), exactly as for a /ws client.
        self.session = Session(
            self.client,
            _Answers(self._reply),
            binary=False,
            limits=room.config.session,
            resync=_no_resync,
            audience=audience,
        )
        self.session.start()

    @classmethod
    def for_connection(cls, room: Room, settings: Settings, audience: Audience = EVERYONE) -> DashboardEditor:
        """An editor with the server's per-connection op rate and row limits, for ``audience``."""
        return cls(
            room,
            audience=audience,
            ops_per_second=settings.ops_per_second,
            ops_burst=settings.ops_burst,
            max_rows=min(MAX_EDIT_ROWS, settings.max_rows_per_message, settings.max_rows_per_op),
        )

    @property
    def pending(self) -> int:
        """Edits submitted and not answered yet."""
        return len(self._pending)

    def submit(self, decision: Decision, push: Push) -> None:
        """Answer the edit ``decision`` through ``push``: at once if it is refused here, else
        when the room has applied or rejected it. Never blocks."""
        try:
            update = decode_update(decision.body, max_rows=self.max_rows, max_bytes=self.max_bytes)
            self._admit(update)
            dtypes = {c.name: c.dtype for c in self.room.state.catalog.columns}
            ops = to_ops(update, dtypes)
        except CoframeError as e:  # EditError, or WireError: a body that is not protobuf
            log.info("dashboard edit refused (%s): %s", e.code, e.message)
            push(edit_error(decision, e.code, e.message))
            return
        if not ops:  # rows without columns: nothing to change
            push(_ok(decision))
            return
        self._seq += 1
        self._pending[self._seq] = (decision, push)
        # base_seq: the room's latest seq, so a concurrent write is overwritten (last writer
        # wins), as a typed cell should be; the grid has no compare-and-set.
        self.room.submit(self.session, OpBatch(self._seq, self.room.seq, ops, id=self._seq))

    def _admit(self, update: TableUpdate) -> None:
        """Whether this connection may make this edit now; the one check before the room.

        Today: the op rate and the edits in flight. Users and roles come with a later
        issue, and their check goes here.

        Raises:
            EditError: ``rate_limited`` or ``too_many``.
        """
        if len(self._pending) >= self.max_pending:
            raise EditError(
                f"{len(self._pending)} edits are waiting for the room; wait for them before editing more",
                code=ErrorCode.TOO_MANY,
                details={"limit": "max_pending_edits", "max": self.max_pending},
            )
        if not self._bucket.take(time.monotonic()):
            raise EditError(
                f"over {self._bucket.rate:g} edits per second; edit fewer cells at a time",
                code=ErrorCode.RATE_LIMITED,
            )

    def _reply(self, data: bytes | str) -> None:
        """The room's answer to one of our batches: resolve or reject the browser's request."""
        try:
            msg = decode_server(data)
        except CoframeError as e:  # pragma: no cover - the room only sends what it encodes
            log.error("dashboard editor %s could not read the room's reply: %s", self.client, e)
            return
        if not isinstance(msg, (Ack, Error)) or not isinstance(msg.re, int):
            return
        entry = self._pending.pop(msg.re, None)
        if entry is None:
            return
        decision, push = entry
        if isinstance(msg, Ack):
            push(_ok(decision))
        else:
            log.info("dashboard edit rejected by %s (%s): %s", self.room.name, msg.code, msg.message)
            # A grid user made no ops: drop the "ops[i]: " the room puts before an op's message.
            index = msg.details.get("op_index")
            text = msg.message.removeprefix(f"ops[{index}]: ") if isinstance(index, int) else msg.message
            push(edit_error(decision, msg.code, text))

    async def close(self) -> None:
        """Forget the edits in flight (their connection is gone) and stop the session."""
        self._pending.clear()
        await self.session.stop()


def _no_resync(session: Session) -> None:
    """Replies are never dropped, so this session is never resynced."""
