"""Commits are written while the room goes on: acks never wait for a commit (PROTOCOL.md §13)."""

from __future__ import annotations

import asyncio
from typing import Any

from protocol import Commit, Hello, OpBatch, SetCells, decode_server
from server.rooms import Registry, RoomConfig
from server.storage.service import Storage
from tests.conftest import small_frame, timeout
from tests.helpers import FakeTransport


async def _room(**config: Any) -> tuple[Registry, Any]:
    registry = Registry(RoomConfig(**config), storage=Storage.memory())
    await registry.create("t", small_frame())
    return registry, await registry.open("t")


class _Handle:
    """The room's branch handle with its ``commit`` replaced (the handle has slots)."""

    def __init__(self, real: Any, commit: Any) -> None:
        self._real = real
        self.commit = commit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _gate(room: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the branch's commit write until ``release`` is set; ``entered`` says it started."""
    entered, release = asyncio.Event(), asyncio.Event()
    handle = room.durability.handle
    real = handle.commit

    async def gated(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await real(*args, **kwargs)

    room.durability.handle = _Handle(handle, gated)
    return entered, release


async def _until(t: FakeTransport, done: Any) -> list[Any]:
    """Wait until ``done(messages sent so far)``; return those messages."""
    while True:
        t.arrived.clear()
        msgs = [decode_server(d) for d in t.sent]
        if done(msgs):
            return msgs
        await t.arrived.wait()


async def test_edits_are_acked_while_a_commit_is_written() -> None:
    registry, room = await _room()
    entered, release = _gate(room)
    t = FakeTransport()
    s = room.join(Hello("c"), t, binary=True)
    room.submit(s, OpBatch(1, 0, (SetCells((1,), "qty", (7,)),), id=1))
    room.submit(s, Commit("first", id=2))
    async with asyncio.timeout(timeout(10)):
        await entered.wait()
        # The commit is held; later edits are applied and acked all the same.
        room.submit(s, OpBatch(2, 1, (SetCells((2,), "qty", (8,)),), id=3))
        await room.wait_seq(2)
        await t.next_of("ack")
        assert room.durability.busy and room.seq == 2
        release.set()
        msgs = await _until(t, lambda ms: any(m.type == "committed" and m.re == 2 for m in ms))
    committed = next(m for m in msgs if m.type == "committed" and m.re == 2)
    assert committed.seq == 1  # the state when the commit was asked for
    assert room.durability.uncommitted == 1  # the edit made during the write is not in it
    head = room.durability.handle.head
    assert head.seq == 1 and head.message == "first"
    await registry.close()


async def test_autocommit_runs_in_the_background_and_the_next_one_covers_the_rest() -> None:
    registry, room = await _room(autocommit_ops=2)
    entered, release = _gate(room)
    t = FakeTransport()
    s = room.join(Hello("c"), t, binary=True)
    for i in range(1, 3):
        room.submit(s, OpBatch(i, 0, (SetCells((i,), "qty", (i,)),), id=i))
    async with asyncio.timeout(timeout(10)):
        await entered.wait()
        for i in range(3, 6):  # due again, but one write at a time: no second commit starts yet
            room.submit(s, OpBatch(i, 0, (SetCells((i,), "qty", (i,)),), id=i))
        await room.wait_seq(5)
        assert room.durability.busy and room.durability.uncommitted == 5
        release.set()
        # Once the first write is done, the room looks again and commits the rest.
        msgs = await _until(t, lambda ms: any(m.type == "committed" and m.seq == 5 for m in ms))
    seqs = [m.seq for m in msgs if m.type == "committed"]
    assert seqs[0] < 5 and seqs[-1] == 5 and room.durability.uncommitted == 0
    await registry.close()


async def test_a_failed_write_makes_the_next_commit_rewrite_every_chunk() -> None:
    registry, room = await _room()
    handle = room.durability.handle
    real, calls = handle.commit, []

    async def failing_once(state: Any, seq: int, dirty: Any, **kw: Any) -> Any:
        calls.append(dirty)
        if len(calls) == 1:
            raise OSError("disk full")
        return await real(state, seq, dirty, **kw)

    room.durability.handle = handle = _Handle(handle, failing_once)
    t = FakeTransport()
    s = room.join(Hello("c"), t, binary=True)
    room.submit(s, OpBatch(1, 0, (SetCells((1,), "qty", (7,)),), id=1))
    room.submit(s, Commit("a", id=2))
    async with asyncio.timeout(timeout(10)):
        _, err = await t.next_of("error")
        assert err.code == "internal" and "disk full" in err.message
        room.submit(s, OpBatch(2, 1, (SetCells((2,), "qty", (8,)),), id=3))
        room.submit(s, Commit("b", id=4))
        msgs = await _until(t, lambda ms: any(m.type == "committed" and m.re == 4 for m in ms))
    committed = next(m for m in msgs if m.type == "committed" and m.re == 4)
    assert committed.seq == 2 and calls[1] is None  # every chunk, not only row 2's
    loaded = await registry.storage.state_of(handle.head)
    assert loaded.frame["qty"].to_list()[1:3] == [7, 8]
    await registry.close()


async def test_autocommits_take_at_most_their_share_of_the_time(monkeypatch: Any) -> None:
    """After a commit that took t seconds, the next autocommit waits t * (1/share - 1)."""
    from types import SimpleNamespace

    from server.rooms import durability

    clock = [1000.0]
    monkeypatch.setattr(durability, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    registry, room = await _room(autocommit_ops=2, autocommit_share=0.25)
    handle = room.durability.handle
    real = handle.commit

    async def two_seconds(*args: Any, **kwargs: Any) -> Any:
        clock[0] += 2.0  # the write "takes" 2 s of the room's clock
        return await real(*args, **kwargs)

    room.durability.handle = _Handle(handle, two_seconds)
    t = FakeTransport()
    s = room.join(Hello("c"), t, binary=True)
    committed = lambda seq: lambda ms: any(m.type == "committed" and m.seq == seq for m in ms)  # noqa: E731
    async with asyncio.timeout(timeout(10)):
        for i in (1, 2):
            room.submit(s, OpBatch(i, 0, (SetCells((i,), "qty", (i,)),), id=i))
        await _until(t, committed(2))
        for i in (3, 4):  # due by count, but the last commit took 2 s: wait 2 * (1/0.25 - 1) = 6 s
            room.submit(s, OpBatch(i, 0, (SetCells((i,), "qty", (i,)),), id=i))
        await room.wait_seq(4)
        assert not room.durability.due and room.durability.uncommitted == 2
        assert room.durability.wait() == 6.0
        clock[0] += 5.9
        room.submit(s, OpBatch(5, 0, (SetCells((5,), "qty", (5,)),), id=5))
        await room.wait_seq(5)
        assert not room.durability.due and room.durability.handle.head.seq == 2
        clock[0] += 0.1  # now the share allows it: the next tick commits everything
        room.submit(s, OpBatch(6, 0, (SetCells((6,), "qty", (6,)),), id=6))
        await _until(t, committed(6))
    assert room.durability.uncommitted == 0
    await registry.close()
