"""Live views over the protocol (issue 4, part 2): subscribe, view updates, unsubscribe.

Every test runs a real server on port 0 and the Python client; waits are on
view messages (``LiveView.wait_for``), never on sleeps.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import polars as pl
import psutil
import pytest

from client import OpRejected, connect
from protocol import Hello, OpBatch, SetCells, Subscribe, Unsubscribe, View, decode_server
from server.ops import normalize_frame
from server.ops.state import State
from server.perspective.service import LiveViews
from server.rooms import Room, RoomConfig, SessionLimits
from tests.conftest import small_frame, timeout
from tests.helpers import FakeTransport
from tests.wire import RawPeer

SUM = {"group_by": ["region"], "columns": ["price", "qty"], "aggregates": {"price": "sum", "qty": "sum"}}
# The same sums, sorted: a grouped view with a sort is served by Perspective, not from the frame.
PSUM = {**SUM, "sort": [["region", "asc"]]}


def expected_sums(frame: pl.DataFrame) -> dict[tuple[str, str], float]:
    g = frame.group_by("region").agg(pl.col("price").sum(), pl.col("qty").sum())
    return view_sums(g)


def view_sums(frame: pl.DataFrame) -> dict[tuple[str, str], float]:
    return {
        (r, c): v
        for r, p, q in frame.select("region", "price", "qty").iter_rows()
        for c, v in (("price", p), ("qty", q))
    }


async def test_grouped_view_snapshot_then_live_updates(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(30)}) as srv, connect(srv.url, "sales") as room:
        view = await room.subscribe_view(**SUM)
        assert view_sums(view.frame) == pytest.approx(expected_sums(room.frame))
        assert view.frame.columns == ["region", "price", "qty"]  # group header under its own name, no total
        updates = view.updates()
        ack = await room.set_cells([1, 2], "price", [1000.0, 2000.0])
        ev = await asyncio.wait_for(anext(updates), timeout(10))
        assert ev.kind == "update" and ev.seq == ack.seq
        await room.sync()
        assert view_sums(ev.frame) == pytest.approx(expected_sums(room.frame))
        rids = await room.insert_rows([{"name": "new", "price": 5.0, "qty": 9, "region": "MEA"}])
        await view.wait_for(lambda f: "MEA" in f["region"].to_list())
        await room.delete_rows(rids)
        frame = await view.wait_for(lambda f: "MEA" not in f["region"].to_list())
        await room.sync()
        assert view_sums(frame) == pytest.approx(expected_sums(room.frame))


async def test_plain_view_sends_only_its_viewport(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(500)}) as srv, connect(srv.url, "sales") as room:
        view = await room.subscribe_view(sort=[["qty", "desc"], ["name", "asc"]], viewport=(10, 20))
        want = room.frame.sort(["qty", "name"], descending=[True, False], nulls_last=True).slice(10, 10)
        assert view.rows == 500 and view.frame.height == 10
        assert view.frame["name"].to_list() == want["name"].to_list()
        assert view.frame["_rid"].dtype == pl.UInt64
        default = await room.subscribe_view(columns=["name", "qty"])
        assert default.frame.height == 100 and default.rows == 500  # no viewport: the first 100 rows
        assert default.frame.columns == ["name", "qty"]
        await room.set_cells([int(want["_rid"][0])], "name", ["aaa-moved"])
        await view.wait_for(lambda f: "aaa-moved" not in f["name"].to_list())  # re-sorted out of rows 10-20


async def test_updates_are_coalesced_to_one_per_tick(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(50)}) as srv:
        peer = await RawPeer.open(srv.url, "sales")
        await peer.hello("raw")
        await peer.send({"type": "subscribe", "id": 1, "view": "sums", "config": SUM})
        first = await peer.recv_until("view")
        assert first.kind == "snapshot" and first.re == 1
        n = 300
        for i in range(n):  # no waiting between sends: ticks take many messages each
            ops = [{"op": "set", "rows": [i % 50], "col": "qty", "values": [1000 + i]}]
            await peer.send({"type": "op", "client_seq": i + 1, "base_seq": 0, "ops": ops})
        await peer.recv_until("ack", client_seq=n)
        await peer.recv_until("view", seq=n)  # the last tick's update follows its ack
        deltas = [m for m in peer.seen if m.type == "delta"]
        seqs = [m.seq for m in peer.seen if m.type == "view" and m.kind == "update"]
        assert seqs == sorted(set(seqs)), "at most one update per view per tick"
        assert set(seqs) <= {d.seq_to for d in deltas}, "updates go out with the tick's delta"
        assert len(seqs) == len(deltas)  # every tick changed the sums here
        await peer.close()


async def test_invalid_configs_are_rejected_naming_the_key(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(10)}) as srv, connect(srv.url, "sales") as room:
        before = room.frame
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({"group_by": ["nope"]}, "no_such_column", "config.group_by"),
            ({"columns": ["price", "ghost"]}, "no_such_column", "config.columns"),
            ({"filter": [["ghost", "==", 1]]}, "no_such_column", "config.filter"),
            ({"aggregates": {"price": "bogus"}, "group_by": ["region"]}, "bad_view", "config"),
            ({"filter": [["qty", "~~", 1]]}, "bad_view", "config"),
            ({"sort": [["qty", "sideways"]]}, "bad_view", "config"),
            ({"expressions": {"x": '"ghost" * 2'}, "columns": ["x"]}, "no_such_column", "config.expressions"),
        ]
        for config, code, field in cases:
            with pytest.raises(OpRejected) as e:
                await room.subscribe_view(**config)
            assert e.value.code == code, config
            assert e.value.details["field"] == field, config
            if code == "no_such_column":
                assert e.value.details["column"] in e.value.message
        # Shape errors are caught before anything is sent, naming the key.
        peer = await RawPeer.open(srv.url, "sales")
        await peer.hello("raw")
        await peer.send({"type": "subscribe", "id": 5, "view": "v", "config": {"bogus": 1}})
        err = await peer.recv_until("error")
        assert err.code == "bad_field" and err.details["field"] == "config.bogus"
        assert "config.bogus" in err.message
        await peer.send(
            {"type": "subscribe", "id": 6, "view": "v", "config": {}, "viewport": {"start_row": 5}}
        )
        err = await peer.recv_until("error")
        assert err.details["field"] == "viewport.end_row"
        await peer.close()
        assert srv.room().views.subs == {}
        ok = await room.subscribe_view(group_by=["region"], columns=["qty"], aggregates={"qty": "sum"})
        assert ok.frame.height == 3
        await room.sync()
        assert room.frame.equals(before)


async def test_schema_changes_keep_subscribers(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(12)}) as srv, connect(srv.url, "sales") as room:
        sums = await room.subscribe_view(**SUM)
        plain = await room.subscribe_view(columns=["name", "price"], sort=[["price", "desc"]])
        everything = await room.subscribe_view()
        await room.rename_column("price", "amount")
        frame = await sums.wait_for(lambda f: "amount" in f.columns)
        assert frame.columns == ["region", "amount", "qty"]
        await plain.wait_for(lambda f: f.columns == ["name", "amount"])
        await room.add_column("tax", dtype="Float64", default=0.5)
        await everything.wait_for(lambda f: "tax" in f.columns)
        ack = await room.set_cells([0], "amount", [99.0])
        await sums.wait_for(lambda f: sums.seq >= ack.seq)
        await room.sync()
        want = room.frame.group_by("region").agg(pl.col("amount").sum())
        assert dict(sums.frame.select("region", "amount").iter_rows()) == pytest.approx(
            dict(want.iter_rows())
        )
        await room.drop_column("qty")  # only in sums' columns and aggregates: sums cannot be kept
        with pytest.raises(RuntimeError, match="'qty'.*dropped"):
            await sums.wait_for(lambda f: False)
        assert sums.closed and "dropped" in (sums.reason or "")
        await everything.wait_for(lambda f: "qty" not in f.columns)
        assert not plain.closed and not everything.closed
        await room.cast_column("amount", "Int64", strict=False)
        await plain.wait_for(lambda f: f["amount"].dtype == pl.Int64)
        assert len(srv.room().views.subs) == 2


async def test_unsubscribe_and_leave_delete_views(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(10)}) as srv:
        async with connect(srv.url, "sales") as room:
            a = await room.subscribe_view(**PSUM)
            c = await room.subscribe_view(
                columns=["price"], group_by=["region"], aggregates={"price": "sum"}, sort=[["region", "asc"]]
            )
            b = await room.subscribe_view(
                columns=["qty"]
            )  # plain: served from the frame, no Perspective view
            views = srv.room().views
            assert (await views.process.stats())["sales/main"]["views"] == 2
            await a.close()
            assert a.closed and a.reason == "unsubscribed"
            await views.barrier()
            assert (await views.process.stats())["sales/main"]["views"] == 1
            await c.close()
            updates = b.updates()
            await room.set_cells([0], "qty", [123])
            ev = await asyncio.wait_for(anext(updates), timeout(10))
            assert 123 in ev.frame["qty"].to_list()
            assert a.updates_seen == 1  # its snapshot only
        peer = await RawPeer.open(srv.url, "sales")
        await peer.hello("raw")
        await peer.send({"type": "unsubscribe", "id": 3, "view": "nope"})
        err = await peer.recv_until("error")
        assert err.code == "no_such_view" and err.re == 3
        await peer.send({"type": "subscribe", "id": 4, "view": "x", "config": {}})
        await peer.recv_until("view", re=4)
        await peer.send({"type": "subscribe", "id": 5, "view": "x", "config": {}})
        err = await peer.recv_until("error")
        assert err.code == "view_exists" and err.re == 5
        await peer.close()


async def test_tables_are_lazy_one_per_room_and_hold_only_used_columns(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(10)}) as srv, connect(srv.url, "sales") as room:
        views = srv.room().views
        assert views.built is None  # nobody watches: no Perspective table yet
        await room.set_cells([0], "qty", [1])
        qty = await room.subscribe_view(
            group_by=["region"], columns=["price"], aggregates={"price": "sum"}, sort=[["region", "asc"]]
        )
        held = await views.process.stats()
        assert list(held) == ["sales/main"] and sorted(held["sales/main"]["columns"]) == [
            "_rid",
            "price",
            "region",
        ]
        snapshots = qty.updates()
        await room.subscribe_view(**PSUM)  # needs qty too: the table is rebuilt wider
        held = await views.process.stats()
        assert list(held) == ["sales/main"]
        assert sorted(held["sales/main"]["columns"]) == ["_rid", "price", "qty", "region"]
        assert views.builds == 2
        ev = await asyncio.wait_for(anext(snapshots), timeout(10))  # the first view's fresh snapshot
        assert ev.kind == "snapshot" and ev.frame["price"].sum() == pytest.approx(room.frame["price"].sum())


async def test_view_on_a_zoned_timestamp_keeps_its_zone(make_server: Any) -> None:
    import datetime as dt

    frame = pl.DataFrame(
        {"t": [dt.datetime(2025, 1, 1, 12, 0), dt.datetime(2025, 6, 1, 8, 30)], "v": [1, 2]}
    ).with_columns(pl.col("t").dt.replace_time_zone("Europe/Paris"))
    async with make_server(frames={"tz": frame}) as srv, connect(srv.url, "tz") as room:
        view = await room.subscribe_view(columns=["t", "v"])
        assert view.frame["t"].dtype == pl.Datetime("ms", "Europe/Paris")
        assert view.frame["t"].to_list() == frame["t"].to_list()


def _make_room(i: int, frame: pl.DataFrame, views: LiveViews) -> Room:
    df, catalog = normalize_frame(frame)
    room = Room(f"leak{i}", "main", State(df, catalog, df.height), views=views)
    room.start()
    return room


async def _room_cycle(i: int, frame: pl.DataFrame, views: LiveViews) -> None:
    room = _make_room(i, frame, views)
    t = FakeTransport()
    s = room.join(Hello("c"), t, binary=True)
    room.submit(s, Subscribe("g", dict(SUM), id=1))
    room.submit(s, Subscribe("p", {"sort": [["qty", "desc"]]}, id=2))
    _, snap = await asyncio.wait_for(t.next_of("view"), timeout(30))
    assert isinstance(snap, View) and snap.kind == "snapshot"
    room.submit(s, OpBatch(1, 0, (SetCells((1,), "qty", (5,)),), id=3))
    await asyncio.wait_for(room.wait_seq(1), timeout(30))
    room.submit(s, Unsubscribe("p", id=4))
    await room.leave(s)
    await room.close()
    assert room.views.subs == {} and not room.views.has_table


async def test_fifty_rooms_with_views_do_not_leak() -> None:
    frame = small_frame(20_000)
    proc = psutil.Process()
    views = LiveViews()
    for i in range(10):  # warm-up
        await _room_cycle(i, frame, views)
    gc.collect()
    base = proc.memory_info().rss
    for i in range(50):
        await _room_cycle(100 + i, frame, views)
    gc.collect()
    await views.close()
    growth = proc.memory_info().rss - base
    assert growth < 40 * 2**20, f"RSS grew {growth / 2**20:.1f} MB over 50 rooms with views"


async def test_views_survive_a_reconnect(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(30)}) as srv, connect(srv.url, "sales") as room:
        view = await room.subscribe_view(**SUM)
        await room.drop_connection()  # the client reconnects, resumes and subscribes again
        ack = await room.set_cells([3], "price", [500.0])
        frame = await view.wait_for(lambda f: view.seq >= ack.seq)
        await room.sync()
        assert room.reconnects >= 1
        assert view_sums(frame) == pytest.approx(expected_sums(room.frame))
        assert len(srv.room().views.subs) == 1  # the old connection's view was deleted


async def test_edits_during_the_table_build_are_not_lost(make_server: Any) -> None:
    # Big enough that the build (in a worker thread) overlaps the edits below.
    async with make_server(frames={"sales": small_frame(200_000)}) as srv, connect(srv.url, "sales") as room:
        subscribing = asyncio.ensure_future(room.subscribe_view(**PSUM))
        acks = [await room.set_cells([i], "price", [10_000.0 + i]) for i in range(20)]
        await room.delete_rows([100, 101])
        view = await subscribing
        last = await room.set_cells([7], "qty", [77])
        frame = await view.wait_for(lambda f: view.seq >= last.seq)
        await room.sync()
        assert acks[-1].seq < last.seq
        assert view_sums(frame) == pytest.approx(expected_sums(room.frame))
        assert srv.room().views.builds == 1
        assert srv.room().views.caught_up > 0, "the edits did not overlap the build; make the frame bigger"


def test_sync_room_views(make_server: Any) -> None:
    from client import SyncRoom

    async def serve_and_use() -> None:
        async with make_server(frames={"sales": small_frame(12)}) as srv:
            await asyncio.to_thread(use, srv.url)

    def use(url: str) -> None:
        with SyncRoom(url, "sales") as room:
            view = room.subscribe_view(group_by=["region"], columns=["qty"], aggregates={"qty": "count"})
            assert sorted(view.frame["qty"].to_list()) == [4, 4, 4]
            room.insert_rows([{"name": "x", "price": 1.0, "qty": 1, "region": "EU"}])
            frame = view.wait_for(lambda f: 5 in f["qty"].to_list(), timeout=timeout(10))
            assert dict(frame.iter_rows())["EU"] == 5
            view.close()
            assert view.view.closed

    asyncio.run(serve_and_use())


class GatedTransport(FakeTransport):
    """A transport that stops sending until ``gate`` is set: a client that stalls, then reads again."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, data: bytes | str) -> None:
        await self.gate.wait()
        await super().send(data)


