"""Convergence: 5 clients, ~300 random ops of every kind, one reconnect mid-run.

Afterwards the server frame, every mirror and a fresh joiner's snapshot are
equal. Rejections (a rename racing a set, a deleted row) are expected and
counted; they must leave no trace.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import polars as pl

from client import OpRejected, Room, connect
from tests.conftest import LiveServer, small_frame, timeout

OPS_PER_CLIENT = 60
DTYPES = ["Int64", "Float64", "String"]


def pick_column(room: Room, rng: random.Random) -> str | None:
    cols = [c for c in room.frame.columns if c != "_rid"]
    return rng.choice(cols) if cols else None


def value_for(room: Room, col: str, rng: random.Random) -> object:
    dtype = room.frame.schema.get(col)
    if dtype is None:
        return None
    if dtype.is_integer():
        return rng.randint(-5, 50)
    if dtype.is_float():
        return rng.choice([None, round(rng.uniform(-10, 10), 2)])
    if dtype == pl.Boolean:
        return rng.random() < 0.5
    return rng.choice(["a", "b", "c", None])


async def one_op(room: Room, rng: random.Random, n: int) -> None:
    rids = room.frame.get_column("_rid").to_list()
    col = pick_column(room, rng)
    kind = rng.choices(
        ["set", "insert", "delete", "delete_where", "add", "drop", "rename", "cast", "fill", "undo"],
        weights=[40, 10, 6, 1, 5, 3, 5, 3, 4, 3],
    )[0]
    if kind == "set" and col and rids:
        rows = rng.sample(rids, min(len(rids), rng.randint(1, 4)))
        await room.set_cells(rows, col, [value_for(room, col, rng) for _ in rows])
    elif kind == "insert":
        cols = [c for c in room.frame.columns if c != "_rid"]
        rows = [{c: value_for(room, c, rng) for c in rng.sample(cols, min(2, len(cols)))} for _ in range(3)]
        await room.insert_rows(rows if cols else [{"name": "x"}])
    elif kind == "delete" and rids:
        await room.delete_rows(rng.sample(rids, 1))
    elif kind == "delete_where" and "qty" in room.frame.columns:
        await room.delete_rows(where=f"qty = {rng.randint(0, 60)}")
    elif kind == "add":
        await room.add_column(f"c{n}_{rng.randint(0, 999)}", rng.choice(DTYPES), default=None)
    elif kind == "drop" and col and len(room.frame.columns) > 3:
        await room.drop_column(col)
    elif kind == "rename" and col:
        await room.rename_column(col, f"{col.split('~')[0]}~{rng.randint(0, 99)}")
    elif kind == "cast" and col:
        await room.cast_column(col, rng.choice(DTYPES), strict=False)
    elif kind == "fill" and col:
        dtype = room.frame.schema.get(col)
        strategy = "forward" if dtype == pl.String else rng.choice(["forward", "zero", "min", "max"])
        await room.fill_null(col, strategy=strategy)
    elif kind == "undo":
        await room.undo()


async def worker(room: Room, seed: int, stats: dict[str, Any], reconnect_at: int | None) -> None:
    rng = random.Random(seed)
    for n in range(OPS_PER_CLIENT):
        if n == reconnect_at:
            await room.drop_connection()
        try:
            await one_op(room, rng, n)
            stats["ok"] += 1
        except OpRejected as e:
            stats[e.code] = stats.get(e.code, 0) + 1
            stats.setdefault("examples", []).append(e.message[:80]) if len(
                stats.get("examples", [])
            ) < 8 else None
        # Jitter to interleave clients; correctness never depends on it.
        await asyncio.sleep(rng.uniform(0, 0.004))


async def test_five_clients_converge(make_server) -> None:  # type: ignore[no-untyped-def]
    async with make_server(frames={"sales": small_frame(200)}) as server:
        await run_convergence(server)


async def run_convergence(server: LiveServer) -> None:
    stats: dict[str, Any] = {"ok": 0}
    rooms = [await connect(server.url, "sales").open() for _ in range(5)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker(r, i, stats, 25 if i == 2 else None) for i, r in enumerate(rooms))),
            timeout(120),
        )
        final = server.room().seq
        for r in rooms:
            await r.wait_for_seq(final)
        truth = server.room().core.state.frame
        assert rooms[2].reconnects >= 1
        for r in rooms:
            assert r.frame.equals(truth), r.client_id
        async with connect(server.url, "sales") as fresh:
            assert fresh.seq == final and fresh.frame.equals(truth)
        assert stats["ok"] >= 150, stats
        assert truth.height >= 50 and truth.width >= 3, truth.shape
        print("convergence stats:", stats, "final seq", final, "shape", truth.shape)
    finally:
        for r in rooms:
            await r.close()
