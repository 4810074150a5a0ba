"""Hostile requests on the wire, replayed against a real server (issue 10; PROTOCOL.md section 10).

Each attack ran before the limits were in place, and hurt everyone: five
inserts of 1M rows in one 3 KB message, a zstd Arrow IPC payload that
expands to about 190 MiB, a 21 MiB presence frame (the soft limit counted
characters), ``meta`` flooding that made every later welcome huge, and a
request ``id`` outside int64 that ended the connection with a traceback.
Now the attacker gets its error code and keeps its socket, the healthy
client in another room keeps its p99, the server's memory comes back, and
the attacked room is unchanged (tests/hostile.py).

Frames are built by hand: msgpack maps with Arrow IPC bytes, JSON text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pycrdt
import pytest
import websockets
import websockets.sync.client
from websockets.asyncio.client import ClientConnection

from tests.hostile import hostile_server, under_attack

pytestmark = pytest.mark.timeout(600)

MB = 1024 * 1024


def ipc(table: pa.Table, compression: str | None = "zstd") -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def op(cs: int, *ops: dict[str, Any]) -> bytes:
    return msgpack.packb({"type": "op", "id": cs, "client_seq": cs, "base_seq": 0, "ops": list(ops)})


HELLO = msgpack.packb({"type": "hello", "id": 0, "client": "mallory", "version": 1})


@contextlib.asynccontextmanager
async def attacker(url: str) -> AsyncIterator[ClientConnection]:
    """A joined raw socket on ``sales``.

    It says hello in msgpack, so its replies and welcome are msgpack (a JSON
    welcome of the 20,000-row demo takes the server half a second to encode);
    it may still send JSON text frames.
    """
    async with websockets.connect(f"{url}/ws/sales", max_size=None) as ws:
        await ws.send(HELLO)
        while (await recv(ws))["type"] != "welcome":
            pass
        yield ws


async def recv(ws: ClientConnection) -> dict[str, Any]:
    data = await asyncio.wait_for(ws.recv(), 60)
    msg: dict[str, Any] = json.loads(data) if isinstance(data, str) else msgpack.unpackb(data)
    return msg


async def reply_to(ws: ClientConnection, rid: Any) -> dict[str, Any]:
    while True:
        msg = await recv(ws)
        if msg.get("re") == rid and msg["type"] in ("error", "ack", "pong"):
            return msg


async def still_up(ws: ClientConnection) -> None:
    await ws.send(msgpack.packb({"type": "ping", "id": "alive"}))
    assert (await reply_to(ws, "alive"))["type"] == "pong"


def meta_flood(n: int) -> list[bytes]:
    """``n`` meta frames of about 60 KB each (18 MB of history), built before the attack."""
    doc = pycrdt.Doc()
    notes = doc.get("notes", type=pycrdt.Map)
    frames = []
    for i in range(n):
        before = doc.get_state()
        with doc.transaction():
            if i % 2:
                notes["text"] = f"{i}" + "n" * 60_000
            else:
                for k in range(3000):  # many small items: the costly kind to apply
                    notes[f"k{k}"] = i
        update = pycrdt.create_update_message(doc.get_update(before))
        frames.append(msgpack.packb({"type": "meta", "update": update}))
    return frames


async def test_op_attacks_are_refused_up_front(tmp_path: Path) -> None:
    """5 x 1M rows in one message, a zstd bomb, ids outside int64: each its error, nothing applied."""
    rows_1m = ipc(pa.table({"qty": np.zeros(1_000_000, dtype=np.int64)}))
    five = op(1, *[{"op": "insert", "rows": rows_1m}] * 5)
    assert len(five) < 4096
    bomb = ipc(pa.table({"name": pa.array(["x" * 2000] * 100_000, type=pa.large_string())}))
    assert len(bomb) < 400 * 1024  # about 191 MiB once decompressed
    async with hostile_server(tmp_path) as server:
        codes: list[Any] = []

        async def rows_attack() -> None:
            async with attacker(server.url) as ws:
                for i in range(20):
                    await ws.send(op(100 + i, *[{"op": "insert", "rows": rows_1m}] * 5))
                    err = await reply_to(ws, 100 + i)
                    codes.append((err["code"], err["details"].get("rows")))
                await still_up(ws)

        report = await under_attack(server, "5 x 1M rows in one message", rows_attack, room="sales")
        assert set(codes) == {("too_large", 5_000_000)}
        report.check()

        codes.clear()

        async def bomb_attack() -> None:
            async with attacker(server.url) as ws:
                for i in range(20):
                    await ws.send(op(200 + i, {"op": "insert", "rows": bomb}))
                    err = await reply_to(ws, 200 + i)
                    codes.append((err["code"], err["details"].get("limit")))
                await still_up(ws)

        report = await under_attack(server, "zstd bomb", bomb_attack, room="sales")
        assert set(codes) == {("too_large", 64 * MB)}
        report.check()

        codes.clear()

        async def id_attack() -> None:
            async with attacker(server.url) as ws:
                for _ in range(50):
                    for big in (2**63, 10**30, -(10**40)):
                        for kind in ("op", "ping", "presence", "meta"):
                            await ws.send(f'{{"type": "{kind}", "id": {big}}}')
                            err = await recv(ws)
                            codes.append((err["code"], err.get("re"), err["details"].get("field")))
                await ws.send(json.dumps({"type": "ping", "id": "alive"}))
                assert (await recv(ws)) == {"type": "pong", "re": "alive"}  # answered in msgpack
            async with attacker(server.url) as ws:  # msgpack: an unsigned 64-bit id
                await ws.send(msgpack.packb({"type": "ping", "id": 2**64 - 1}))
                err = await recv(ws)
                codes.append((err["code"], err.get("re"), err["details"].get("field")))
                await still_up(ws)

        report = await under_attack(server, "ids outside int64", id_attack, room="sales")
        assert set(codes) == {("bad_field", None, "id")}
        report.check()


async def test_presence_and_meta_attacks_are_bounded(tmp_path: Path) -> None:
    """A 21 MiB presence frame, presence over its limit, meta flooding: bounded, and welcomes stay small."""
    text = '{"type": "presence", "id": 1, "state": {"x": "' + "€" * (7 * MB) + '"}}'
    assert len(text) < 8 * MB < len(text.encode())  # 7M characters, 21 MiB of UTF-8
    huge = text.encode()
    # Under the 8 MiB size limit, but a 4 MiB state: over the 64 KiB presence limit.
    wide = json.dumps(
        {"type": "presence", "id": 2, "state": {"x": "é" * (2 * MB)}}, ensure_ascii=False
    ).encode()
    async with hostile_server(tmp_path) as server:
        codes: list[tuple[str, int]] = []

        def send_presence() -> None:
            # In a thread of its own: framing 21 MiB must not stall the healthy client's loop here.
            with websockets.sync.client.connect(f"{server.url}/ws/sales", max_size=None) as ws:
                ws.send(HELLO)
                while msgpack.unpackb(ws.recv())["type"] != "welcome":
                    pass
                for _ in range(3):  # UTF-8 bytes sent in text frames: encoded once, up front
                    for frame in (huge, wide):
                        ws.send(frame, text=True)
                        err = msgpack.unpackb(ws.recv())
                        codes.append((err["code"], err["details"]["limit"]))
                ws.send(json.dumps({"type": "ping", "id": "alive"}))
                assert msgpack.unpackb(ws.recv())["type"] == "pong"

        async def presence_attack() -> None:
            await asyncio.to_thread(send_presence)

        report = await under_attack(server, "21 MiB presence", presence_attack, room="sales")
        # The frame over the 8 MiB message limit (in bytes), the state over the 64 KiB presence limit.
        assert codes == [("too_large", 8 * MB), ("too_large", 64 * 1024)] * 3
        report.check()

        welcomes: list[int] = []
        seen: dict[str, int] = {}
        flood = meta_flood(300)

        async def meta_attack() -> None:
            async with attacker(server.url) as ws:
                done = asyncio.Event()

                async def drain() -> None:  # read everything (resyncs too), keep nothing
                    with contextlib.suppress(websockets.ConnectionClosed):
                        while True:
                            msg = msgpack.unpackb(await ws.recv())
                            seen[msg["type"]] = seen.get(msg["type"], 0) + 1
                            if msg.get("re") == "done":
                                done.set()

                reader = asyncio.create_task(drain())
                for frame in flood:
                    await ws.send(frame)
                await ws.send(msgpack.packb({"type": "ping", "id": "done"}))
                await asyncio.wait_for(done.wait(), 120)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            async with websockets.connect(f"{server.url}/ws/sales", max_size=None) as late:
                await late.send(msgpack.packb({"type": "hello", "id": 0, "client": "late", "version": 1}))
                while (msg := await recv(late))["type"] != "welcome":
                    pass
                welcomes.append(len(msg["meta"]))

        report = await under_attack(server, "meta flooding", meta_attack, room="sales")
        assert seen.get("welcome", 0) >= 10  # the doc was compacted (and resent) again and again
        assert welcomes and welcomes[0] <= MB + 64 * 1024, f"a welcome's meta is {welcomes[0]} bytes"
        report.check()
