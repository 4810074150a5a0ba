"""A dataset listing's entry as a restricted audience may see it (``GET /api/datasets``, ``GET /``).

The registry describes each dataset with the whole of ``main``: its row
count and every column. A user under a row or column policy gets the
columns it may see, and a row count over its own rows: counted on the live
state when the room is loaded, else ``None`` (counting would mean loading
the dataset; the commit's count is of every row, so it is never shown).
docs/security.md "HTTP and dashboards".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..ops.state import State
from .policy import EVERYONE, Audience, PolicyBroken, narrow_schema, visible_count

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["listing", "narrow_entry"]


def narrow_entry(entry: dict[str, Any], audience: Audience, live: State | None) -> dict[str, Any]:
    """``entry`` (one of :meth:`Registry.describe`'s) for ``audience``; ``live`` is ``main``'s
    state when its room is loaded. Row counts of a restricted audience are its own, or None."""
    if audience == EVERYONE:
        return entry
    out = dict(entry)
    if isinstance(entry.get("columns"), list):
        out["columns"] = list(narrow_schema(entry["columns"], audience))
    if "rows" in entry:
        try:
            out["rows"] = None if live is None else visible_count(live, audience)
        except PolicyBroken:  # its row predicate no longer compiles: no count rather than a wrong one
            out["rows"] = None
    return out


async def listing(
    registry: Registry, audience_of: Callable[[str], Awaitable[Audience | None]]
) -> list[dict[str, Any]]:
    """The registry's description of each dataset the user may read, as they may see it.

    ``audience_of(name)`` is the user's audience on a dataset, None for one
    they may not read (it does not exist for them).
    """
    out = []
    for entry in await registry.describe():
        audience = await audience_of(str(entry.get("name")))
        if audience is None:
            continue
        room = registry.rooms.get((str(entry["name"]), "main"))
        live = None if room is None else room.state
        if audience != EVERYONE:
            entry = await asyncio.to_thread(narrow_entry, entry, audience, live)
        out.append(entry)
    return out
