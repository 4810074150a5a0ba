"""Bad input gets a coded error, the room state is unchanged, the socket stays up.

Only lifecycle violations (an op before hello, a second hello) close the
socket, with close code 1008; a frame over the transport limit closes 1009.
"""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from protocol import encode_map
from server.settings import Settings
from tests.conftest import LiveServer
from tests.wire import RawPeer


async def still_up(peer: RawPeer) -> None:
    await peer.send({"type": "ping", "id": "alive"})
    pong = await peer.recv_until("pong")
    assert pong.re == "alive"


def op(cs: int, *ops: dict) -> dict:  # type: ignore[type-arg]
    return {"type": "op", "id": cs, "client_seq": cs, "base_seq": 0, "ops": list(ops)}


@pytest.mark.parametrize("binary", [True, False])
async def test_each_bad_message_gets_an_error_and_changes_nothing(server: LiveServer, binary: bool) -> None:
    peer = await RawPeer.open(server.url, binary=binary)
    await peer.hello("fuzzer")
    before = server.room().core.state.frame
    seq = server.room().seq
    cases: list[tuple[bytes | str | dict, str]] = [
        (b"\xc1\xff garbage", "bad_frame"),
        ("{not json", "bad_frame"),
        ({"type": "launch_missiles"}, "unknown_type"),
        (op(1, {"op": "set", "rows": [0], "col": "price", "values": "cheap"}), "bad_value"),
        (op(2, {"op": "set", "rows": [0], "col": "no_such", "values": 1}), "no_such_column"),
        (op(3, {"op": "set", "rows": [0], "col": "price"}), "bad_field"),
        (op(4, {"op": "explode"}), "bad_op"),
        # An atomic batch whose third op fails: nothing of it applies.
        (
            op(
                5,
                {"op": "set", "rows": [0], "col": "price", "values": 1.0},
                {"op": "insert", "rows": [{"name": "x"}]},
                {"op": "set", "rows": [1], "col": "qty", "values": "many"},
            ),
            "bad_value",
        ),
    ]
    for payload, code in cases:
        if isinstance(payload, dict):
            await peer.send(payload)
        else:
            await peer.send_raw(payload)
        err = await peer.recv_until("error")
        assert err.code == code, (payload, err)
        assert err.message
        await still_up(peer)
    assert server.room().core.state.frame.equals(before)
    assert server.room().seq == seq
    await peer.close()


async def test_third_op_error_names_its_index(server: LiveServer) -> None:
    peer = await RawPeer.open(server.url)
    await peer.hello("bot")
    await peer.send(
        op(
            1,
            {"op": "set", "rows": [0], "col": "price", "values": 1.0},
            {"op": "set", "rows": [1], "col": "price", "values": 2.0},
            {"op": "set", "rows": [2], "col": "qty", "values": "x"},
        )
    )
    err = await peer.recv_until("error")
    assert err.details["op_index"] == 2 and err.message.startswith("ops[2]")
    await peer.close()


async def test_oversized_message_is_rejected_softly(make_server) -> None:  # type: ignore[no-untyped-def]
    async with make_server(Settings(demo=False, max_message_bytes=64 * 1024)) as srv:
        peer = await RawPeer.open(srv.url)
        await peer.hello("big")
        rows = [{"name": "x" * 100} for _ in range(1000)]
        await peer.send(op(1, {"op": "insert", "rows": rows}))
        err = await peer.recv_until("error")
        assert err.code == "too_large" and err.details["limit"] == 64 * 1024
        await still_up(peer)
        assert srv.room().core.state.frame.height == 20
        await peer.close()


async def test_frame_over_transport_limit_closes_1009(make_server) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(demo=False, max_message_bytes=16 * 1024, transport_max_bytes=32 * 1024)
    async with make_server(settings) as srv:
        peer = await RawPeer.open(srv.url)
        await peer.hello("huge")
        await peer.send_raw(b"\x00" * (64 * 1024))
        with pytest.raises(ConnectionClosed) as e:
            await peer.recv(within=10)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009


async def test_too_many_rows_per_op(make_server) -> None:  # type: ignore[no-untyped-def]
    async with make_server(dataclasses.replace(Settings(demo=False), max_rows_per_op=5)) as srv:
        peer = await RawPeer.open(srv.url)
        await peer.hello("bulk")
        await peer.send(op(1, {"op": "set", "rows": list(range(10)), "col": "qty", "values": 1}))
        err = await peer.recv_until("error")
        assert err.code == "too_large" and "split it" in err.message
        await still_up(peer)
        await peer.close()


async def test_op_before_hello_closes_with_policy(server: LiveServer) -> None:
    peer = await RawPeer.open(server.url)
    await peer.send(op(1, {"op": "set", "rows": [0], "col": "qty", "values": 1}))
    err = await peer.recv_until("error")
    assert err.code == "not_joined"
    with pytest.raises(ConnectionClosed) as e:
        await peer.recv()
    assert e.value.rcvd is not None and e.value.rcvd.code == 1008


async def test_second_hello_closes_with_policy(server: LiveServer) -> None:
    peer = await RawPeer.open(server.url)
    await peer.hello("twice")
    await peer.send({"type": "hello", "client": "twice", "version": 1})
    err = await peer.recv_until("error")
    assert err.code == "already_joined"
    with pytest.raises(ConnectionClosed) as e:
        while True:
            await peer.recv()
    assert e.value.rcvd is not None and e.value.rcvd.code == 1008


async def test_unknown_dataset_closes_4004(server: LiveServer) -> None:
    peer = await RawPeer.open(server.url, dataset="nope")
    with pytest.raises(ConnectionClosed) as e:
        await peer.recv()
    assert e.value.rcvd is not None and e.value.rcvd.code == 4004 and "sales" in e.value.rcvd.reason


async def test_wrong_protocol_version(server: LiveServer) -> None:
    peer = await RawPeer.open(server.url)
    await peer.send_raw(msgpack.packb({"type": "hello", "client": "old", "version": 99}))
    err = await peer.recv_until("error")
    assert err.code == "bad_version"


async def test_rate_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    async with make_server(Settings(demo=False, ops_per_second=0.001, ops_burst=3)) as srv:
        peer = await RawPeer.open(srv.url)
        await peer.hello("spammer")
        for i in range(1, 6):
            await peer.send_raw(encode_map(op(i, {"op": "set", "rows": [0], "col": "qty", "values": i})))
        codes = []
        while len(codes) < 5:
            msg = await peer.recv()
            if msg.type in ("ack", "error"):
                codes.append(msg.type if msg.type == "ack" else msg.code)
        assert codes.count("ack") == 3 and codes.count("rate_limited") == 2
        await still_up(peer)
        await peer.close()