async def _sent_until(t: FakeTransport, done: Any) -> list[Any]:
    """The messages sent to ``t`` once ``done(messages)`` holds (waits on each send, bounded)."""
    async with asyncio.timeout(timeout(10)):
        while True:
            msgs = [decode_server(d) for d in t.sent]
            if done(msgs):
                return msgs
            t.arrived.clear()
            await t.arrived.wait()


async def test_a_resynced_client_gets_fresh_view_snapshots() -> None:
    limits = SessionLimits(max_messages=4, stall_timeout=3600)
    df, catalog = normalize_frame(small_frame(30))
    views = LiveViews()
    room = Room(
        "sales", "main", State(df, catalog, df.height), config=RoomConfig(session=limits), views=views
    )
    room.start()
    t = GatedTransport()
    s = room.join(Hello("slow"), t, binary=True)
    room.submit(s, Subscribe("g", dict(PSUM), id=1))
    # Perspective jobs run one at a time, in order: once this no-op ran, the
    # subscribe (queued first) has opened its view.
    await asyncio.wait_for(room.views.ensure(), timeout(10))
    await asyncio.wait_for(room.views.barrier(), timeout(10))
    assert next(iter(room.views.subs.values())).vkey is not None
    for i in range(5):  # the stalled session overflows: deltas and view updates are dropped
        sets = tuple(SetCells((j,), "qty", (100 * i + j,)) for j in range(8))
        room.submit(s, OpBatch(i + 1, 0, sets, id=100 + i))  # (acks are kept: 5 + 1 < 2 x 4)
        await asyncio.wait_for(room.wait_seq(i + 1), timeout(10))
    assert len(room.views.subs) == 1
    assert s.resync_pending and s.dropped > 0
    t.gate.set()  # it reads again: a resync welcome, then a fresh snapshot of each view
    await asyncio.wait_for(t.next_of("welcome"), timeout(10))
    msgs = [decode_server(d) for d in t.sent]

    def resent(m: Any) -> bool:
        return m.type == "view" and m.kind == "snapshot" and m.re is None

    msgs = await _sent_until(t, lambda msgs: any(resent(m) for m in msgs))
    resync = next(i for i, m in enumerate(msgs) if m.type == "welcome" and m.reason == "resync")
    at = next(i for i, m in enumerate(msgs) if resent(m))
    assert at > resync
    # The views follow the room a little behind it (their own thread): updates up to seq 5 follow.
    msgs = await _sent_until(t, lambda msgs: any(m.type == "view" and m.seq == 5 for m in msgs[resync:]))
    snap = next(m for m in msgs[resync:] if m.type == "view" and m.seq == 5)
    want = room.state.frame.group_by("region").agg(pl.col("qty").sum())
    got = dict(zip(snap.data["region"].to_pylist(), snap.data["qty"].to_pylist(), strict=True))
    assert got == dict(want.iter_rows())
    await room.close()
    await views.close()


