"""Exactly once: a resent (client, client_seq) is acked with its first seq, never reapplied."""

from __future__ import annotations

import asyncio

from client import connect
from tests.conftest import LiveServer, timeout
from tests.wire import RawPeer


async def test_resend_after_forced_disconnect_is_not_applied_twice(server: LiveServer) -> None:
    batch = {
        "type": "op",
        "id": 1,
        "client_seq": 1,
        "base_seq": 0,
        "ops": [{"op": "insert", "rows": [{"name": "once", "qty": 1}]}],
    }
    peer = await RawPeer.open(server.url)
    await peer.hello("bot")
    await peer.send(batch)
    first = await peer.recv_until("ack")
    peer.ws.transport.abort()  # a dropped connection, not a clean close
    rows_after_first = server.room().core.state.frame.height

    again = await RawPeer.open(server.url)
    welcome = await again.hello("bot", since=0)
    assert welcome.resumed
    await again.send(batch)
    second = await again.recv_until("ack")
    assert second.duplicate and second.seq == first.seq and second.rids == first.rids
    assert server.room().core.state.frame.height == rows_after_first
    await again.close()


async def test_client_resends_unacked_ops_once_after_drop(server: LiveServer) -> None:
    async with connect(server.url, "sales") as room:
        start = room.frame.height
        # Ops are in flight while the socket drops; the client resends them
        # after the reconnect's welcome, and the server dedupes.
        tasks = [asyncio.create_task(room.insert_rows([{"name": f"r{i}"}])) for i in range(20)]
        await asyncio.sleep(0)  # let the sends start before the drop (ordering, not a wait)
        await room.drop_connection()
        rids = await asyncio.wait_for(asyncio.gather(*tasks), timeout(20))
        await room.sync()
        assert room.reconnects >= 1
        flat = [r for rs in rids for r in rs]
        assert len(set(flat)) == 20
        assert room.frame.height == start + 20
        assert server.room().core.state.frame.height == start + 20
        assert room.frame.equals(server.room().core.state.frame)


async def test_resume_replays_missed_deltas(server: LiveServer) -> None:
    peer = await RawPeer.open(server.url)
    w = await peer.hello("watcher")
    await peer.close()
    async with connect(server.url, "sales") as writer:
        for i in range(5):
            await writer.set_cells([i], "qty", 100 + i)
    peer = await RawPeer.open(server.url)
    w2 = await peer.hello("watcher", since=w.seq)
    assert w2.resumed and w2.snapshot is None
    seqs = []
    while not seqs or seqs[-1] < 5:
        d = await peer.recv_until("delta")
        seqs.append(d.seq_to)
    assert seqs == [1, 2, 3, 4, 5]
    await peer.close()


async def test_resume_too_old_falls_back_to_snapshot(make_server) -> None:  # type: ignore[no-untyped-def]
    from server.settings import Settings

    async with make_server(Settings(demo=False)) as srv:
        async with connect(srv.url, "sales") as writer:
            srv.room().log.max_entries = 2
            for i in range(6):
                await writer.set_cells([i], "qty", i)
        peer = await RawPeer.open(srv.url)
        w = await peer.hello("late", since=1)
        assert not w.resumed and w.snapshot is not None and w.seq == 6
        await peer.close()
