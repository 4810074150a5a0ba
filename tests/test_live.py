"""The live room end to end: real uvicorn, the Python client, every op kind."""

from __future__ import annotations

import datetime as dt

import httpx
import polars as pl
import pytest

from client import OpRejected, SyncRoom, connect
from tests.conftest import LiveServer
from tests.wire import RawPeer


def server_frame(srv: LiveServer) -> pl.DataFrame:
    return srv.room().core.state.frame


async def test_healthz_and_datasets(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.http) as http:
        r = await http.get("/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        r = await http.get("/api/datasets")
        [sales] = r.json()
        assert sales["name"] == "sales" and sales["rows"] == 20
        assert [c["name"] for c in sales["columns"]] == ["name", "price", "qty", "region"]


async def test_join_mirror_matches_server(server: LiveServer) -> None:
    async with connect(server.url, "sales") as room:
        assert room.frame.columns == ["_rid", "name", "price", "qty", "region"]
        assert room.frame.equals(server_frame(server))
        assert room.seq == 0


async def test_every_op_reaches_every_mirror(server: LiveServer) -> None:
    async with connect(server.url, "sales") as a, connect(server.url, "sales") as b:
        ack = await a.set_cells([0, 1], "price", [9.5, None])
        assert ack.seq == 1 and ack.overwritten == ()
        rids = await a.insert_rows([{"name": "new", "price": 2.0, "qty": 3, "region": "EU"}])
        assert rids == [20]
        await a.delete_rows([5, 6])
        await a.delete_rows(where="qty = 4")
        await a.add_column("total", expr="price * qty")
        await a.rename_column("total", "amount")
        await a.cast_column("qty", "Int32", strict=True)
        await a.fill_null("price", strategy="mean")
        await a.add_column("flag", "Boolean", default=True)
        await a.drop_column("amount")
        await a.sync()
        await b.wait_for_seq(a.seq)
        expected = server_frame(server)
        assert a.frame.equals(expected) and b.frame.equals(expected)
        # Ten deltas were applied incrementally: the only full load was the join.
        assert a.mirror.snapshots == 1 and b.mirror.snapshots == 1
        assert expected.columns == ["_rid", "name", "price", "qty", "region", "flag"]
        assert expected.schema["qty"] == pl.Int32
        assert expected.get_column("price").null_count() == 0
        assert 20 in expected.get_column("_rid").to_list()
        assert not expected.filter(pl.col("qty") == 4).height


async def test_undo_redo_restore_exactly(server: LiveServer) -> None:
    async with connect(server.url, "sales") as room:
        start = room.frame
        await room.set_cells([1, 2], "price", 100.0)
        await room.delete_rows(where="region = 'EU'")
        await room.drop_column("qty")
        await room.undo()
        await room.undo()
        await room.undo()
        await room.sync()
        assert room.frame.equals(start)
        assert server_frame(server).equals(start)
        await room.redo()
        await room.sync()
        assert "qty" in room.frame.columns and room.frame.filter(pl.col("price") == 100.0).height == 2
        with pytest.raises(OpRejected) as e:
            await room.redo()
            await room.redo()
            await room.redo()
        assert e.value.code == "nothing_to_redo"


async def test_rejections_raise_with_code(server: LiveServer) -> None:
    async with connect(server.url, "sales") as room:
        before = room.frame
        cases = [
            (room.set_cells([0], "price", "cheap"), "bad_value"),
            (room.set_cells([0], "nope", 1.0), "no_such_column"),
            (room.set_cells([999], "price", 1.0), "no_such_row"),
            (room.cast_column("name", "Int64"), "cast_failed"),
            (room.add_column("x", expr="read_csv('/etc/passwd')"), "bad_expr"),
            (room.add_column("price", "Float64"), "column_exists"),
            (room.add_column("_rid", "Int64"), "reserved_name"),
            (room.cast_column("price", "Decimal"), "bad_dtype"),
        ]
        for coro, code in cases:
            with pytest.raises(OpRejected) as e:
                await coro
            assert e.value.code == code, e.value
            assert e.value.message
        assert server_frame(server).equals(before)


async def test_cast_failure_lists_samples(server: LiveServer) -> None:
    async with connect(server.url, "sales") as room:
        with pytest.raises(OpRejected) as e:
            await room.cast_column("name", "Int64", strict=True)
        assert e.value.code == "cast_failed"
        samples = e.value.details["samples"]
        assert 1 <= len(samples) <= 5 and samples[0]["value"].startswith("item")
        await room.cast_column("name", "Int64", strict=False)
        await room.sync()
        assert room.frame.get_column("name").null_count() == 20


async def test_temporal_values_round_trip(make_server) -> None:  # type: ignore[no-untyped-def]
    frame = pl.DataFrame({"day": [dt.date(2024, 1, 1)] * 3, "at": [dt.datetime(2024, 1, 1, 12)] * 3})
    async with make_server(frames={"t": frame}) as srv:
        async with connect(srv.url, "t") as room:
            await room.set_cells([0], "day", dt.date(2025, 2, 3))
            await room.set_cells([1], "at", "2025-02-03T04:05:06")
            await room.sync()
            assert room.frame.get_column("day")[0] == dt.date(2025, 2, 3)
            assert room.frame.get_column("at")[1] == dt.datetime(2025, 2, 3, 4, 5, 6)
            assert room.frame.equals(srv.room("t").core.state.frame)


async def test_json_bot_speaks_text_frames(server: LiveServer) -> None:
    bot = await RawPeer.open(server.url, binary=False)
    welcome = await bot.hello("bot-1")
    assert welcome.seq == 0 and welcome.snapshot.num_rows == 20
    await bot.send(
        {
            "type": "op",
            "id": 7,
            "client_seq": 1,
            "base_seq": 0,
            "ops": [{"op": "set", "rows": [3], "col": "qty", "values": 42}],
        }
    )
    ack = await bot.recv_until("ack")
    assert ack.re == 7 and ack.seq == 1
    delta = await bot.recv_until("delta")
    assert delta.upserts.to_pylist() == [{"_rid": 3, "qty": 42}]
    await bot.close()


def test_sync_room_for_notebooks(server_thread: LiveServer) -> None:
    with SyncRoom(server_thread.url, "sales") as room:
        room.set_cells([0], "qty", 7)
        room.sync()
        assert room.frame.get_column("qty")[0] == 7
        rids = room.insert_rows(pl.DataFrame({"name": ["z"], "qty": [1]}))
        room.sync()
        assert room.frame.filter(pl.col("_rid") == rids[0]).get_column("name").to_list() == ["z"]
