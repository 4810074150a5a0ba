"""Through a real server and the Python client: fast views follow sets, inserts and deletes.

A grouped ``max``/``min`` view, a sorted viewport and a split view are
served from the room's frame and moved step by step (tests/test_fast_follow.py
checks the engine in-process); here their last frames must equal what the
room's own frame says, after a random stream of edits, inserts and deletes.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import polars as pl

from client import connect
from tests.conftest import small_frame


async def test_fast_views_follow_edits_inserts_and_deletes(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(60)}) as srv, connect(srv.url, "sales") as room:
        extremes = await room.subscribe_view(
            group_by=["region"], columns=["price", "qty"], aggregates={"price": "max", "qty": "min"}
        )
        top = await room.subscribe_view(columns=["name", "price"], sort=[["price", "desc"]], viewport=(0, 5))
        split = await room.subscribe_view(
            group_by=["region"], split_by=["qty"], columns=["price"], aggregates={"price": "sum"}
        )
        views = srv.room().views
        assert all(s.fast is not None for s in views.subs.values())  # all three served from the frame
        rng = random.Random(3)

        def expected(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[Any]]:
            agg = frame.group_by("region").agg(pl.col("price").max(), pl.col("qty").min()).sort("region")
            ordered = frame.sort(["price", "_rid"], descending=[True, False], nulls_last=True)
            return agg, ordered["price"][:5].to_list()

        for _ in range(80):
            rids = room.frame["_rid"].to_list()
            pick = rng.random()
            if pick < 0.15:
                row = {"name": ["new"], "price": [rng.random() * 200], "qty": [rng.randint(0, 4)]}
                await room.insert_rows(pl.DataFrame({**row, "region": [rng.choice(["EU", "US", "APAC"])]}))
            elif pick < 0.3:
                await room.delete_rows([rng.choice(rids)])
            else:
                await room.set_cells([rng.choice(rids)], "price", [rng.random() * 200])
            want, prices = expected(room.frame)
            async with asyncio.timeout(10):  # every edit shows in both views
                await extremes.wait_for(lambda f, w=want: f.sort("region").select(w.columns).equals(w))
                await top.wait_for(lambda f, p=prices: f["price"].to_list() == p)
        sums = room.frame.group_by("region", "qty").agg(pl.col("price").sum())

        def split_ok(f: pl.DataFrame) -> bool:  # columns "<qty>|price", a sum per (region, qty)
            got = {
                (row["region"], int(c.split("|")[0])): v
                for row in f.iter_rows(named=True)
                for c, v in row.items()
                if c != "region" and v is not None
            }
            want = {(r, q): s for r, q, s in sums.iter_rows()}
            return got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-9 for k in want)

        async with asyncio.timeout(10):
            await split.wait_for(split_ok)
        assert views.full_reads < 3 + 40  # the first reads, then only when a step could not follow
