"""A client that never reads: others keep receiving, its queue stays bounded."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

from websockets.frames import Frame, Opcode

from client import connect
from protocol import encode_map
from server.settings import Settings
from tests.conftest import timeout


async def stalled_peer(url: str, client: str) -> asyncio.StreamWriter:
    """A raw TCP peer: WebSocket upgrade, a masked ``hello`` frame, then it never reads.

    Its stream buffer is tiny, so once it stops reading the transport pauses
    and TCP backpressure reaches the server.
    """
    host, port = url.removeprefix("ws://").split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=s, limit=1024)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/sales HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(10))
    assert response.startswith(b"HTTP/1.1 101"), response
    hello = encode_map({"type": "hello", "client": client, "version": 1})
    assert isinstance(hello, bytes)
    writer.write(Frame(Opcode.BINARY, hello).serialize(mask=True, extensions=[]))
    # The room registers the session before it sends the welcome, so once the
    # welcome's first bytes arrive the session exists. Then we stop reading.
    assert await asyncio.wait_for(reader.readexactly(2), timeout(10))
    return writer


async def test_stalled_client_does_not_hold_back_the_room(make_server) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(demo=False, send_queue_messages=16, send_queue_bytes=1 << 20, stall_timeout=3600)
    async with make_server(settings) as srv:
        sock = await stalled_peer(srv.url, "stalled")
        async with connect(srv.url, "sales") as writer, connect(srv.url, "sales") as reader:
            room = srv.room()
            session = room.sessions["stalled"]
            payload = [{"name": "x" * 2000, "qty": i} for i in range(200)]  # ~400 kB per delta
            sent = 0
            # Bounded: push deltas until the stalled session overflowed into resync.
            while not session.resync_pending and sent < 400:
                await writer.insert_rows(payload)
                sent += 1
                assert session.queued <= settings.send_queue_messages
            assert session.resync_pending, f"no overflow after {sent} deltas"
            assert session.dropped > 0
            for _ in range(5):  # while stalled, nothing more piles up for it
                await writer.insert_rows(payload)
                assert session.queued <= settings.send_queue_messages
                assert session.queued_bytes <= settings.send_queue_bytes + 500_000
            # Healthy clients got every delta and match the server exactly.
            await writer.sync()
            await reader.wait_for_seq(writer.seq)
            assert reader.frame.equals(room.core.state.frame)
            assert writer.frame.equals(room.core.state.frame)
            print(f"stalled after {sent} deltas; dropped {session.dropped}; queued {session.queued}")
        sock.transport.abort()


async def test_stalled_client_is_closed_after_the_stall_timeout(make_server) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(demo=False, send_queue_messages=4, send_queue_bytes=1 << 20, stall_timeout=0.0)
    async with make_server(settings) as srv:
        sock = await stalled_peer(srv.url, "stalled")
        async with connect(srv.url, "sales") as writer:
            room = srv.room()
            session = room.sessions["stalled"]
            payload = [{"name": "x" * 2000} for _ in range(200)]
            sent = 0
            while not session.closed and sent < 400:
                await writer.insert_rows(payload)
                sent += 1
            assert session.closed and "fell behind" in (session.close_reason or "")
            assert session.queued == 0
        sock.transport.abort()
