"""Identity (issue 12 §1-2): tokens on every entry point, roles per dataset, revocation.

Each server here runs with ``auth="token"`` on the memory catalog. Users,
grants and tokens are made through the server's own :class:`Auth` and its
catalog, as ``coframe user add`` / ``grant`` / ``token create`` do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

import httpx
import jwt
import msgpack
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from client import connect
from client.errors import OpRejected
from protocol import CloseCode, decode_client
from server.auth import at_least, required_role
from server.serve import RedactTokens
from tests.conftest import small_frame, timeout
from tests.helpers import closed_with, signed_in


def _forge(payload: dict[str, Any], header: dict[str, Any]) -> str:
    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{b64(header)}.{b64(payload)}."


async def test_every_bad_token_is_refused_with_4401_and_counted(make_server: Any) -> None:
    async with make_server(auth="token") as srv:
        good = await signed_in(srv, "ann")
        auth = srv.app.state.auth
        header = jwt.get_unverified_header(good)
        claims = jwt.decode(good, options={"verify_signature": False})
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        expired, expired_claims = auth.signer.issue("ann", 10, now=time.time() - 3600)
        revoked_token = await auth.issue("ann", 3600)
        await auth.store.revoke_token(
            jwt.decode(revoked_token, options={"verify_signature": False})["jti"], 1.0
        )
        bad = {
            "missing": None,
            "garbage": "not.a.token",
            "bad signature": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
            "alg none": _forge(
                {**claims, "sub": "admin"}, {"alg": "none", "typ": "JWT", "kid": header["kid"]}
            ),
            "RS256 (HS/RS confusion)": jwt.encode(
                claims, private, algorithm="RS256", headers={"kid": header["kid"]}
            ),
            "tampered claims": ".".join(
                [good.split(".")[0], _forge({**claims, "sub": "admin"}, {}).split(".")[1], good.split(".")[2]]
            ),
            "expired": expired,
            "revoked": revoked_token,
            "unknown kid": jwt.encode(claims, b"x" * 32, algorithm="HS256", headers={"kid": "nope"}),
        }
        for what, token in bad.items():
            before = auth.failures
            query = "" if token is None else f"?token={token}"
            code, reason = await closed_with(f"{srv.url}/ws/sales{query}")
            assert code == CloseCode.UNAUTHENTICATED, (what, code, reason)
            assert reason, what
            assert auth.failures == before + 1, what
            async with httpx.AsyncClient(base_url=srv.http) as http:
                headers = {} if token is None else {"Authorization": f"Bearer {token}"}
                r = await http.get("/api/datasets", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated", what
        assert expired_claims.expires < time.time()
        # The good token still works, by query and by header.
        async with connect(srv.url, "sales", token=good) as room:
            assert room.frame.height == 20


async def test_a_dataset_without_a_grant_does_not_exist_for_that_user(make_server: Any) -> None:
    async with make_server(auth="token", frames={"sales": small_frame(), "hr": small_frame(3)}) as srv:
        token = await signed_in(srv, "bob", "viewer", dataset="sales")
        code, unknown = await closed_with(f"{srv.url}/ws/nope?token={token}")
        code2, hidden = await closed_with(f"{srv.url}/ws/hr?token={token}")
        assert code == code2 == CloseCode.NO_SUCH_DATASET
        assert unknown.replace("'nope'", "X") == hidden.replace("'hr'", "X")  # the same words
        assert "hr" not in hidden.split("known:")[1]
        assert ("hr", "main") not in srv.registry.rooms  # identity first: the room was never loaded
        async with httpx.AsyncClient(base_url=srv.http, headers={"Authorization": f"Bearer {token}"}) as http:
            listed = (await http.get("/api/datasets")).json()
            assert [d["name"] for d in listed] == ["sales"]
            r = await http.get("/api/datasets/hr/log")
            assert r.status_code == 404
            assert (await http.get("/api/datasets/sales/log")).status_code == 200


async def test_roles_gate_ops_and_leave_the_state_unchanged(make_server: Any) -> None:
    async with make_server(auth="token") as srv:
        viewer = await signed_in(srv, "vic", "viewer")
        editor = await signed_in(srv, "eve", "editor")
        admin = await signed_in(srv, "ada", "admin")
        async with connect(srv.url, "sales", token=viewer) as v:
            before = v.frame
            with pytest.raises(OpRejected) as e:
                await v.set_cells([0], "qty", [99])
            assert e.value.code == "forbidden" and "viewer" in e.value.message and "editor" in e.value.message
            with pytest.raises(OpRejected):
                await v.commit("nope")
            await v.ping()
            assert v.frame.equals(before) and srv.room().core.seq == 0
        async with connect(srv.url, "sales", token=editor) as ed:
            await ed.set_cells([0], "qty", [99])
            with pytest.raises(OpRejected) as e:
                await ed.add_column("extra", "Int64")
            assert e.value.code == "forbidden" and "admin" in e.value.message
            assert "extra" not in srv.room().state.frame.columns
        async with connect(srv.url, "sales", token=admin) as ad:
            await ad.add_column("extra", "Int64")
            assert "extra" in ad.frame.columns


async def test_a_revocation_reaches_open_connections_within_a_second(make_server: Any) -> None:
    async with make_server(auth="token") as srv:
        auth = srv.app.state.auth
        token = await signed_in(srv, "ray", "editor")
        other = await signed_in(srv, "sam", "editor")
        async with (
            websockets.connect(f"{srv.url}/ws/sales?token={token}") as ws,
            websockets.connect(f"{srv.url}/ws/sales?token={other}") as ws2,
        ):
            for w in (ws, ws2):
                await w.send(msgpack.packb({"type": "hello", "id": 0, "client": "c", "version": 1}))
                assert msgpack.unpackb(await w.recv())["type"] == "welcome"
            jti = jwt.decode(token, options={"verify_signature": False})["jti"]
            started = time.monotonic()
            await auth.store.revoke_token(jti, time.time())
            await auth.store.delete_grant("sales", "sam")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), timeout(5))
            with pytest.raises(ConnectionClosed) as closed2:
                while True:
                    await asyncio.wait_for(ws2.recv(), timeout(5))
            took = time.monotonic() - started
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.UNAUTHENTICATED
        assert closed2.value.rcvd is not None and closed2.value.rcvd.code == CloseCode.FORBIDDEN
        assert took < 1.0, took  # the server polls the catalog every 0.5 s


async def test_browser_sign_in_sets_a_strict_cookie_and_refuses_other_sites(make_server: Any) -> None:
    async with make_server(auth="token") as srv:
        token = await signed_in(srv, "cat", "admin")
        async with httpx.AsyncClient(base_url=srv.http) as http:
            r = await http.get(f"/login?token={token}")
            assert r.status_code == 303
            cookie = r.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            assert (await http.get("/api/datasets")).status_code == 200  # the cookie signs in
            assert (await http.get("/login?token=wrong")).status_code == 401
            host = srv.http.removeprefix("http://")
            forged = await http.post(
                "/api/datasets/sales/tags", json={"name": "t1"}, headers={"Origin": "https://evil.example"}
            )
            assert forged.status_code == 403 and forged.json()["error"]["code"] == "forbidden"
            ok = await http.post(
                "/api/datasets/sales/tags",
                json={"name": "t1", "at": "main"},
                headers={"Origin": f"http://{host}"},
            )
            assert ok.status_code != 403, ok.text
        code, _ = await closed_with(
            f"{srv.url}/ws/sales?token={token}", additional_headers={"Origin": "https://evil.example"}
        )
        assert code == CloseCode.FORBIDDEN


def test_tokens_are_redacted_from_the_access_log() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4", "GET", "/ws/sales?branch=main&token=eyJabc.def.ghi", "1.1", 101),
        None,
    )
    RedactTokens().filter(record)
    assert "eyJabc" not in record.getMessage() and "token=<redacted>" in record.getMessage()


OPS = {
    "set": {"op": "set", "rows": [0], "col": "qty", "values": [1]},
    "insert": {"op": "insert", "rows": [{"qty": 1}]},
    "delete": {"op": "delete", "rows": [0]},
    "fill_null": {"op": "fill_null", "col": "qty", "value": 0},
    "add_column": {"op": "add_column", "name": "x", "dtype": "Int64"},
    "drop_column": {"op": "drop_column", "col": "qty"},
    "rename_column": {"op": "rename_column", "col": "qty", "name": "q"},
    "cast_column": {"op": "cast_column", "col": "qty", "dtype": "Float64"},
}
SCHEMA_OPS = {"add_column", "drop_column", "rename_column", "cast_column"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted(OPS)), min_size=1, max_size=6))
def test_the_role_an_op_batch_needs(kinds: list[str]) -> None:
    """A viewer may send no op at all; an editor no schema op; an admin anything."""
    msg = decode_client(
        msgpack.packb({"type": "op", "id": 1, "client_seq": 1, "base_seq": 0, "ops": [OPS[k] for k in kinds]})
    )
    needed = required_role(msg)
    assert not at_least("viewer", needed)
    assert at_least("editor", needed) == (not SCHEMA_OPS & set(kinds))
    assert at_least("admin", needed)


async def test_commits_are_authored_by_the_user_and_presence_names_who_it_is(make_server: Any) -> None:
    async with make_server(auth="token") as srv:
        ann, bea = await signed_in(srv, "ann", "editor"), await signed_in(srv, "bea", "viewer")
        async with connect(srv.url, "sales", token=ann) as a, connect(srv.url, "sales", token=bea) as b:
            await a.set_cells([0], "qty", [5])
            await a.commit("by ann")
            assert (await b.log(1))[0]["author"] == "ann"
            await a.set_presence({"cursor": {"rid": 0, "col": "qty"}, "user": "bea", "display": "Bea"})
            await a.ping()
            await b.ping()  # ann's presence was relayed to bea before bea's pong
            states = [s for s in b.presence.values() if s is not None]
            assert states == [{"cursor": {"rid": 0, "col": "qty"}, "user": "ann", "display": "Ann"}]
