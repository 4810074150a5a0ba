"""Per-user limits (issue 12 §4): connections, op messages per second, upload bytes and expression
length, each across all of a user's connections and requests on the node."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgpack
import pytest
import websockets

from client import connect
from client.errors import OpRejected
from protocol import CloseCode
from server.perspective.readonly import check_request
from server.settings import Settings
from server.storage.auth_types import User
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


# ---------------------------------------------------------------- upload bytes per user


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _creator(srv: Any, name: str) -> str:
    """A user who may upload new datasets, and a token for them."""
    auth = srv.app.state.auth
    await auth.store.add_user(User(name, name.title(), can_create=True, created=time.time()))
    return str(await auth.issue(name, 600))


def _csv(rows: int) -> bytes:
    return b"a,b\n" + b"".join(b"%d,value-%06d\n" % (i, i) for i in range(rows))


async def test_a_users_upload_bytes_are_budgeted_across_their_uploads(make_server: Any) -> None:
    budget = 4096
    settings = Settings(demo=False, user_upload_bytes_per_hour=budget)
    async with make_server(settings, auth="token") as srv, httpx.AsyncClient(base_url=srv.http) as http:
        una, otto = await _creator(srv, "una"), await _creator(srv, "otto")
        first = _csv(140)  # about 2.3 KB: fits once
        assert budget // 2 < len(first) < budget
        r = await http.post("/api/datasets/first?format=csv", content=first, headers=_bearer(una))
        assert r.status_code == 201, r.text
        # The second no longer fits: refused from its Content-Length, before a byte is read.
        r = await http.post("/api/datasets/second?format=csv", content=first, headers=_bearer(una))
        assert r.status_code == 429, r.text
        err = r.json()["error"]
        assert err["code"] == "rate_limited" and err["details"]["limit"] == "user_upload_bytes_per_hour"
        assert err["details"]["max"] == budget and err["details"]["available"] < len(first)
        assert "4 KiB per hour" in err["message"] and "Retry-After" in err["message"]
        assert int(r.headers["Retry-After"]) == err["details"]["retry_after"] >= 1

        async def chunked(data: bytes) -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            for i in range(0, len(data), 256):
                yield data[i : i + 256]

        r = await http.post("/api/datasets/third?format=csv", content=chunked(first), headers=_bearer(una))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        assert "of this upload arrived" in r.json()["error"]["message"] and "Retry-After" in r.headers
        # otto's budget is his own: una's uploads did not spend it.
        r = await http.post("/api/datasets/ottos?format=csv", content=first, headers=_bearer(otto))
        assert r.status_code == 201, r.text
        # One body bigger than the whole budget is refused part-way through, even sent in one request.
        ida = await _creator(srv, "ida")
        r = await http.post("/api/datasets/huge?format=csv", content=chunked(_csv(400)), headers=_bearer(ida))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        assert "bigger than the whole budget" in r.json()["error"]["message"]
        names = set(await srv.registry.names())
        assert {"first", "ottos"} <= names and not names & {"second", "third", "huge"}
        # JSON bodies count too: una has nothing left for a (padded) branch request either.
        body = {"name": "b1", "from": "main", "note": "x" * 2000}
        r = await http.post("/api/datasets/first/branches", json=body, headers=_bearer(una))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text


async def test_the_upload_budget_does_not_apply_without_identities(make_server: Any) -> None:
    settings = Settings(demo=False, user_upload_bytes_per_hour=1024)
    async with make_server(settings) as srv, httpx.AsyncClient(base_url=srv.http) as http:
        for name in ("a", "b"):  # --auth none: one local identity, no per-user budget
            r = await http.post(f"/api/datasets/{name}?format=csv", content=_csv(140))
            assert r.status_code == 201, r.text


# ---------------------------------------------------------------- expression length per user


async def test_a_users_expressions_are_held_to_the_per_user_cap(make_server: Any) -> None:
    cap = 40
    settings = Settings(demo=False, user_max_expression_chars=cap)
    async with make_server(settings, auth="token") as srv:
        ada = await signed_in(srv, "ada", "admin", ttl=600)
        async with connect(srv.url, "sales", token=ada) as room:
            before = srv.room().state.frame.clone()
            long_expr = "qty" + " + 1" * 20  # valid, 83 characters: under the sandbox's 2,000
            long_where = "qty > 100" + " and qty > 100" * 4
            long_view = '"qty"' + " + 1" * 20
            attempts = [
                (lambda: room.add_column("big", expr=long_expr), "ops[0].expr"),
                (lambda: room.delete_rows(where=long_where), "ops[0].where"),
                (
                    lambda: room.subscribe_view(expressions={"v": long_view}, columns=["v"]),
                    "config.expressions.v",
                ),
            ]
            for send, field in attempts:
                with pytest.raises(OpRejected) as e:
                    await send()
                assert e.value.code == "too_large", e.value
                assert e.value.details["limit"] == "user_max_expression_chars"
                assert e.value.details["max"] == cap and e.value.details["field"] == field
                assert e.value.details["length"] > cap and f"{cap:,}" in e.value.message
            assert srv.room().state.frame.equals(before)  # nothing applied
            assert srv.room().views.subs == {}  # no view opened
            # Under the cap, each applies.
            await room.add_column("double", expr="qty * 2")
            await room.delete_rows(where="qty > 3")
            view = await room.subscribe_view(expressions={"d": '"qty" * 2'}, columns=["d"])
            assert view.frame.columns == ["d"]
            after = srv.room().state.frame
            assert "double" in after.columns and after.height == (before["qty"] <= 3).sum()
        # A grant's row predicate is an expression the admin sends too.
        async with httpx.AsyncClient(base_url=srv.http, headers=_bearer(ada)) as http:
            grant = {"user": "ada", "role": "admin", "rows": long_where}
            r = await http.post("/api/datasets/sales/grants", json=grant)
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
            assert r.json()["error"]["details"]["limit"] == "user_max_expression_chars"


def _pb_len(number: int, data: bytes) -> bytes:
    """A protobuf length-delimited field (lengths under 128 here)."""
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


def _make_view(msg_id: int, view_id: str, exprs: dict[str, str]) -> bytes:
    """Request{msg_id, entity_id, table_make_view_req{view_id, config{expressions}}} (Perspective 5.5.1)."""
    entries = b"".join(_pb_len(6, _pb_len(1, n.encode()) + _pb_len(2, t.encode())) for n, t in exprs.items())
    return (
        bytes([0x08, msg_id])
        + _pb_len(2, b"sales/main")
        + _pb_len(6, _pb_len(1, view_id.encode()) + _pb_len(2, entries))
    )


async def test_a_dashboards_expressions_are_held_to_the_per_user_cap(make_server: Any) -> None:
    settings = Settings(demo=False, user_max_expression_chars=40)
    async with make_server(settings, auth="token") as srv:
        ada = await signed_in(srv, "ada", "viewer", ttl=600)
        async with websockets.connect(f"{srv.url}/perspective/sales?token={ada}") as ws:
            await ws.send(_make_view(3, "v1", {"v": '"qty"' + " + 1" * 20}))
            reply = await asyncio.wait_for(ws.recv(), timeout(30))
            assert isinstance(reply, bytes) and check_request(reply).field == 50  # a ServerError
            assert b"user_max_expression_chars" in reply and b"too_large" in reply
            await ws.send(_make_view(4, "v2", {"d": '"qty" * 2'}))
            reply = await asyncio.wait_for(ws.recv(), timeout(30))
            assert isinstance(reply, bytes) and check_request(reply).field != 50, reply
