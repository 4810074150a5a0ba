"""A tick's run of one-``set`` messages, applied as a group, gives what one by one gives.

The group path (server/rooms/setgroup.py) against the same tick with
grouping turned off, over random ticks with every case a group must hand
back: bad rids, bad values, cells repeated in and across messages,
compare-and-set, multi-op messages, resent client_seqs, other clients'
concurrent writes (overwrite reports) and undo. Compared: every reply, every
WAL entry, the frame, the cell clock and the undo stacks.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import polars as pl
import pytest

from protocol import Ack, OpBatch, SetCells
from server.ops import OpError, normalize_frame
from server.ops.state import State
from server.rooms import setgroup, tick
from server.rooms.core import RoomCore
from server.rooms.tick import Batch, apply_batches

ROWS = 60


def _state() -> State:
    df = pl.DataFrame(
        {
            "f": [float(i) if i % 6 else None for i in range(ROWS)],
            "i": pl.Series([i % 7 for i in range(ROWS)], dtype=pl.Int32),
            "s": [f"s{i}" for i in range(ROWS)],
            "d": pl.Series([None if i % 5 == 0 else i for i in range(ROWS)], dtype=pl.Int64).cast(pl.Date),
        }
    )
    frame, catalog = normalize_frame(df)
    return State(frame, catalog, ROWS)


def _op(rng: random.Random) -> SetCells:
    col = rng.choice(["f", "f", "f", "i", "s", "d"])
    rows = rng.sample(range(ROWS), rng.choice([1, 1, 1, 2, 3]))
    if rng.random() < 0.03:
        rows = [*rows, rows[0]]  # a cell twice in one set: bad_op
    if rng.random() < 0.03:
        rows = [ROWS + 5]  # no such row
    roll = rng.random()
    values: list[Any]
    if col == "f":
        values = [rng.uniform(0, 9) for _ in rows] if roll < 0.8 else [rng.randrange(9) for _ in rows]
    elif col == "i":
        values = [rng.randrange(-50, 50) for _ in rows]
    elif col == "s":
        values = [f"v{rng.randrange(99)}" for _ in rows]
    else:
        values = [f"2024-0{rng.randrange(1, 9)}-1{rng.randrange(10)}" for _ in rows]
    if rng.random() < 0.03:
        values[0] = "not a number" if col in ("f", "i") else 2**70  # bad_value
    return SetCells(tuple(rows), col, tuple(values), if_unchanged=rng.random() < 0.03)


def _ticks(seed: int) -> list[list[tuple[str, OpBatch]]]:
    rng = random.Random(seed)
    seqs = {c: 0 for c in "abc"}
    ticks = []
    for _ in range(15):
        msgs = []
        for _ in range(rng.randrange(1, 30)):
            client = rng.choice("abc")
            if rng.random() < 0.05 and seqs[client]:
                cs = seqs[client]  # a resend of the last one
            else:
                seqs[client] += 1
                cs = seqs[client]
            ops = (_op(rng),) if rng.random() < 0.9 else (_op(rng), _op(rng))
            msgs.append((client, OpBatch(cs, rng.randrange(0, 1 + 3 * len(ticks)), ops, id=cs)))
        ticks.append(msgs)
    return ticks


async def _run(ticks: list[list[tuple[str, OpBatch]]]) -> tuple[RoomCore, list[Any], list[Any]]:
    core = RoomCore(_state())
    replies: list[Any] = []
    entries: list[Any] = []
    for msgs in ticks:
        batches = [Batch("op", client, msg, client) for client, msg in msgs]
        done = await apply_batches(core, batches, max_rows=1000)
        core.flush()
        replies += done.replies
        entries += done.entries
    return core, replies, entries


GROUPED: list[int] = []


@pytest.mark.parametrize("seed", range(10))
async def test_a_grouped_tick_equals_the_same_tick_one_message_at_a_time(seed: int, monkeypatch: Any) -> None:
    ticks = _ticks(seed)
    real = setgroup.apply_group

    def counting(*args: Any) -> Any:
        out = real(*args)
        GROUPED.append(len(out))
        return out

    monkeypatch.setattr(tick, "apply_group", counting)
    grouped, g_replies, g_entries = await _run(ticks)
    monkeypatch.setattr(tick, "groupable", lambda *a: False)
    single, s_replies, s_entries = await _run(ticks)
    assert g_replies == s_replies
    assert g_entries == s_entries
    assert grouped.state.frame.equals(single.state.frame)
    assert grouped.seq == single.seq
    for col in grouped.state.catalog.columns:
        for rid in range(ROWS):
            assert grouped.clock.last_write(col.id, rid) == single.clock.last_write(col.id, rid)
    for client in "abc":
        while True:
            try:
                want = single.pop_undo(client, "undo")
            except OpError:
                with pytest.raises(OpError):
                    grouped.pop_undo(client, "undo")
                break
            assert grouped.pop_undo(client, "undo") == want


def test_the_comparison_saw_groups_errors_and_overwrites() -> None:
    """Not vacuous: groups of several messages formed, and the runs met errors and overwrites."""
    import asyncio

    _, replies, _ = asyncio.run(_run([t for s in range(3) for t in _ticks(s)]))
    acks = [r for _, r in replies if isinstance(r, Ack)]
    errors = {r.code for _, r in replies if not isinstance(r, Ack)}
    assert sum(1 for n in GROUPED if n >= 2) >= 20 and max(GROUPED) >= 5, GROUPED
    assert any(a.overwritten for a in acks) and any(a.duplicate for a in acks)
    assert {"bad_op", "no_such_row", "bad_value", "conflict"} <= errors, errors


def test_concurrent_cells_matches_one_writer_at_a_time() -> None:
    from server.rooms.clock import CellClock

    rng = random.Random(3)
    clock = CellClock()
    for seq in range(1, 200):
        clock.record(seq, rng.choice("abc"), 1, sorted(rng.sample(range(50), 3)))
    rids = np.array(rng.choices(range(80), k=300), dtype=np.uint64)
    clients = [rng.choice("abcd") for _ in rids]
    base = np.array([rng.randrange(0, 200) for _ in rids], dtype=np.int64)
    wids = np.array([clock.writers.known(c) for c in clients], dtype=np.int32)
    got = clock.concurrent_cells(1, rids, base, wids)[0].tolist()
    one = [clock.concurrent_at(1, rids[i : i + 1], int(base[i]), clients[i]) for i in range(len(rids))]
    want = [i for i, found in enumerate(one) if len(found[0])]
    assert got == want and got
