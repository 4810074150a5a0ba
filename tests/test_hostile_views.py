"""Hostile clients of live views and queries, against a real server, while a healthy client works
(issue 10; the harness is tests/hostile.py).

Replays of what an attacker found: a vector expression that escaped
Perspective's loop limit and, subscribed in six rooms, took every thread of
the default executor; 30 sorted views on one connection; 150 ``diff`` queries
from a client that never reads. Each attacker gets its error code, the
healthy client's p99 holds, RSS stays bounded and comes back, and the
attacked room's state is unchanged.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import msgpack
import pytest
import websockets

from client import OpRejected, connect
from tests.hostile import hostile_server, under_attack

pytestmark = pytest.mark.timeout(300)

VECTOR = "var v[10000000] := {0}; for (var i := 0; i < 10000000; i += 1) { v[i] := i }; sum(v)"


async def test_a_vector_expression_in_six_rooms_is_refused(tmp_path: Path) -> None:
    async with hostile_server(tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.http) as http:
            for i in range(5):
                r = await http.post("/api/datasets/sales/branches", json={"name": f"b{i}", "from": "main"})
                assert r.status_code == 201, r.text
        branches = ["main", *(f"b{i}" for i in range(5))]
        codes: list[str] = []

        async def one_room(branch: str) -> None:
            async with connect(server.url, "sales", branch=branch) as room:
                for _ in range(3):
                    with pytest.raises(OpRejected) as e:
                        await room.subscribe_view(expressions={"v": VECTOR}, columns=["v"])
                    codes.append(e.value.code)

        async def attack() -> None:
            await asyncio.gather(*(one_room(b) for b in branches))

        report = await under_attack(server, "vector expression in six rooms", attack, room="sales")
        assert codes == ["bad_view"] * 18
        report.check()
        async with connect(server.url, "sales") as room:  # Perspective still serves views
            view = await room.subscribe_view(group_by=["region"], columns=["qty"], aggregates={"qty": "sum"})
            assert view.frame.height == 5


async def test_thirty_sorted_views_on_one_connection_stop_at_the_limit(tmp_path: Path) -> None:
    async with hostile_server(tmp_path) as server:
        outcomes: list[str] = []
        columns = ["order_id", "price", "qty", "discount", "region", "product", "date", "updated_at"]

        async def attack() -> None:
            async with connect(server.url, "sales") as room:
                for i in range(30):
                    col = columns[i % len(columns)]
                    try:
                        await room.subscribe_view(sort=[[col, "desc" if i % 2 else "asc"]], viewport=(0, 50))
                        outcomes.append("open")
                    except OpRejected as e:
                        assert e.details["limit"] == "max_views_per_connection"
                        outcomes.append(e.code)
                await room.ping()  # the socket stayed up

        report = await under_attack(server, "30 sorted views on one connection", attack, room="sales")
        assert outcomes == ["open"] * 16 + ["too_many"] * 14
        report.check()


async def test_diff_queries_from_a_client_that_never_reads_are_bounded(tmp_path: Path) -> None:
    async with hostile_server(tmp_path) as server:
        async with connect(server.url, "sales") as room:  # a big diff: every row's note changed
            first = (await room.log())[-1]["commit"]
            rids = room.frame["_rid"].to_list()
            await room.set_cells(rids, "note", [f"{i:08d}" + "x" * 40 for i in range(len(rids))])
        n = 150
        replies: dict[int, str] = {}

        async def attack() -> None:
            # max_queue=1: the client's library stops reading the socket after one frame.
            async with websockets.connect(f"{server.url}/ws/sales", max_size=None, max_queue=1) as ws:
                await ws.send(msgpack.packb({"type": "hello", "id": "h", "client": "mallory", "version": 1}))
                for i in range(n):  # sent without reading anything
                    query = {"type": "query", "id": i, "kind": "diff", "from": first, "to": "live"}
                    await ws.send(msgpack.packb(query))
                while len(replies) < n:  # now it reads: one reply per query
                    msg = msgpack.unpackb(await ws.recv())
                    if msg.get("re") in range(n) and msg["type"] in ("result", "error"):
                        assert msg["re"] not in replies
                        replies[msg["re"]] = msg["type"] if msg["type"] == "result" else msg["code"]

        report = await under_attack(server, "150 diffs, never read", attack, room="sales")
        refused = [i for i, what in replies.items() if what == "too_many"]
        assert set(replies.values()) == {"result", "too_many"}
        assert len(refused) >= n - 20, f"only {len(refused)} of {n} queries were refused"
        report.check()
