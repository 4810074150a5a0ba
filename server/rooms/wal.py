"""WAL records for a room: encode applied batches, replay them on recovery.

PROTOCOL.md §13: an op batch is acked only once its entry is durable in the
catalog. Entries hold the ops as applied, with column ids resolved, so a
replay from the same commit reproduces the same frame; and the ack, so a
resend after a crash is re-acked instead of applied twice.

Replay goes in runs: consecutive ``set``-only entries are applied in bulk
(:mod:`.setrun`: one coercion and one scatter per column per run), every
other entry one by one as it was applied live. Both give what
:func:`replay_each` (the entry-by-entry reference) gives.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import numpy as np

from protocol import Ack, Op, SetCells, encode_map, op_from_wire

from ..ops import TRUSTED
from ..storage.types import WalEntry
from .core import RoomCore, run_general
from .deltas import DeltaBuilder
from .setrun import NotBulk, SetRun, fast_ack, parse_sets

__all__ = ["make_entry", "decode_ops", "decode_ack", "replay", "replay_each", "put_replies"]

# Entries gathered into one bulk run at most (bounds the run's temporary lists).
RUN_LIMIT = 32_768


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


def put_replies(core: RoomCore, entries: list[WalEntry]) -> None:
    """Remember the stored acks of ``entries`` (the WAL tail below the head commit)."""
    with gc_paused():
        for e in entries:
            core.replies.put_stored(e.client, e.client_seq, e.reply, fast_ack)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block.

    A replay keeps about ten new containers per entry alive (clock writes,
    replies, undo entries), so the collector would rescan a growing heap
    every few hundred entries: measured, that doubled the time of a 100k
    entry replay. Nothing in a replay makes reference cycles.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def replay(core: RoomCore, entries: list[WalEntry]) -> int:
    """Re-apply WAL entries after the loaded commit; return how many.

    The same result as :func:`replay_each`, with runs of ``set``-only entries
    applied in bulk.

    Raises:
        ValueError: a gap in the seqs, or an entry that no longer applies
            (the WAL does not belong to this commit).
    """
    first = core.seq + 1
    gap = _first_gap(first, entries)
    builder = DeltaBuilder()
    with gc_paused():
        i = 0
        while i < gap:
            run, i = _gather(entries, i, gap)
            _finish(core, run, builder)
            if i < gap:  # an entry the bulk path does not take
                replay_one(core, entries[i], builder)
                i += 1
        core.flush()
    if gap < len(entries):
        raise ValueError(f"WAL gap: expected seq {first + gap}, found {entries[gap].seq}")
    return len(entries)


def _first_gap(first: int, entries: list[WalEntry]) -> int:
    """Index of the first entry whose seq is not ``first`` + its index (``len(entries)`` if none).

    Each replayed entry takes the next seq, so this is where the straight replay stops.
    """
    seqs = np.fromiter((e.seq for e in entries), dtype=np.int64, count=len(entries))
    bad = np.flatnonzero(seqs != np.arange(first, first + len(entries), dtype=np.int64))
    return int(bad[0]) if len(bad) else len(entries)


def _gather(entries: list[WalEntry], i: int, end: int) -> tuple[SetRun, int]:
    """The run of ``set``-only ``op`` entries from ``i`` (at most RUN_LIMIT), and where it stops."""
    run = SetRun()
    stop = min(end, i + RUN_LIMIT)
    unpackb = msgpack.unpackb
    while i < stop:
        e = entries[i]
        if e.kind != "op":
            break
        try:
            sets = parse_sets(unpackb(e.ops, raw=False))
            if sets is None:
                break
        except Exception:  # noqa: BLE001 - the straight path raises it in its turn
            break
        if not e.reply or e.reply[0] & 0xF0 != 0x80:  # not a msgpack map: the straight path says why
            break
        run.add(e, sets, e.reply)  # the ack stays encoded until a resend asks for it
        i += 1
    return run, i


def _finish(core: RoomCore, run: SetRun, builder: DeltaBuilder) -> None:
    """Apply a gathered run in bulk, or entry by entry if it cannot be."""
    try:
        run.apply(core)
    except NotBulk:
        for entry in run.entries:
            replay_one(core, entry, builder)


def replay_each(core: RoomCore, entries: list[WalEntry]) -> int:
    """:func:`replay` one entry at a time: the reference the bulk replay is tested against."""
    builder = DeltaBuilder()
    for entry in entries:
        if entry.seq != core.seq + 1:
            raise ValueError(f"WAL gap: expected seq {core.seq + 1}, found {entry.seq}")
        replay_one(core, entry, builder)
    core.flush()
    return len(entries)


def replay_one(core: RoomCore, entry: WalEntry, builder: DeltaBuilder) -> None:
    """Re-apply one entry as the tick applied it, and remember its stored ack."""
    ops = decode_ops(entry)
    if entry.kind == "op" and all(isinstance(o, SetCells) for o in ops):
        # The live hot path: parked in the overlay, one scatter per column
        # at the next flush, instead of a column copy per entry.
        core.apply_sets(entry.client, entry.client_seq, entry.seq - 1, ops, builder)  # type: ignore[arg-type]
    else:
        if entry.kind in ("undo", "redo"):
            _pop_undone(core, entry.client, entry.kind)
        core.flush()
        # An accepted op passed the cost limits when it was applied; a lowered limit
        # must not stop the room loading, so the replay evaluates in process, unchecked.
        result = run_general(core.state, core.clock, entry.client, entry.seq - 1, ops, TRUSTED)
        core.commit_general(entry.client, entry.client_seq, result, builder, entry.kind)
    core.replies.put(entry.client, entry.client_seq, decode_ack(entry))


def _pop_undone(core: RoomCore, client: str, kind: str) -> None:
    """Take the entry an ``undo``/``redo`` consumed off the client's stack, as the tick did.

    The replayed stacks hold only what was pushed since the head commit (a
    suffix of the live stacks), so when the entry undid something older the
    stack is empty here and there is nothing to take.
    """
    stacks = core.stacks(client)
    stack = stacks.undo if kind == "undo" else stacks.redo
    if stack:
        core.pop_undo(client, kind)
