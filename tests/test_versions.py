"""Commits, time travel and branches over the protocol, on every catalog backend.

The memory backend (``--memory``) runs the same tests: history lasts for the
life of the process. Restarts need a persistent backend (``@persistent_only``).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from client import OpRejected, connect
from server.settings import Settings
from tests.conftest import Backend, persistent_only, small_frame
from tests.wire import RawPeer


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return backend.settings(autocommit_ops=1_000_000)


async def test_commit_broadcast_and_time_travel(make_server, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    async with make_server(settings) as srv:
        async with connect(srv.url, "sales") as a, connect(srv.url, "sales") as b:
            await a.set_cells([0, 1], "price", [100.0, 200.0])
            v1 = await a.commit("set two prices")
            await b.wait_for_seq(a.seq)
            committed = b.last_commit
            assert committed is not None and committed.commit == v1 and committed.author == a.client_id
            at_v1 = a.frame
            await a.delete_rows([2, 3])
            await a.rename_column("price", "cost")
            v2 = await a.commit("delete and rename")
            assert v2 != v1
            # Time travel: a read-only room at v1 holds exactly the committed frame.
            async with connect(srv.url, "sales", branch="main") as live:
                assert "cost" in live.frame.columns
            peer = await RawPeer.open(srv.url, f"sales?at={v1[:10]}")
            w = await peer.hello("traveller")
            past = pl.from_arrow(w.snapshot)
            assert isinstance(past, pl.DataFrame) and past.equals(at_v1)
            assert w.role == "viewer"
            async with connect(srv.url, "sales", at=v1) as past_room:
                assert past_room.frame.equals(at_v1) and past_room.role == "viewer"
                with pytest.raises(OpRejected) as ro:
                    await past_room.set_cells([0], "price", 1.0)
                assert ro.value.code == "read_only"
            await peer.send({"type": "op", "id": 1, "client_seq": 1, "base_seq": 0,
                             "ops": [{"op": "set", "rows": [0], "col": "price", "values": 1.0}]})  # fmt: skip
            err = await peer.recv_until("error")
            assert err.code == "read_only"
            await peer.close()


@persistent_only
async def test_commit_trims_the_wal_and_survives_restart(make_server, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    async with make_server(settings) as srv:
        async with connect(srv.url, "sales") as a:
            for i in range(5):
                await a.set_cells([i], "qty", 40 + i)
            storage = srv.registry.storage
            assert len(await storage.catalog.read_wal("sales", "main", 0)) == 5
            await a.commit("five edits")
            final = a.frame
    # Restart on the same data: the state comes back from the commit.
    async with make_server(settings, frames={}) as srv:
        async with connect(srv.url, "sales") as again:
            assert again.frame.equals(final) and again.seq == 5


async def test_branches_are_separate_rooms(make_server, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    async with make_server(settings) as srv:
        storage = srv.registry.storage
        async with connect(srv.url, "sales") as main:
            await main.set_cells([0], "qty", 1)
            base = await main.commit("base")
            await storage.create_branch("sales", "dev", base)
            async with connect(srv.url, "sales", branch="dev") as dev:
                assert dev.frame.equals(main.frame)
                await dev.set_cells([0], "qty", 99)
                await dev.sync()
                await main.sync()
                assert main.frame.get_column("qty")[0] == 1
                assert dev.frame.get_column("qty")[0] == 99
            with pytest.raises(Exception, match="no branch|4004|closed"):
                async with connect(srv.url, "sales", branch="nope", reconnect=False):
                    pass


async def test_memory_mode_commits_branches_tags_and_time_travel(make_server) -> None:  # type: ignore[no-untyped-def]
    """``--memory`` (no data_dir) is a storage backend: versions work for the life of the process."""
    async with make_server(Settings(demo=False)) as srv:
        storage = srv.registry.storage
        assert storage.kind == "memory"
        async with connect(srv.url, "sales") as room:
            v0 = (await room.log())[0]["commit"]
            await room.set_cells([0], "qty", 42)
            v1 = await room.commit("in memory")
            at_v1 = room.frame
            await room.delete_rows([1])
            await storage.create_tag("sales", "v1", v1)
            await storage.create_branch("sales", "dev", "v1")
            assert [e["commit"] for e in await room.log()][:2] == [v1, v0]
            d = await room.diff("v1")
            assert d["deleted"] == [1]
            async with connect(srv.url, "sales", at="v1") as past:
                assert past.frame.equals(at_v1) and past.role == "viewer"
            async with connect(srv.url, "sales", branch="dev") as dev:
                assert dev.frame.equals(at_v1)
                await dev.set_cells([2], "qty", 7)
                assert (await dev.commit("on dev")) != v1
            # Revert main to v0: a new commit whose data is v0's.
            m = await srv.registry.revert("sales", "main", v0, author="test")
        assert (await storage.log("sales"))[0].id == m.id
        async with connect(srv.url, "sales") as again:
            assert again.frame["qty"][0] != 42


async def test_diff_and_log_over_the_protocol(make_server, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    async with make_server(settings) as srv:
        async with connect(srv.url, "sales") as room:
            v0 = (await room.log())[0]["commit"]
            await room.set_cells([1], "price", 123.0)
            rids = await room.insert_rows([{"name": "new"}])
            await room.delete_rows([4])
            await room.rename_column("qty", "quantity")
            v1 = await room.commit("edits")
            log = await room.log()
            assert [e["commit"] for e in log[:2]] == [v1, v0] and log[0]["message"] == "edits"
            d = await room.diff(v0, v1)
            assert d["added"] == rids and d["deleted"] == [4]
            changed = d["changed"].select("rid", "column", "new").to_dicts()
            assert changed == [{"rid": 1, "column": "price", "new": "123.0"}]
            assert [(s["change"], s["name"]) for s in d["schema"]] == [("renamed", "quantity")]
            # Against live: only what happened after the commit.
            await room.set_cells([0], "name", "zero")
            live = await room.diff(v1)
            assert live["changed"].select("rid", "column", "old", "new").to_dicts() == [
                {"rid": 0, "column": "name", "old": "item0", "new": "zero"}
            ]
            with pytest.raises(OpRejected) as e:
                await room.diff("no-such-version")
            assert e.value.code == "not_found"


def _committed_spy(room: Any) -> Any:
    """An event set when ``room`` receives a ``committed`` message."""
    import asyncio

    got = asyncio.Event()
    real = room._dispatch

    def spy(msg: Any) -> None:
        real(msg)
        if msg.type == "committed":
            got.set()

    room._dispatch = spy
    return got


async def test_autocommit_by_ops_time_and_unload(make_server, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import dataclasses

    quick = dataclasses.replace(settings, autocommit_ops=3, autocommit_seconds=3600.0)
    async with make_server(quick) as srv:
        storage = srv.registry.storage
        async with connect(srv.url, "sales") as room:
            committed = _committed_spy(room)
            for i in range(3):
                await room.set_cells([i], "qty", i)
            # Autocommits are written in the background: wait for the room's announcement.
            await asyncio.wait_for(committed.wait(), 30)
            log = await room.log()
            assert log[0]["message"] == "autocommit (ops)" and log[0]["seq"] == 3, log
            assert log[0]["author"] == "coframe"
    # By time: the first uncommitted batch starts a short timer.
    timed = dataclasses.replace(settings, autocommit_ops=1_000_000, autocommit_seconds=0.05)
    async with make_server(timed, frames={"t2": small_frame()}) as srv:
        async with connect(srv.url, "t2") as room:
            got = asyncio.Event()
            seen: list[Any] = []
            real = room._dispatch

            def spy(msg: Any) -> None:
                real(msg)
                if msg.type == "committed":
                    seen.append(msg)
                    got.set()

            room._dispatch = spy  # type: ignore[method-assign]
            await room.set_cells([0], "qty", 7)
            await asyncio.wait_for(got.wait(), 30)
            assert seen[0].message == "autocommit (time)" and seen[0].seq == 1
    # On unload: a room with uncommitted batches commits when it closes.
    lazy = dataclasses.replace(settings, autocommit_ops=1_000_000, autocommit_seconds=3600.0)
    async with make_server(lazy, frames={"t3": small_frame()}) as srv:
        storage = srv.registry.storage
        async with connect(srv.url, "t3") as room:
            await room.set_cells([0], "qty", 8)
        await srv.registry.unload(srv.room("t3"))
        log = await storage.log("t3")
        assert log[0].message == "autocommit (room unload)" and log[0].seq == 1


@persistent_only
async def test_demo_is_a_committed_dataset_on_first_start(make_server, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    with_demo = dataclasses.replace(settings, demo=True, demo_rows=500)
    async with make_server(with_demo, frames={}) as srv:
        log = await srv.registry.storage.log("sales")
        assert [m.message for m in log] == ["demo dataset"] and log[0].rows == 500
    async with make_server(with_demo, frames={}) as srv:  # second start: kept, not re-created
        assert len(await srv.registry.storage.log("sales")) == 1
