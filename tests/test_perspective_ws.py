"""The dashboards' Perspective WebSocket endpoint, ``/perspective/{dataset}`` (issue 4).

A real uvicorn server on port 0 and perspective-python 5.5.1's own
``AsyncClient`` over a real ``websockets`` connection: reads work, every
write is refused with a message and changes nothing (neither the
Perspective table nor the coframe room), and coframe edits reach views
read over the endpoint. The read-only gate itself is tested pure, on bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import perspective
import polars as pl
import pytest
import websockets
from polars.testing import assert_frame_equal
from websockets.asyncio.client import ClientConnection

from client import connect
from server.perspective.endpoint import ReplyQueue
from server.perspective.readonly import (
    ALLOWED,
    DENIED,
    TABLE_REQUESTS,
    VIEW_REQUESTS,
    Gate,
    WireError,
    check_request,
    error_response,
)
from tests.conftest import LiveServer, timeout

GROUPED = {"group_by": ["region"], "columns": ["price"], "aggregates": {"price": "sum"}}


# ---------------------------------------------------------------- pure: the gate


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _request(field: int, msg_id: int = 7, entity: str = "sales/main", body: bytes = b"") -> bytes:
    out = b"\x08" + _varint(msg_id)
    if entity:
        out += b"\x12" + _varint(len(entity)) + entity.encode()
    return out + _varint(field << 3 | 2) + _varint(len(body)) + body


def test_gate_allows_reads_and_refuses_writes() -> None:
    for field in ALLOWED:
        assert check_request(_request(field)).allowed, ALLOWED[field]
    for field, name in DENIED.items():
        d = check_request(_request(field, msg_id=300))
        assert not d.allowed and d.name == name and d.msg_id == 300 and d.entity_id == "sales/main"
    unknown = check_request(_request(49))
    assert not unknown.allowed and "unknown request field 49" in unknown.name
    assert not check_request(b"\x08\x01").allowed  # no request at all
    assert not check_request(_request(4) + _varint(33 << 3 | 2) + b"\x00").allowed  # two requests
    assert set(ALLOWED).isdisjoint(DENIED)
    assert {27, 28, 31, 32, 33} <= set(DENIED)  # make table, delete, remove, replace/clear, update


@pytest.mark.parametrize("frame", [b"\x08", b"\x12\x05ab", b"\x0b", b"\x00\x01", b"\x08" + b"\xff" * 11])
def test_gate_rejects_malformed_frames(frame: bytes) -> None:
    with pytest.raises(WireError):
        check_request(frame)


def _make_view(view_id: str, msg_id: int = 1) -> bytes:
    body = b"\x0a" + _varint(len(view_id)) + view_id.encode()  # TableMakeViewReq{view_id=1}
    return _request(6, msg_id=msg_id, body=body)


def test_gate_scopes_requests_to_the_table_and_own_views() -> None:
    gate = Gate("sales/main")
    assert gate.check(_request(4, entity="")).allowed  # get_hosted_tables
    assert gate.check(_request(8)).allowed  # table_size on the room's table
    other = gate.check(_request(8, entity="other/main"))
    assert not other.allowed and "no table 'other/main'" in other.reason
    stranger = gate.check(_request(24, entity="someone-elses-view"))
    assert not stranger.allowed and "was opened on this connection" in stranger.reason
    assert not gate.check(_request(11, entity="someone-elses-view")).allowed  # cannot delete it either
    assert gate.check(_make_view("v1")).allowed
    assert gate.views == {"v1"}
    for f in sorted(VIEW_REQUESTS, key=lambda f: f == 11):  # view_delete last
        assert gate.check(_request(f, entity="v1")).allowed, VIEW_REQUESTS[f]
    assert gate.views == set()
    assert not gate.check(_request(24, entity="v1")).allowed  # deleted
    assert not gate.check(_request(6, body=b"")).allowed  # a make_view without an id
    for f in TABLE_REQUESTS:
        assert not gate.check(_request(f, entity="")).allowed


def test_error_response_is_a_server_error_for_the_same_request() -> None:
    d = check_request(_request(33, msg_id=2**32 - 1))
    resp = error_response(d)
    # Response{msg_id=1, entity_id=2, server_error=50{message=1}}: read it back with the same reader.
    again = check_request(resp)
    assert again.msg_id == 2**32 - 1 and again.entity_id == "sales/main" and again.field == 50
    assert b"read-only" in resp and b"table_update_req" in resp


async def test_reply_queue_overflow_closes_with_4008() -> None:
    class FakeSocket:
        application_state = None
        sent: list[bytes] = []
        closed: tuple[int, str] | None = None

        async def send_bytes(self, data: bytes) -> None:
            self.sent.append(data)

        async def close(self, code: int, reason: str) -> None:
            self.closed = (code, reason)

    q = ReplyQueue(max_messages=3, max_bytes=1000)
    for i in range(3):
        q.push(bytes([i]))
    assert q.overflow is None
    q.push(b"x")  # the fourth message does not fit
    assert q.overflow is not None and "fell behind" in q.overflow
    q.push(b"y")  # ignored after an overflow
    ws = FakeSocket()
    await asyncio.wait_for(q.run(ws), timeout(5))  # type: ignore[arg-type]
    assert ws.sent == [b"\x00", b"\x01", b"\x02"]  # in order, then the close
    assert ws.closed is not None and ws.closed[0] == 4008

    big = ReplyQueue(max_messages=100, max_bytes=10)
    big.push(b"x" * 50)  # one reply over the byte bound goes out when nothing is queued
    assert big.overflow is None
    big.push(b"y")
    assert big.overflow is not None


# ---------------------------------------------------------------- real server


@asynccontextmanager
async def perspective_client(
    srv: LiveServer, dataset: str = "sales", sent: list[bytes] | None = None
) -> AsyncIterator[Any]:
    """A ``perspective.AsyncClient`` on ``/perspective/{dataset}`` over a real WebSocket.

    Every request frame it sends is appended to ``sent`` when given.
    """
    async with websockets.connect(f"{srv.url}/perspective/{dataset}", max_size=None) as ws:

        async def send(frame: bytes) -> None:
            if sent is not None:
                sent.append(frame)
            await ws.send(frame)

        client = perspective.AsyncClient(send)

        async def pump(conn: ClientConnection) -> None:
            async for msg in conn:
                await client.handle_response(msg)

        reader = asyncio.create_task(pump(ws))
        try:
            yield client
        finally:
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, websockets.ConnectionClosed):
                pass


async def test_lists_only_the_rooms_table_and_reads_a_view(server: LiveServer) -> None:
    async with connect(server.url, "sales") as room:
        expected = room.frame.group_by("region").agg(pl.col("price").sum()).sort("region")
    async with perspective_client(server) as client:
        assert await client.get_hosted_table_names() == ["sales/main"]
        table = await client.open_table("sales/main")
        assert await table.size() == 20
        assert set(await table.columns()) >= {"_rid", "name", "price", "qty", "region"}
        view = await table.view(**GROUPED)
        cols = await view.to_columns()
        got = dict(zip([p[0] for p in cols["__ROW_PATH__"][1:]], cols["price"][1:], strict=True))
        assert got == pytest.approx(dict(zip(expected["region"], expected["price"], strict=True)))
        assert await view.num_rows() == 4  # total + 3 regions
        await view.delete()


async def test_writes_are_refused_and_change_nothing(server: LiveServer) -> None:
    async with connect(server.url, "sales") as room:
        frame_before, seq_before = room.frame, room.seq
    async with perspective_client(server) as client:
        table = await client.open_table("sales/main")
        view = await table.view(**GROUPED)
        flat = await table.view()
        before, rows_before = await view.to_columns(), await flat.to_columns()
        attempts = {
            "table_update_req": lambda: table.update([{"_rid": 0.0, "price": 1e9}]),
            "table_remove_req": lambda: table.remove([0.0, 1.0]),
            "table_replace_req": lambda: table.clear(),
            "table_replace_req ": lambda: table.replace([{"_rid": 0.0, "price": 1.0}]),
            "table_delete_req": lambda: table.delete(),
            "make_table_req": lambda: client.table({"x": [1]}, name="intruder"),
        }
        for name, attempt in attempts.items():
            with pytest.raises(perspective.PerspectiveError, match="read-only") as exc:
                await attempt()
            assert name.strip() in str(exc.value)
        # Nothing reached Perspective: same contents, same tables.
        assert await view.to_columns() == before
        assert await flat.to_columns() == rows_before
        assert await table.size() == 20
        assert await client.get_hosted_table_names() == ["sales/main"]
    # Nor the room: same seq, same frame (read by a fresh coframe client).
    async with connect(server.url, "sales") as room:
        assert room.seq == seq_before
        assert_frame_equal(room.frame, frame_before)


async def test_coframe_edits_reach_views_over_the_endpoint(server: LiveServer) -> None:
    async with perspective_client(server) as client, connect(server.url, "sales") as room:
        table = await client.open_table("sales/main")
        view = await table.view(**GROUPED)
        updated = asyncio.Event()
        await view.on_update(lambda *_: updated.set())
        before = await view.to_columns()
        eu = room.frame.filter(room.frame["region"] == "EU")
        rid = int(eu["_rid"][0])
        await room.set_cells([rid], "price", [1000.0])
        expected = float(eu["price"].fill_null(0).sum()) - (eu["price"][0] or 0.0) + 1000.0
        await asyncio.wait_for(updated.wait(), timeout(10))
        after = await view.to_columns()
        assert after != before
        got = dict(zip([p[0] for p in after["__ROW_PATH__"][1:]], after["price"][1:], strict=True))
        assert got["EU"] == pytest.approx(expected)
        await view.delete()


async def test_a_dashboard_cannot_reach_another_connections_view(server: LiveServer) -> None:
    sent: list[bytes] = []
    async with perspective_client(server, sent=sent) as a:
        view = await (await a.open_table("sales/main")).view(**GROUPED)
        mine = Gate("sales/main")  # replay A's requests to learn its view id
        for frame in sent:
            mine.check(frame)
        (view_id,) = mine.views
        async with websockets.connect(f"{server.url}/perspective/sales") as b:
            for field in (24, 11):  # read it, delete it
                await b.send(_request(field, msg_id=9, entity=view_id))
                reply = await asyncio.wait_for(b.recv(), timeout(10))
                assert check_request(reply).field == 50  # type: ignore[arg-type]
                assert b"was opened on this connection" in reply  # type: ignore[operator]
        assert (await view.to_columns())["price"]  # A's view is still there
        await view.delete()


async def test_unknown_dataset_closes_4004(server: LiveServer) -> None:
    async with websockets.connect(f"{server.url}/perspective/nope") as ws:
        with pytest.raises(websockets.ConnectionClosed) as exc:
            await asyncio.wait_for(ws.recv(), timeout(5))
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 4004
    assert "nope" in exc.value.rcvd.reason


@pytest.mark.parametrize(
    ("frame", "code"),
    [("hello", 1003), (b"\x0b\x00", 1008)],  # a text frame; bytes that are not protobuf
)
async def test_bad_frames_close_the_socket(server: LiveServer, frame: str | bytes, code: int) -> None:
    async with websockets.connect(f"{server.url}/perspective/sales") as ws:
        await ws.send(frame)
        with pytest.raises(websockets.ConnectionClosed) as exc:
            await asyncio.wait_for(ws.recv(), timeout(10))
    assert exc.value.rcvd is not None and exc.value.rcvd.code == code


async def test_unknown_request_gets_an_error_and_the_socket_stays_up(server: LiveServer) -> None:
    async with websockets.connect(f"{server.url}/perspective/sales") as ws:
        await ws.send(_request(49, msg_id=5))
        reply = check_request(await asyncio.wait_for(ws.recv(), timeout(10)))  # type: ignore[arg-type]
        assert (reply.msg_id, reply.field) == (5, 50)
        await ws.send(_request(4, msg_id=6, entity=""))  # get_hosted_tables still answers
        reply = check_request(await asyncio.wait_for(ws.recv(), timeout(10)))  # type: ignore[arg-type]
        assert (reply.msg_id, reply.field) == (6, 4)


async def test_server_shuts_down_with_a_dashboard_connected(make_server: Any) -> None:
    """Closing the app while a dashboard holds views: its session is closed (views deleted) first."""
    srv_ctx = make_server()
    srv = await srv_ctx.__aenter__()
    try:
        async with perspective_client(srv) as client:
            table = await client.open_table("sales/main")
            view = await table.view(**GROUPED)
            await view.to_columns()
            room = srv.room()
            assert room.views.watchers == 1
            await srv_ctx.__aexit__(None, None, None)  # uvicorn closes the socket, then the rooms unload
            srv_ctx = None
            assert room.views.watchers == 0
    finally:
        if srv_ctx is not None:
            await srv_ctx.__aexit__(None, None, None)


async def test_schema_change_resets_dashboards_and_views_carry_on(server: LiveServer) -> None:
    """A dashboard holds views on the table; an add_column rebuilds the table.

    The dashboard's session is closed with 1012 (reconnect), its views deleted, the
    table rebuilt; protocol subscribers get a snapshot with the new column; a
    reconnected dashboard sees it too.
    """
    async with connect(server.url, "sales") as room:
        sub = await room.subscribe_view()
        async with websockets.connect(f"{server.url}/perspective/sales", max_size=None) as ws:
            client = perspective.AsyncClient(ws.send)

            async def pump() -> None:
                async for msg in ws:
                    await client.handle_response(msg)

            reader = asyncio.create_task(pump())
            table = await client.open_table("sales/main")
            view = await table.view(**GROUPED)
            assert (await view.to_columns())["price"]
            await room.add_column("tax", dtype="Float64", default=0.25)
            with pytest.raises(websockets.ConnectionClosed) as exc:
                await asyncio.wait_for(reader, timeout(10))
            assert exc.value.rcvd is not None and exc.value.rcvd.code == 1012
            assert "schema changed" in exc.value.rcvd.reason
        frame = await sub.wait_for(lambda f: "tax" in f.columns)
        assert frame["tax"].to_list() == [0.25] * frame.height
        async with perspective_client(server) as again:
            table = await again.open_table("sales/main")
            assert "tax" in await table.columns()
            assert await table.size() == room.frame.height
