"""Lifecycles written down once, as data (STYLE.md section 3).

A connection: ``connected`` --hello--> ``joined`` --close--> ``closed``.
A room: ``loading`` --> ``live`` --> ``unloading`` --> ``closed``.
Any event not in a table is a violation of that machine.
"""

from __future__ import annotations

from protocol import ErrorCode

__all__ = ["CONNECTION", "ROOM", "next_state", "IllegalTransition"]

# (state, event) → next state
CONNECTION: dict[tuple[str, str], str] = {
    ("connected", "hello"): "joined",
    ("connected", "close"): "closed",
    ("joined", "message"): "joined",
    ("joined", "close"): "closed",
}

ROOM: dict[tuple[str, str], str] = {
    ("loading", "loaded"): "live",
    ("loading", "failed"): "closed",
    ("live", "unload"): "unloading",
    ("unloading", "unloaded"): "closed",
}

# Why an event is illegal in a state, for connection errors.
VIOLATIONS: dict[tuple[str, str], str] = {
    ("connected", "message"): ErrorCode.NOT_JOINED,
    ("joined", "hello"): ErrorCode.ALREADY_JOINED,
}


class IllegalTransition(Exception):
    def __init__(self, machine: str, state: str, event: str, code: str | None) -> None:
        super().__init__(f"{machine}: '{event}' is not allowed in state '{state}'")
        self.code = code


def next_state(table: dict[tuple[str, str], str], state: str, event: str, *, machine: str) -> str:
    """The state after ``event``, or raise IllegalTransition."""
    try:
        return table[(state, event)]
    except KeyError:
        raise IllegalTransition(machine, state, event, VIOLATIONS.get((state, event))) from None
