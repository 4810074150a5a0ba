"""Exactly-once memory of a room: the reply sent to each ``(client, client_seq)`` (PROTOCOL.md §8)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from protocol import Ack, Error, ErrorCode

__all__ = ["Replies"]


class Replies:
    """Exactly-once memory: (client, client_seq) → the reply sent the first time.

    A reply restored from the WAL may be kept as its stored bytes
    (:meth:`put_stored`) and decoded only if that client_seq comes again:
    recovery then decodes none of the 100,000 acks it restores, only the few
    a resend asks for.
    """

    def __init__(self, per_client: int = 8192, decode: Callable[[bytes], Ack] | None = None) -> None:
        self.per_client = per_client
        self._by_client: dict[str, OrderedDict[int, Ack | Error | bytes]] = {}
        self._max: dict[str, int] = {}
        self._decode = decode

    def get(self, client: str, client_seq: int) -> Ack | Error | None:
        seen = self._by_client.get(client)
        if seen is not None and client_seq in seen:
            reply = seen[client_seq]
            if isinstance(reply, bytes):
                assert self._decode is not None, "stored replies need a decoder"
                reply = seen[client_seq] = self._decode(reply)
            return reply
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

    def put_stored(self, client: str, client_seq: int, reply: bytes, decode: Callable[[bytes], Ack]) -> None:
        """Remember a reply as stored in the WAL (an encoded ack), decoded when first asked for."""
        self._decode = decode
        self.put(client, client_seq, reply)  # type: ignore[arg-type]

    def put(self, client: str, client_seq: int, reply: Ack | Error) -> None:
        seen = self._by_client.setdefault(client, OrderedDict())
        seen[client_seq] = reply
        if client_seq > self._max.get(client, -1):
            self._max[client] = client_seq
        while len(seen) > self.per_client:
            seen.popitem(last=False)
