"""A room's per-connection requests: queries in flight, and view requests in order (PROTOCOL.md §10, §14).

Both have a per-connection bound (``max_queries_per_connection``,
``max_views_per_connection``); one request over it is answered at once with
``too_many`` (``details.limit`` names the setting) and starts nothing.

- **Queries** run as tasks the room owns. A query counts as in flight from
  its arrival until its result has been handed to the socket
  (:meth:`Session.when_sent`), not merely computed: a client that never
  reads holds at most the limit of results in the server.
- **View requests** (``subscribe``, ``unsubscribe``) of one connection run
  one at a time, in the order sent, so each gets exactly one reply, in
  order, and nothing about a view follows its ``closed``. The views limit is
  checked when a ``subscribe`` gets its turn, against the views then open.
  Waiting requests hold their configs, so a connection keeps at most
  :data:`VIEW_REQUESTS_WAITING` of them: a request that arrives with that
  many waiting is refused (``too_many``, ``details.limit``
  ``"view_requests_waiting"``), its refusal still sent in its turn. Past
  :data:`VIEW_REQUESTS_QUEUED` waiting requests and refusals, one more is
  refused at once, ahead of the replies still due.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from protocol import Error, ErrorCode, Query, Subscribe, Unsubscribe

from .config import RoomConfig
from .listeners import RoomListener
from .session import Session

__all__ = ["Requests", "VIEW_REQUESTS_WAITING", "VIEW_REQUESTS_QUEUED", "too_many"]

#: View requests a connection may have waiting for their turn (each holds its config).
VIEW_REQUESTS_WAITING = 64
#: Waiting view requests and in-order refusals a connection may have queued (each a few hundred bytes).
VIEW_REQUESTS_QUEUED = 1024


def too_many(message: str, limit: str, value: int, re: Any) -> Error:
    """The ``too_many`` error for a request over the per-connection count named ``limit``."""
    return Error(ErrorCode.TOO_MANY, message, {"limit": limit, "max": value}, re=re)


class Requests:
    """Queries and view requests of a room's sessions, with their per-connection limits."""

    def __init__(
        self,
        config: RoomConfig,
        views: RoomListener,
        answer: Callable[[Query, Any], Awaitable[Any]],
        reply: Callable[[Session, Any], None],
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        self._config = config
        self._views = views
        self._answer = answer  # the result (or error) for a query
        self._reply = reply  # the room's outbound choke point, for one session
        self._spawn = spawn  # a task the room owns (and awaits on close)
        self.queries: dict[Session, int] = {}  # queries in flight, per session
        self.waiting: dict[Session, deque[Subscribe | Unsubscribe | Error]] = {}  # view requests, in order

    # ------------------------------------------------------------ queries

    def query(self, session: Session, q: Query) -> None:
        """Answer ``q`` in a task, unless the session has too many queries in flight."""
        busy = self.queries.get(session, 0)
        limit = self._config.max_queries_per_connection
        if busy >= limit:
            message = (
                f"this connection has {busy} queries whose results have not been read yet, the most it"
                f" may (max_queries_per_connection = {limit}); read their results before sending more"
            )
            self._reply(session, too_many(message, "max_queries_per_connection", limit, q.id))
            return
        self.queries[session] = busy + 1
        self._spawn(self._run_query(session, q))

    async def _run_query(self, session: Session, q: Query) -> None:
        try:
            self._reply(session, await self._answer(q, session.audience))
        finally:
            session.when_sent(lambda: self._query_done(session))

    def _query_done(self, session: Session) -> None:
        busy = self.queries.get(session, 0) - 1
        if busy > 0:
            self.queries[session] = busy
        else:
            self.queries.pop(session, None)

    # ------------------------------------------------------------ views

    def view(self, session: Session, msg: Subscribe | Unsubscribe) -> None:
        """Queue a view request; the session's requests run one at a time, in order."""
        waiting = self.waiting.get(session)
        if waiting is None:
            self.waiting[session] = deque([msg])
            self._spawn(self._serve_views(session))
            return
        if len(waiting) < VIEW_REQUESTS_WAITING:
            waiting.append(msg)
            return
        message = (
            f"this connection has {len(waiting)} view requests waiting for their replies, the most it may"
            f" ({VIEW_REQUESTS_WAITING}); wait for their replies before sending more"
        )
        refusal = too_many(message, "view_requests_waiting", VIEW_REQUESTS_WAITING, msg.id)
        if len(waiting) < VIEW_REQUESTS_QUEUED:
            waiting.append(refusal)  # sent in its turn, so replies stay in order
        else:
            self._reply(session, refusal)

    async def _serve_views(self, session: Session) -> None:
        waiting = self.waiting[session]
        try:
            while waiting:
                msg = waiting[0]  # still counted as waiting while it runs
                if session.closed:
                    pass
                elif isinstance(msg, Error):
                    self._reply(session, msg)
                else:
                    await self._view_one(session, msg)
                waiting.popleft()
        finally:
            if self.waiting.get(session) is waiting:
                del self.waiting[session]

    async def _view_one(self, session: Session, msg: Subscribe | Unsubscribe) -> None:
        if isinstance(msg, Unsubscribe):
            await self._views.unsubscribe(session, msg)
            return
        limit = self._config.max_views_per_connection
        if self._views.open_views(session) >= limit:
            message = (
                f"this connection has {limit} views open, the most it may (max_views_per_connection);"
                " unsubscribe one before opening another"
            )
            self._reply(session, too_many(message, "max_views_per_connection", limit, msg.id))
            return
        await self._views.subscribe(session, msg)

    # ------------------------------------------------------------ endings

    def leave(self, session: Session) -> None:
        """The session left: the view request it is running finishes, the rest are dropped."""
        self._cut(self.waiting.get(session))

    def close(self) -> None:
        """The room is closing: every session's running view request finishes, the rest are dropped."""
        for waiting in self.waiting.values():
            self._cut(waiting)

    @staticmethod
    def _cut(waiting: deque[Subscribe | Unsubscribe | Error] | None) -> None:
        while waiting is not None and len(waiting) > 1:
            waiting.pop()

    def pending(self) -> int:
        """Queries in flight and view requests waiting, over all sessions (for tests)."""
        return sum(self.queries.values()) + sum(len(w) for w in self.waiting.values())
