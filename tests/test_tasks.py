"""Structured concurrency: every task has an owner that ends it, and no task outlives its owner.

In-process (no sockets); waits are on events, never on sleeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

from protocol import Hello
from server.rooms import Registry, Room
from server.storage.service import Storage
from tests.conftest import small_frame, timeout
from tests.helpers import FakeTransport


class WatchedRegistry(Registry):
    """A registry that says when an unload starts."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.unloading = asyncio.Event()

    async def unload(self, room: Room) -> None:
        self.unloading.set()  # the waiter resumes once this unload has reached its first wait
        await super().unload(room)


def _unload_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("unload:")]


async def test_registry_close_waits_for_an_idle_unload_under_way() -> None:
    registry = WatchedRegistry(idle_unload=0, storage=Storage.memory())
    await registry.create("t", small_frame())
    room = await registry.open("t")
    session = room.join(Hello("c"), FakeTransport(), binary=True)
    await room.leave(session)  # the room is empty: it unloads after idle_unload (0 s)
    async with asyncio.timeout(timeout(10)):
        await registry.unloading.wait()
    assert ("t", "main") not in registry.rooms and _unload_tasks()  # the unload is under way
    await registry.close()
    assert not _unload_tasks(), "close() returned while an idle unload was still running"
    assert room.lifecycle == "closed"
