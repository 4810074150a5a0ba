"""Node-wide caps on WebSocket connections (PROTOCOL.md §10).

One :class:`Node` per server counts its coframe WebSocket connections: all of
them (``max_connections``), those that have not said ``hello`` yet
(``max_unhelloed``) and those from one peer address
(``max_connections_per_address``). :meth:`Node.admit` is asked before a new
socket is served; over a cap the socket is accepted, sent an ``error``
``overloaded`` (a JSON text frame, which every client reads before it has
chosen an envelope) and closed with **1013** (``CloseCode.TRY_AGAIN_LATER``).
It is accepted rather than refused with HTTP 503 at the handshake because a
browser's WebSocket API never shows a refused handshake's status: the close
code and the error are what a client can act on.

The address is the TCP peer's: behind a proxy every client shares the
proxy's address, so raise ``max_connections_per_address`` there.

The node also reports the bytes held for sending by every session (the
:class:`~server.rooms.transport.SendBudget` the rooms charge) and returns memory
to the system after clients leave (:class:`server.memory.Trimmer`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import Error, ErrorCode

from .memory import Trimmer
from .rooms.transport import SendBudget
from .settings import Settings

__all__ = ["Node", "Ticket"]


@dataclass(slots=True)
class Ticket:
    """One admitted connection; ``refused`` is the error to send when it was not admitted."""

    address: str
    refused: Error | None = None
    helloed: bool = False
    released: bool = field(default=False, repr=False)


class Node:
    """The server's connection counts against its caps, and its send budget."""

    def __init__(self, settings: Settings, budget: SendBudget | None = None) -> None:
        self.max_connections = settings.max_connections
        self.max_unhelloed = settings.max_unhelloed
        self.max_per_address = settings.max_connections_per_address
        self.budget = budget  # the rooms' budget (set once the registry exists)
        self.connections = 0
        self.unhelloed = 0
        self.refused = 0  # connections refused since start
        self.by_address: dict[str, int] = {}
        self.trimmer = Trimmer()
        self.changed = asyncio.Event()  # set whenever a count drops (tools and tests wait on it)

    def admit(self, address: str) -> Ticket:
        """Count a new connection from ``address``, or refuse it (``ticket.refused``) if over a cap."""
        refusal = self._refusal(address)
        if refusal is not None:
            self.refused += 1
            return Ticket(address, refused=refusal, released=True)
        self.connections += 1
        self.unhelloed += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return Ticket(address)

    def _refusal(self, address: str) -> Error | None:
        if self.connections >= self.max_connections:
            name, limit, what = "max_connections", self.max_connections, "connections"
        elif self.unhelloed >= self.max_unhelloed:
            name, limit, what = "max_unhelloed", self.max_unhelloed, "sockets that have not said hello"
        elif self.by_address.get(address, 0) >= self.max_per_address:
            name, limit = "max_connections_per_address", self.max_per_address
            what = f"connections from {address}"
        else:
            return None
        why = f"the server is at its limit of {limit} {what}; retry later, with backoff"
        return Error(ErrorCode.OVERLOADED, why, {"limit": name, "value": limit})

    def helloed(self, ticket: Ticket) -> None:
        """The connection said ``hello``: it no longer counts against ``max_unhelloed``."""
        if not ticket.helloed and not ticket.released:
            ticket.helloed = True
            self.unhelloed -= 1
            self.changed.set()

    def release(self, ticket: Ticket) -> None:
        """The connection ended (idempotent): uncount it, and return memory to the system soon."""
        if ticket.released:
            return
        ticket.released = True
        self.connections -= 1
        if not ticket.helloed:
            self.unhelloed -= 1
        left = self.by_address[ticket.address] - 1
        if left:
            self.by_address[ticket.address] = left
        else:
            del self.by_address[ticket.address]
        self.changed.set()
        self.trimmer.soon()

    async def until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` holds, checking it after every drop of a count."""
        while not done():
            self.changed.clear()
            await self.changed.wait()

    def stats(self) -> dict[str, int]:
        """What ``/healthz`` reports about connections and bytes held for sending."""
        budget = self.budget
        return {
            "connections": self.connections,
            "unhelloed": self.unhelloed,
            "refused": self.refused,
            "queued_bytes": 0 if budget is None else budget.used,
            "queued_bytes_peak": 0 if budget is None else budget.peak,
            "max_queued_bytes_total": 0 if budget is None else budget.limit,
            "closed_overloaded": 0 if budget is None else budget.closed,
        }

    def close(self) -> None:
        self.trimmer.close()
