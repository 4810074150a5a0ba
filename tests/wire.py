"""Raw protocol peers for tests: speak frames directly, like a bot would.

:class:`RawPeer` is a websockets client. :class:`MutePeer` is a bare TCP
socket that upgrades, sends masked frames and never reads (a tiny receive
buffer, so TCP backpressure reaches the server at once), like a hostile or
stuck client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode

from protocol import decode_server, encode_map

__all__ = ["RawPeer", "MutePeer"]


class RawPeer:
    """One WebSocket; ``send`` a map (msgpack or JSON), ``recv_until`` a type."""

    def __init__(self, ws: ClientConnection, binary: bool) -> None:
        self.ws = ws
        self.binary = binary
        self.seen: list[Any] = []

    @classmethod
    async def open(cls, url: str, dataset: str = "sales", *, binary: bool = True, **kw: Any) -> RawPeer:
        ws = await connect(f"{url}/ws/{dataset}", max_size=None, **kw)
        return cls(ws, binary)

    async def send(self, d: dict[str, Any]) -> None:
        await self.ws.send(encode_map(d, binary=self.binary))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self, within: float = 10.0) -> Any:
        data = await asyncio.wait_for(self.ws.recv(), within)
        if not self.binary:
            assert isinstance(data, str), "a JSON client must get text frames"
            json.loads(data)
        msg = decode_server(data)
        self.seen.append(msg)
        return msg

    async def recv_until(self, kind: str, within: float = 10.0, **match: Any) -> Any:
        """Receive until a message of ``type == kind`` whose fields match."""
        async with asyncio.timeout(within):
            while True:
                msg = await self.recv(within)
                if msg.type == kind and all(getattr(msg, k) == v for k, v in match.items()):
                    return msg

    async def hello(self, client: str, since: int | None = None) -> Any:
        await self.send({"type": "hello", "id": 0, "client": client, "version": 1, "since": since})
        return await self.recv_until("welcome")

    async def close(self) -> None:
        await self.ws.close()


class MutePeer:
    """A WebSocket peer on a bare socket that sends and never reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str, dataset: str = "sales") -> MutePeer:
        """Connect with a 4 KiB receive buffer and upgrade; nothing is read after the 101."""
        host, port = url.removeprefix("ws://").split(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=s, limit=1024)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws/{dataset} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert response.startswith(b"HTTP/1.1 101"), response
        return cls(reader, writer)

    def send(self, d: dict[str, Any]) -> None:
        """Write one msgpack message as a masked binary frame (the socket buffers it)."""
        data = encode_map(d)
        assert isinstance(data, bytes)
        self.writer.write(Frame(Opcode.BINARY, data).serialize(mask=True, extensions=[]))

    async def hello(self, client: str) -> None:
        """Send ``hello`` and wait for the first bytes of the answer (then read no more)."""
        self.send({"type": "hello", "id": 0, "client": client, "version": 1})
        await self.writer.drain()
        await asyncio.wait_for(self.reader.readexactly(2), 30)

    def abort(self) -> None:
        """Drop the connection (RST): the server sees the peer gone."""
        self.writer.transport.abort()
