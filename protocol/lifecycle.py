"""State machines written down once, as data (PROTOCOL.md section 2, "Lifecycle").

A table maps ``(state, event)`` to the next state; :func:`next_state` is the
only way through it, so the table is what drives a connection, not a
description beside the code. An event missing from the table is illegal: it
raises :class:`IllegalTransition`, carrying the wire error code when the
event is a peer's protocol violation (``violations``) and ``None`` when it is
a mistake of the code driving the machine.

The connection machine lives here, beside the sans-I/O connection core that
consults it (``protocol.server_conn``)::

    connected --hello--> joining --joined--> joined --close--> closed

``joining`` is the time the room takes to accept the hello; the wire sees
``connected --hello--> joined`` as PROTOCOL.md draws it. The client's machine
(``protocol.client_conn``) is one socket at a time, across reconnects::

    disconnected --connect--> connecting --welcome--> live --lost--> disconnected
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ErrorCode

__all__ = ["CONNECTION", "CONNECTION_VIOLATIONS", "CLIENT", "IllegalTransition", "next_state"]

Table = Mapping[tuple[str, str], str]

# (state, event) → next state. Peer events: "hello", "message". Local events:
# "joined" (the room accepted the hello), "close" (a close decision was made).
CONNECTION: dict[tuple[str, str], str] = {
    ("connected", "hello"): "joining",
    ("connected", "close"): "closed",
    ("joining", "joined"): "joined",
    ("joining", "close"): "closed",
    ("joined", "message"): "joined",
    ("joined", "close"): "closed",
}

# Peer events that are illegal in a state, and the error code the peer gets
# before the connection closes with 1008 (PROTOCOL.md section 2).
CONNECTION_VIOLATIONS: dict[tuple[str, str], str] = {
    ("connected", "message"): ErrorCode.NOT_JOINED,
    ("joined", "hello"): ErrorCode.ALREADY_JOINED,
}

# The client side. "message" is any server message but a welcome; "lost" the
# socket closing; "close" the room closing for good. Once closed, late
# messages from the socket being torn down are taken and dropped.
CLIENT: dict[tuple[str, str], str] = {
    ("disconnected", "connect"): "connecting",
    ("disconnected", "close"): "closed",
    ("connecting", "welcome"): "live",
    ("connecting", "message"): "connecting",
    ("connecting", "lost"): "disconnected",
    ("connecting", "close"): "closed",
    ("live", "welcome"): "live",  # a resync after the client fell behind
    ("live", "message"): "live",
    ("live", "lost"): "disconnected",
    ("live", "close"): "closed",
    ("closed", "welcome"): "closed",
    ("closed", "message"): "closed",
    ("closed", "lost"): "closed",
    ("closed", "close"): "closed",
}


class IllegalTransition(Exception):
    """``event`` is not allowed in ``state``.

    ``code`` is the wire error code when the table of violations names one
    (the peer broke the protocol); ``None`` means the driving code misused
    the machine (h11's local/remote split).
    """

    def __init__(self, machine: str, state: str, event: str, code: str | None) -> None:
        super().__init__(f"{machine}: '{event}' is not allowed in state '{state}'")
        self.machine = machine
        self.state = state
        self.event = event
        self.code = code


def next_state(
    table: Table,
    state: str,
    event: str,
    *,
    machine: str,
    violations: Mapping[tuple[str, str], str] | None = None,
) -> str:
    """The state after ``event`` in ``state``, looked up in ``table``.

    Raises:
        IllegalTransition: ``(state, event)`` is not in the table; its
            ``code`` comes from ``violations`` when that names the pair.
    """
    try:
        return table[(state, event)]
    except KeyError:
        code = violations.get((state, event)) if violations is not None else None
        raise IllegalTransition(machine, state, event, code) from None
