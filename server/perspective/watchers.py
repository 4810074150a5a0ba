"""The dashboards watching one room, for :class:`~.live.RoomViews`.

A dashboard attaches with a ``reset`` callback and the audience it is for
(what its user may see: docs/security.md "HTTP and dashboards"); it is
served that audience's table. Before a table is rebuilt (a schema change)
or closed (the room unloads), the ``reset(reason)`` of each dashboard on it
is called on the loop: it tells its dashboard to reconnect and returns the
function that closes that dashboard's Perspective session (deleting its
views), which then runs in the Perspective thread. Dashboards keep the room
loaded; when the last one leaves, the room's ``on_idle`` runs.
"""

from __future__ import annotations

from collections.abc import Callable

from ..rooms.policy import EVERYONE, Audience

__all__ = ["Reset", "Watchers"]

Reset = Callable[[str], Callable[[], None] | None]


class Watchers:
    """The ``reset`` callbacks (and audiences) of the dashboards attached to one room, in attach order."""

    def __init__(self, on_idle: Callable[[], None] | None) -> None:
        self._resets: list[tuple[Reset, Audience]] = []  # one per dashboard
        self._on_idle = on_idle

    def __len__(self) -> int:
        return len(self._resets)

    def add(self, reset: Reset, audience: Audience = EVERYONE) -> None:
        self._resets.append((reset, audience))

    def watching(self, audience: Audience) -> bool:
        """A dashboard for ``audience`` is attached (its table must hold every visible column)."""
        return any(a == audience for _, a in self._resets)

    def remove(self, reset: Reset) -> Audience | None:
        """Forget ``reset`` (if attached), returning its audience; ``on_idle`` runs when none is left."""
        audience = None
        for i, (r, a) in enumerate(self._resets):
            if r == reset:
                del self._resets[i]
                audience = a
                break
        if not self._resets and self._on_idle is not None:
            self._on_idle()
        return audience

    def reset_all(self, reason: str) -> list[Callable[[], None]]:
        """Tell every dashboard to reconnect; the closers of their sessions, to run in the thread."""
        return self._reset([r for r, _ in self._resets], reason)

    def reset_for(self, audience: Audience, reason: str) -> list[Callable[[], None]]:
        """Tell the dashboards on ``audience``'s table to reconnect (see :meth:`reset_all`)."""
        return self._reset([r for r, a in self._resets if a == audience], reason)

    @staticmethod
    def _reset(resets: list[Reset], reason: str) -> list[Callable[[], None]]:
        return [c for c in (reset(reason) for reset in resets) if c is not None]
