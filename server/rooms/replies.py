"""Exactly-once memory of a room: the reply sent to each ``(client, client_seq)`` (PROTOCOL.md §8)."""

from __future__ import annotations

from collections import OrderedDict

from protocol import Ack, Error, ErrorCode

__all__ = ["Replies"]


class Replies:
    """Exactly-once memory: (client, client_seq) → the reply sent the first time."""

    def __init__(self, per_client: int = 8192) -> None:
        self.per_client = per_client
        self._by_client: dict[str, OrderedDict[int, Ack | Error]] = {}
        self._max: dict[str, int] = {}

    def get(self, client: str, client_seq: int) -> Ack | Error | None:
        seen = self._by_client.get(client)
        if seen is not None and client_seq in seen:
            return seen[client_seq]
        if client_seq <= self._max.get(client, -1):
            return Error(
                ErrorCode.DUPLICATE_EXPIRED,
                f"client_seq {client_seq} was used before and its reply is no longer kept;"
                " use increasing client_seq values and resend unacked ops promptly",
                {"client_seq": client_seq},
            )
        return None

    def high_water(self) -> dict[str, int]:
        """Highest client_seq seen per client (stored in each commit's manifest)."""
        return dict(self._max)

    def seed(self, high_water: dict[str, int]) -> None:
        """Resends at or below these (from a commit) get ``duplicate_expired``, never re-applied."""
        for client, cs in high_water.items():
            if cs > self._max.get(client, -1):
                self._max[client] = cs

    def put(self, client: str, client_seq: int, reply: Ack | Error) -> None:
        seen = self._by_client.setdefault(client, OrderedDict())
        seen[client_seq] = reply
        if client_seq > self._max.get(client, -1):
            self._max[client] = client_seq
        while len(seen) > self.per_client:
            seen.popitem(last=False)
