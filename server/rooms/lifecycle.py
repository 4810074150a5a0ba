"""The room's lifecycle, written down once as data (docs/architecture.md "Lifecycles").

A room: ``loading`` --> ``live`` --> ``unloading`` --> ``closed``.
Any event not in the table is a violation of that machine. The connection
machine moved to ``protocol.lifecycle``, beside the sans-I/O connection core
that consults it; :func:`next_state` and :class:`IllegalTransition` are the
same for both.
"""

from __future__ import annotations

from protocol.lifecycle import IllegalTransition, next_state

__all__ = ["ROOM", "next_state", "IllegalTransition"]

# (state, event) → next state
ROOM: dict[tuple[str, str], str] = {
    ("loading", "loaded"): "live",
    ("loading", "failed"): "closed",
    ("live", "unload"): "unloading",
    ("unloading", "unloaded"): "closed",
}
