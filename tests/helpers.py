"""Helpers that more than one test module uses.

Test modules never import each other (tests/test_test_layout.py checks it):
whatever two suites share lives here, in tests/wire.py (a raw protocol peer)
or in tests/storage_server.py (a server on durable storage).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import polars as pl
import websockets
from websockets.exceptions import ConnectionClosed

from protocol import decode_server
from tests.serving import timeout

__all__ = ["FakeTransport", "brute_diff", "closed_with", "frame", "signed_in"]


class FakeTransport:
    """A transport for a Room in-process: records every payload it is asked to send.

    ``arrived`` is set on each send, so a test waits on sends, never on sleeps.
    """

    def __init__(self) -> None:
        self.sent: list[bytes | str] = []
        self.arrived = asyncio.Event()
        self.closed: tuple[int, str] | None = None

    async def send(self, data: bytes | str) -> None:
        self.sent.append(data)
        self.arrived.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    async def next_of(self, kind: str) -> tuple[bytes | str, object]:
        """The first sent payload (raw and decoded) whose message type is ``kind``; waits for it."""
        seen = 0
        while True:
            for data in self.sent[seen:]:
                seen += 1
                msg = decode_server(data)
                if msg.type == kind:
                    return data, msg
            self.arrived.clear()
            await self.arrived.wait()


def frame(rows: int = 30) -> pl.DataFrame:
    """A frame of the types every file format keeps (JSON has no dates), with some nulls."""
    return pl.DataFrame(
        {
            "name": [f"item{i}" for i in range(rows)],
            "price": [float(i) * 1.5 if i % 7 else None for i in range(rows)],
            "qty": pl.Series([i % 5 for i in range(rows)], dtype=pl.Int64),
            "ok": [i % 2 == 0 for i in range(rows)],
        }
    )


def brute_diff(a: pl.DataFrame, b: pl.DataFrame, renames: dict[str, str]) -> dict[str, Any]:
    """Added/deleted rids and changed cells by plain iteration; ``renames``: old name → new name.

    The reference that the server's diff (JSON and Parquet) is checked against.
    """
    ra, rb = set(a["_rid"].to_list()), set(b["_rid"].to_list())
    ta = {c: a[c].cast(pl.String).to_list() for c in a.columns}
    tb = {c: b[c].cast(pl.String).to_list() for c in b.columns}
    ia = {r: i for i, r in enumerate(a["_rid"].to_list())}
    ib = {r: i for i, r in enumerate(b["_rid"].to_list())}
    changed = set()
    for old_name in a.columns[1:]:
        new_name = renames.get(old_name, old_name)
        if new_name not in b.columns:
            continue
        for rid in sorted(ra & rb):
            va, vb = a[old_name][ia[rid]], b[new_name][ib[rid]]
            if va != vb and not (va is None and vb is None):
                changed.add((rid, new_name, ta[old_name][ia[rid]], tb[new_name][ib[rid]]))
    return {"added": sorted(rb - ra), "deleted": sorted(ra - rb), "changed": changed}


async def signed_in(
    srv: Any, name: str, role: str | None = "viewer", dataset: str = "sales", ttl: float = 3600.0
) -> str:
    """Add user ``name`` to a token server's catalog with ``role`` on ``dataset`` (None: no
    grant), as ``coframe user add`` and ``grant`` do, and return a fresh token for them."""
    from server.storage.auth_types import Grant, User

    auth = srv.app.state.auth
    await auth.store.add_user(User(name, name.title(), created=time.time()))
    if role is not None:
        await auth.store.put_grant(Grant(dataset, name, role))
    return str(await auth.issue(name, ttl))


async def closed_with(url: str, **kw: Any) -> tuple[int, str]:
    """Open a raw WebSocket, say hello, and return how the server closed it (code, reason)."""
    async with websockets.connect(url, **kw) as ws:
        try:
            await ws.send(msgpack.packb({"type": "hello", "id": 0, "client": "raw", "version": 1}))
            while True:
                await asyncio.wait_for(ws.recv(), timeout(10))
        except ConnectionClosed as e:
            assert e.rcvd is not None
            return e.rcvd.code, e.rcvd.reason
    raise AssertionError("not closed")
