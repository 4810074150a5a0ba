"""One view subscription: what a session subscribed to, how a schema change rewrites it, what it is sent.

A :class:`Subscription` is one ``subscribe`` of one session on a room:
its config, viewport and Perspective view, and what it was last sent.
:class:`~.live.RoomViews` keeps them and decides when to read them (the
reads are requests to the views process, :mod:`.jobs`); here is what a subscription
does with a schema change (:meth:`Subscription.follow_schema`) and with a
read (:meth:`Subscription.message`), and the errors a ``subscribe`` or
``unsubscribe`` naming the wrong view, or a refused config, gets. :mod:`.live` re-exports
:class:`Subscription`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from protocol import Error, ErrorCode, Subscribe, Unsubscribe, View

from .config import ViewConfigError, check_expressions, remap

if TYPE_CHECKING:
    from ..rooms.session import Session

__all__ = ["Subscription", "view_exists", "no_such_view", "refusal"]


@dataclass(eq=False, slots=True)
class Subscription:
    """One ``subscribe`` of one session: its config, viewport and the key of its Perspective view
    (``vkey``, shared by identical configs; None while it has none)."""

    session: Session
    name: str
    config: dict[str, Any]
    viewport: tuple[int, int] | None
    vkey: str | None = None
    table: Any = None  # the ViewTable (room, audience) it reads, once subscribed
    fast: Any = None  # its FastPlan when it is served from the frame, not Perspective (.fastviews)
    demoted: bool = False  # leaving the fast path: Perspective serves it from its next message
    fast_seq: int = -1  # the room seq of the last fast read sent (an older read is never sent after it)
    stale: bool = False  # a fast view that could not follow the last deltas: read it in full next
    last: pa.Table | None = None  # the content last sent, to skip unchanged updates
    closing: str | None = None  # why the view cannot survive the last schema change
    sent: int = 0  # messages sent for it; 0 while its first subscribe is still waiting

    @property
    def key(self) -> tuple[str, str]:
        return (self.session.client, self.name)

    def follow_schema(self, renamed: dict[str, str], dropped: set[str], seq: int) -> None:
        """Rewrite the config for a schema change at ``seq`` (columns renamed old -> new, dropped).

        Renamed columns follow and dropped ones leave ``columns``; when the
        config cannot be kept, :attr:`closing` says why.
        """
        if self.closing is None:
            self.config, why = remap(self.config, renamed, dropped)
            if why is not None:
                self.closing = f"{why} at seq {seq}"

    def message(self, kind: str, seq: int, table: pa.Table, rows: int, re: Any = None) -> View | None:
        """The ``view`` message (``snapshot`` or ``update``) for one read of the view, and count it sent.

        None for an update whose content is what was last sent.
        """
        if kind == "update" and self.last is not None and table.equals(self.last):
            return None
        self.last = table
        self.sent += 1
        config = self.config if kind == "snapshot" else None
        return View(self.name, kind, seq, table, rows, re=re, config=config)


def refusal(msg: Subscribe) -> Error | None:
    """The ``bad_view`` error for a config Perspective must never see
    (:func:`.config.check_expressions`), or None."""
    try:
        check_expressions(msg.config)
    except ViewConfigError as e:
        return Error(e.code, e.message, e.details, re=msg.id)
    return None


def view_exists(msg: Subscribe) -> Error:
    """The error for a ``subscribe`` naming a view this connection has open."""
    return Error(
        ErrorCode.VIEW_EXISTS,
        f"view '{msg.view}' is already open here; unsubscribe it or use another name",
        {"field": "view"},
        re=msg.id,
    )


def no_such_view(msg: Unsubscribe) -> Error:
    """The error for an ``unsubscribe`` naming no view open on this connection."""
    return Error(
        ErrorCode.NO_SUCH_VIEW,
        f"no view '{msg.view}' is open on this connection",
        {"field": "view"},
        re=msg.id,
    )
