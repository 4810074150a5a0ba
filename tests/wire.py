"""A raw protocol peer for tests: speaks frames directly, like a bot would."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from protocol import decode_server, encode_map

__all__ = ["RawPeer"]


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
