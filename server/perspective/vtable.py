"""One table of a room in the views process: for one audience, holding some of its columns.

A :class:`ViewTable` is the room's side of one table: which audience it is
for, which columns it holds, in which process generation it was built,
which room seq it reflects, and the deltas still to send it.
:class:`~.live.RoomViews` keeps one per audience that has views (and one for
:data:`~server.rooms.outbound.EVERYONE` while dashboards watch).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from protocol import Delta

from ..ops.state import State
from ..rooms.outbound import Audience
from .audience import needed_columns

__all__ = ["ViewTable", "wanted_columns"]


@dataclass(eq=False, slots=True)
class ViewTable:
    audience: Audience
    key: str  # its key in the views process
    columns: frozenset[str] | None = None  # visible columns held; None: every visible column
    built: int | None = None  # the views process generation it was built in
    seq: int = 0  # the room seq it reflects
    building: bool = False
    incoming: list[tuple[Delta, State]] = field(default_factory=list)  # deltas, with the state after each
    expiry: asyncio.TimerHandle | None = None  # drop or shrink it, once unused for a while
    dropped: asyncio.Event = field(default_factory=asyncio.Event)  # set each time it is dropped as unused

    def covers(self, columns: set[str] | None) -> bool:
        """The table holds ``columns`` (None: needs every visible column)."""
        if self.columns is None:
            return True
        return columns is not None and columns <= self.columns


def wanted_columns(configs: list[dict[str, Any]], everything: bool) -> set[str] | None:
    """The columns a table must hold for views with ``configs`` (None: every visible one)."""
    if everything:
        return None
    out: set[str] = set()
    for config in configs:
        need = needed_columns(config)
        if need is None:
            return None
        out |= need
    return out
