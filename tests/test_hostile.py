"""Hostile clients against a real server, while a healthy client works in another room (issue 10).

Each test replays an attack with the harness of tests/hostile.py: the
attacker gets its error code or close code, the healthy client's ping and op
p99 stay under 250 ms, the server's RSS grows by at most 500 MB and returns
within 100 MB of its level 10 s after the attacker has gone, and the attacked
room's state is unchanged. The server runs under ``RLIMIT_AS``.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import websockets

from tests.hostile import hostile_server, under_attack

pytestmark = pytest.mark.timeout(300)


async def test_garbage_frames_are_answered_and_hurt_no_one(tmp_path: Path) -> None:
    """Undecodable frames, unknown types and wrong fields: each gets its error; the socket stays up."""
    async with hostile_server(tmp_path) as server:
        codes: list[str] = []

        async def attack() -> None:
            async with websockets.connect(f"{server.url}/ws/sales", max_size=None) as ws:
                await ws.send(msgpack.packb({"type": "hello", "id": 1, "client": "mallory", "version": 1}))
                while msgpack.unpackb(await ws.recv())["type"] != "welcome":
                    pass
                junk = [b"\xc1\xc1\xc1", msgpack.packb([1, 2]), msgpack.packb({"type": "nope"})]
                junk.append(msgpack.packb({"type": "op", "id": 2, "client_seq": "x", "ops": []}))
                for _ in range(200):
                    for frame in junk:
                        await ws.send(frame)
                seen = 0
                while seen < 200 * len(junk):
                    msg = msgpack.unpackb(await ws.recv())
                    if msg["type"] == "error":
                        codes.append(msg["code"])
                        seen += 1

        report = await under_attack(server, "garbage frames", attack, room="sales")
        assert set(codes) == {"bad_frame", "unknown_type", "bad_field"}
        report.check()
