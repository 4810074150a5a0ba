"""Per-cell (seq, client) metadata: overwrites, compare-and-set, vanished targets."""

from __future__ import annotations

import pytest

from client import OpRejected, connect
from tests.conftest import LiveServer
from tests.wire import RawPeer


def op(client_seq: int, base_seq: int, *ops: dict) -> dict:  # type: ignore[type-arg]
    return {"type": "op", "id": client_seq, "client_seq": client_seq, "base_seq": base_seq, "ops": list(ops)}


async def test_concurrent_overwrite_is_reported(server: LiveServer) -> None:
    alice = await RawPeer.open(server.url)
    bob = await RawPeer.open(server.url)
    await alice.hello("alice")
    await bob.hello("bob")
    await alice.send(op(1, 0, {"op": "set", "rows": [2], "col": "price", "values": 10.0}))
    a1 = await alice.recv_until("ack")
    # Bob has not seen alice's write (base_seq 0) and overwrites the same cell.
    await bob.send(op(1, 0, {"op": "set", "rows": [2, 3], "col": "price", "values": [20.0, 30.0]}))
    b1 = await bob.recv_until("ack")
    assert b1.seq == a1.seq + 1
    [ow] = b1.overwritten
    assert (ow.rid, ow.column, ow.value, ow.by, ow.seq) == (2, "price", 10.0, "alice", a1.seq)
    # Having seen it (base_seq >= alice's seq), a write is not concurrent.
    await bob.send(op(2, b1.seq, {"op": "set", "rows": [2], "col": "price", "values": 21.0}))
    b2 = await bob.recv_until("ack")
    assert b2.overwritten == ()
    # Writing over your own write is never a conflict.
    await alice.send(op(2, 0, {"op": "set", "rows": [2], "col": "price", "values": 11.0}))
    a2 = await alice.recv_until("ack")
    assert [o.by for o in a2.overwritten] == ["bob"]
    assert server.room().core.state.frame.get_column("price")[2] == 11.0
    await alice.close()
    await bob.close()


async def test_compare_and_set_rejects_with_conflict(server: LiveServer) -> None:
    async with connect(server.url, "sales") as a, connect(server.url, "sales") as b:
        await b.set_cells([4], "qty", 99)
        before = server.room().core.state.frame
        # a's base_seq is taken from its mirror; force it stale with a raw batch.
        peer = await RawPeer.open(server.url)
        await peer.hello("carol")
        await peer.send(op(1, 0, {"op": "set", "rows": [4], "col": "qty", "values": 1, "if_unchanged": True}))
        err = await peer.recv_until("error")
        assert err.code == "conflict" and "changed by" in err.message
        assert err.details["cells"][0]["by"] == b.client_id
        assert server.room().core.state.frame.equals(before)
        # With a fresh base_seq the same CAS succeeds.
        await a.wait_for_seq(server.room().seq)
        ack = await a.set_cells([4], "qty", 1, if_unchanged=True)
        assert ack.overwritten == ()
        await peer.close()


async def test_delete_wins_over_concurrent_set(server: LiveServer) -> None:
    async with connect(server.url, "sales") as a, connect(server.url, "sales") as b:
        ack = await a.delete_rows([7])
        with pytest.raises(OpRejected) as e:
            await b.set_cells([7], "price", 1.0)
        assert e.value.code == "no_such_row"
        assert f"deleted at seq {ack.seq}" in e.value.message and a.client_id in e.value.message


async def test_drop_wins_and_rename_is_explained(server: LiveServer) -> None:
    async with connect(server.url, "sales") as a, connect(server.url, "sales") as b:
        ren = await a.rename_column("price", "cost")
        with pytest.raises(OpRejected) as e:
            await b.set_cells([1], "price", 1.0)
        assert e.value.code == "no_such_column"
        assert f"renamed to 'cost' at seq {ren.seq}" in e.value.message
        drop = await a.drop_column("cost")
        with pytest.raises(OpRejected) as e:
            await b.set_cells([1], "cost", 1.0)
        assert e.value.code == "no_such_column" and f"dropped at seq {drop.seq}" in e.value.message