async def test_a_view_follows_a_rename_across_a_reconnect(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(10)}) as srv, connect(srv.url, "sales") as room:
        view = await room.subscribe_view(columns=["price"], sort=[["price", "desc"]])
        await room.rename_column("price", "amount")  # the snapshot after it carries the new config
        await view.wait_for(lambda f: "amount" in f.columns)
        assert view.config == {"columns": ["amount"], "sort": [["amount", "desc"]]}
        await room.drop_connection()  # resubscribes with the server's names
        ack = await room.set_cells([0], "amount", [1e6])
        frame = await view.wait_for(lambda f: view.seq >= ack.seq)
        assert not view.closed and frame["amount"][0] == 1e6


async def test_a_view_that_cannot_be_resubscribed_after_a_reconnect_is_closed(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(10)}) as srv, connect(srv.url, "sales") as room:
        view = await room.subscribe_view(columns=["price"])
        updates = view.updates()
        await room.drop_connection()
        again = await asyncio.wait_for(anext(updates), timeout(10))  # resubscribed: a fresh snapshot
        assert again.kind == "snapshot"
        view.config = {"columns": ["ghost"]}  # as if a column had gone while the client was away
        await room.drop_connection()
        with pytest.raises(RuntimeError, match="could not subscribe again.*no_such_column"):
            await view.wait_for(lambda f: False)
        assert view.closed


async def test_a_view_grouped_by_a_column_it_also_aggregates_keeps_unique_names(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(10)}) as srv, connect(srv.url, "sales") as room:
        view = await room.subscribe_view(group_by=["qty"], columns=["qty"], aggregates={"qty": "count"})
        assert view.frame.columns == ["qty (Group by 1)", "qty"]
        counts = dict(view.frame.iter_rows())
        assert counts == dict(room.frame.group_by("qty").len().iter_rows())
        await room.ping()  # the connection is still up
