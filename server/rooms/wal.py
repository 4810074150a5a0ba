"""WAL records for a room: encode applied batches, replay them on recovery.

PROTOCOL.md §13: an op batch is acked only once its entry is durable in the
catalog. Entries hold the ops as applied, with column ids resolved, so a
replay from the same commit reproduces the same frame; and the ack, so a
resend after a crash is re-acked instead of applied twice.
"""

from __future__ import annotations

from typing import Any

import msgpack

from protocol import Ack, Op, SetCells, encode_map, op_from_wire

from ..storage.types import WalEntry
from .core import RoomCore, run_general
from .deltas import DeltaBuilder

__all__ = ["make_entry", "decode_ops", "decode_ack", "replay"]


def make_entry(seq: int, client: str, client_seq: int, kind: str, ops: tuple[Op, ...], ack: Ack) -> WalEntry:
    body = encode_map({"ops": [o.to_wire() for o in ops]}, binary=True)
    reply = encode_map(ack.to_wire(), binary=True)
    assert isinstance(body, bytes) and isinstance(reply, bytes)
    return WalEntry(seq, client, client_seq, kind, body, reply)


def decode_ops(entry: WalEntry) -> tuple[Op, ...]:
    d = msgpack.unpackb(entry.ops, raw=False)
    return tuple(op_from_wire(o, f"wal[{entry.seq}].ops[{i}]", internal=True) for i, o in enumerate(d["ops"]))


def decode_ack(entry: WalEntry) -> Ack:
    d: dict[str, Any] = msgpack.unpackb(entry.reply, raw=False)
    return Ack.from_wire(d)


def replay(core: RoomCore, entries: list[WalEntry]) -> int:
    """Re-apply WAL entries after the loaded commit; return how many.

    Raises:
        ValueError: a gap in the seqs, or an entry that no longer applies
            (the WAL does not belong to this commit).
    """
    builder = DeltaBuilder()
    for entry in entries:
        if entry.seq != core.seq + 1:
            raise ValueError(f"WAL gap: expected seq {core.seq + 1}, found {entry.seq}")
        ops = decode_ops(entry)
        if entry.kind == "op" and all(isinstance(o, SetCells) for o in ops):
            # The live hot path: parked in the overlay, one scatter per column
            # at the next flush, instead of a column copy per entry.
            core.apply_sets(entry.client, entry.client_seq, entry.seq - 1, ops, builder)  # type: ignore[arg-type]
        else:
            core.flush()
            result = run_general(core.state, core.clock, entry.client, entry.seq - 1, ops)
            core.commit_general(entry.client, entry.client_seq, result, builder, entry.kind)
        core.replies.put(entry.client, entry.client_seq, decode_ack(entry))
    core.flush()
    return len(entries)
