"""Per-user limits (issue 12 §4): connections and op messages per second, across a user's connections."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest
import websockets

from client import connect
from client.errors import OpRejected
from protocol import CloseCode
from server.settings import Settings
from tests.conftest import timeout
from tests.helpers import signed_in


async def test_a_users_connections_and_op_rate_are_capped_across_connections(make_server: Any) -> None:
    settings = Settings(demo=False, max_connections_per_user=2, user_ops_per_second=0.001, user_ops_burst=3)
    async with make_server(settings, auth="token") as srv:
        una, other = (
            await signed_in(srv, "una", "editor", ttl=600),
            await signed_in(srv, "otto", "editor", ttl=600),
        )
        async with connect(srv.url, "sales", token=una) as a, connect(srv.url, "sales", token=una) as b:
            async with websockets.connect(f"{srv.url}/ws/sales?token={una}") as third:
                err = json.loads(await asyncio.wait_for(third.recv(), timeout(10)))
                assert err["code"] == "too_many" and err["details"]["limit"] == "max_connections_per_user"
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(third.recv(), timeout(10))
                assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.TRY_AGAIN_LATER
            # Three op messages in all, whichever connection sends them; the fourth is refused.
            await a.set_cells([0], "qty", [1])
            await b.set_cells([1], "qty", [2])
            await a.set_cells([2], "qty", [3])
            with pytest.raises(OpRejected) as e:
                await b.set_cells([3], "qty", [4])
            assert e.value.code == "rate_limited" and "across all" in e.value.message
            assert srv.room().state.frame["qty"][3] != 4
            async with connect(srv.url, "sales", token=other) as o:  # another user has their own budget
                await o.set_cells([3], "qty", [5])
        # Both connections closed: una may connect again (the server counts a connection down when its
        # endpoint returns, a moment after the close handshake: each try is a full round trip).
        for _ in range(50):
            async with websockets.connect(f"{srv.url}/ws/sales?token={una}") as again:
                await again.send(msgpack.packb({"type": "hello", "id": 0, "client": "c", "version": 1}))
                first = await asyncio.wait_for(again.recv(), timeout(10))
                if isinstance(first, bytes) and msgpack.unpackb(first)["type"] == "welcome":
                    break
        else:
            raise AssertionError("una's closed connections were never counted down")
