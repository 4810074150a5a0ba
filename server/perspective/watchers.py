"""The dashboards watching one room, for :class:`~.live.RoomViews`.

A dashboard attaches with a ``reset`` callback. Before the room's table is
rebuilt (a schema change) or closed (the room unloads), every ``reset(reason)``
is called on the loop: it tells its dashboard to reconnect and returns the
function that closes that dashboard's Perspective session (deleting its
views), which then runs in the Perspective thread. Dashboards keep the room
loaded; when the last one leaves, the room's ``on_idle`` runs.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Reset", "Watchers"]

Reset = Callable[[str], Callable[[], None] | None]


class Watchers:
    """The ``reset`` callbacks of the dashboards attached to one room, in attach order."""

    def __init__(self, on_idle: Callable[[], None] | None) -> None:
        self._resets: list[Reset] = []  # one per dashboard
        self._on_idle = on_idle

    def __len__(self) -> int:
        return len(self._resets)

    def add(self, reset: Reset) -> None:
        self._resets.append(reset)

    def remove(self, reset: Reset) -> None:
        """Forget ``reset`` (if attached); run ``on_idle`` when no dashboard is left."""
        if reset in self._resets:
            self._resets.remove(reset)
        if not self._resets and self._on_idle is not None:
            self._on_idle()

    def reset_all(self, reason: str) -> list[Callable[[], None]]:
        """Tell every dashboard to reconnect; the closers of their sessions, to run in the thread."""
        return [c for c in (reset(reason) for reset in list(self._resets)) if c is not None]
