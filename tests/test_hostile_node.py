"""Hostile clients against the node's shared resources, while a healthy client works (issue 10).

Each attack runs against a real server under ``RLIMIT_AS`` with the harness
of tests/hostile.py: the healthy client's ping and op p99 stay under 250 ms,
the server's RSS grows by at most 500 MB and is back within 100 MB of its
level 10 s after the attacker left. Then:

- 200 joiners of a 200k-row room that never read: they hold at most
  ``max_queued_bytes_total``; the rest are closed with 1013;
- a client that sends requests and never reads its replies is closed 4008
  once they pass twice its byte bound;
- sockets over ``max_unhelloed`` or ``max_connections_per_address`` get
  ``overloaded`` and 1013;
- SIGTERM with a stuck worker: the server commits and exits within
  ``shutdown_timeout``, and ``/healthz`` named the stuck worker before.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from pathlib import Path

import httpx
import msgpack
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from client import connect
from protocol import CloseCode, decode_server
from server.storage.service import Storage
from tests.hostile import MB, hostile_server, under_attack
from tests.procs import start_server
from tests.wire import MutePeer

pytestmark = pytest.mark.timeout(300)


async def _healthz(http: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=http) as client:
        return await client.get("/healthz")


async def test_joiners_that_never_read_hold_at_most_the_budget_and_their_memory_comes_back(
    tmp_path: Path,
) -> None:
    cap = 200 * MB
    args = ("--demo-rows", "200000", "--max-queued-bytes-total", str(cap))
    async with hostile_server(tmp_path, *args) as server:

        async def attack() -> None:
            peers = []
            try:
                for i in range(200):
                    peer = await MutePeer.open(server.url)
                    peers.append(peer)
                    await peer.hello(f"mute{i}")
            finally:
                for peer in peers:
                    peer.abort()

        report = await under_attack(server, "200 joiners that never read", attack, room="sales")
        report.check()
        stats = (await _healthz(server.http)).json()
        assert 0 < stats["queued_bytes_peak"] <= cap, stats
        assert stats["closed_overloaded"] > 0, stats  # the ones that did not fit were closed 1013
        assert stats["queued_bytes"] == 0 and stats["connections"] == 0, stats


async def test_a_client_that_never_reads_its_replies_is_closed_4008(tmp_path: Path) -> None:
    """Big replies (diffs of a changed room) to a client that does not read: bounded by bytes, closed 4008."""
    async with hostile_server(tmp_path, "--send-queue-bytes", str(4 * MB)) as server:

        async def attack() -> None:
            peer = await MutePeer.open(server.url)
            try:
                await peer.hello("mallory")
                for seq in (1, 2):  # 8,000 notes of 800 random characters: about 3.2 MB a batch
                    rids = list(range((seq - 1) * 4000, seq * 4000))
                    notes = [base64.b64encode(os.urandom(600)).decode() for _ in rids]
                    op = {"op": "set", "rows": rids, "col": "note", "values": notes}
                    peer.send({"type": "op", "id": seq, "client_seq": seq, "base_seq": 0, "ops": [op]})
                for i in range(4):  # each reply is the diff of every changed cell: about 6.7 MB
                    peer.send({"type": "query", "id": 10 + i, "kind": "diff", "from": "main"})
                await peer.writer.drain()
                await server.proc.wait_log(r"closing mallory: send queue overflowed with replies", 60)
            finally:
                peer.abort()

        report = await under_attack(server, "requests whose replies are never read", attack)
        report.check()


async def test_sockets_over_the_unhelloed_cap_get_overloaded_and_1013(tmp_path: Path) -> None:
    async with hostile_server(tmp_path, "--max-unhelloed", "8") as server:
        outcomes: list[tuple[str, int]] = []

        async def attack() -> None:
            quiet = [await websockets.connect(f"{server.url}/ws/sales") for _ in range(8)]
            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(12):
                        tg.create_task(_outcome(await websockets.connect(f"{server.url}/ws/sales"), outcomes))
            finally:
                for ws in quiet:
                    await ws.close()

        report = await under_attack(server, "sockets that never say hello", attack)
        assert outcomes == [("max_unhelloed", CloseCode.TRY_AGAIN_LATER)] * 12
        report.check()


async def test_connections_over_the_per_address_cap_get_overloaded_and_1013(tmp_path: Path) -> None:
    async with hostile_server(tmp_path, "--max-connections-per-address", "24") as server:
        outcomes: list[tuple[str, int]] = []

        async def attack() -> None:
            peers = []
            try:
                for i in range(23):  # with the healthy client's: 24 from 127.0.0.1
                    peer = await websockets.connect(f"{server.url}/ws/sales", max_size=None)
                    peers.append(peer)
                    hello = {"type": "hello", "id": 0, "client": f"bot{i}", "version": 1}
                    await peer.send(msgpack.packb(hello))
                async with asyncio.TaskGroup() as tg:
                    for _ in range(10):
                        tg.create_task(_outcome(await websockets.connect(f"{server.url}/ws/sales"), outcomes))
            finally:
                for peer in peers:
                    await peer.close()

        report = await under_attack(server, "connections from one address", attack)
        assert outcomes == [("max_connections_per_address", CloseCode.TRY_AGAIN_LATER)] * 10
        report.check()


async def _outcome(ws: websockets.ClientConnection, outcomes: list[tuple[str, int]]) -> None:
    """The refusal a socket got: the ``overloaded`` error's limit, and the close code."""
    msg = decode_server(await asyncio.wait_for(ws.recv(), 30))
    assert msg.type == "error" and msg.code == "overloaded", msg
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 30)
    assert closed.value.rcvd is not None
    outcomes.append((msg.details["limit"], closed.value.rcvd.code))


async def test_sigterm_commits_and_exits_within_the_timeout_with_a_stuck_worker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = await start_server(
        "--demo-rows", "1000", "--worker-stuck-after", "0", data_dir=data, module="tests.stuck_server"
    )
    try:
        room = await connect(proc.url, "sales", reconnect=False).open()
        seq = (await room.set_cells([0], "qty", [42])).seq  # acked: in the WAL, not in a commit yet
        stuck = asyncio.create_task(room.diff("main"))  # its worker thread never returns
        await proc.wait_log(r"a diff worker is stuck", 30)
        r = await _healthz(proc.http)
        assert r.status_code == 503, r.text
        assert any(w["work"].endswith("_stuck_diff") for w in r.json()["workers_stuck"]), r.json()

        t0 = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        took = time.monotonic() - t0
        print(f"SIGTERM took {took:.2f}s")
        assert took < 15.0, f"SIGTERM took {took:.1f}s"
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        await room.close()
    finally:
        await proc.stop()
    storage = await Storage.for_settings(str(data))
    try:  # the edit was committed on the way out (autocommit first)
        ref = await storage.catalog.get_ref("sales", "main", "branch")
        head = await storage.catalog.get_commit("sales", ref.commit)
        assert head.seq == seq, proc.log[-20:]
    finally:
        await storage.close()
