"""The Room in-process, with fake transports: no sockets, no sleeps."""

from __future__ import annotations

import asyncio

from protocol import Hello, OpBatch, SetCells
from server.ops import normalize_frame
from server.ops.state import State
from server.rooms import Room
from tests.conftest import small_frame
from tests.helpers import FakeTransport


def make_room() -> Room:
    df, catalog = normalize_frame(small_frame())
    room = Room("sales", "main", State(df, catalog, df.height))
    room.start()
    return room


async def test_one_delta_encoded_once_for_every_client() -> None:
    room = make_room()
    transports = [FakeTransport() for _ in range(4)]
    sessions = [room.join(Hello(f"c{i}"), t, binary=True) for i, t in enumerate(transports)]
    text = FakeTransport()
    room.join(Hello("json-bot"), text, binary=False)
    room.submit(sessions[0], OpBatch(1, 0, (SetCells((1, 2), "qty", (7, 8)),), id=1))
    deltas = [await asyncio.wait_for(t.next_of("delta"), 10) for t in transports]
    first = deltas[0][0]
    assert all(d[0] is first for d in deltas), "every binary client must get the same bytes object"
    json_delta, msg = await asyncio.wait_for(text.next_of("delta"), 10)
    assert isinstance(json_delta, str)
    assert msg.upserts.to_pylist() == [{"_rid": 1, "qty": 7}, {"_rid": 2, "qty": 8}]
    await room.close()


async def test_a_tick_coalesces_many_messages_into_one_delta() -> None:
    room = make_room()
    t = FakeTransport()
    s = room.join(Hello("bot"), t, binary=True)
    # Queue 50 messages before the loop runs: one tick takes them all.
    for i in range(50):
        room.submit(s, OpBatch(i + 1, 0, (SetCells((i % 20,), "qty", (i,)),), id=i + 1))
    await asyncio.wait_for(room.wait_seq(50), 10)
    _, delta = await asyncio.wait_for(t.next_of("delta"), 10)
    assert (delta.seq_from, delta.seq_to) == (1, 50)
    assert sorted(delta.upserts.column("_rid").to_pylist()) == list(range(20))
    # Last writer wins inside the tick: rid 0 was written by messages 1, 21 and 41.
    assert room.core.state.frame.get_column("qty")[0] == 40
    assert room.ticks == 1
    await room.close()
