"""An external identity provider (``serve --auth-jwks FILE``): RS256/ES256 tokens beside coframe's own.

A real server on port 0 with the memory catalog. The "provider" is an RSA
and an EC P-256 key made here with ``cryptography``; their public halves
are the JWKS file, and PyJWT signs the provider's tokens. The users exist in
the catalog as ``coframe user add`` makes them (tests/helpers.signed_in).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgpack
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import ConnectionClosed

from client import connect
from client.errors import OpRejected
from protocol import CloseCode
from server.settings import Settings
from tests.conftest import timeout
from tests.helpers import closed_with, signed_in
from tests.procs import cli, start_server

ISSUER = "https://idp.example"
AUDIENCE = "coframe"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk(public: Any, kid: str) -> dict[str, Any]:
    algorithm = (
        jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
    )
    return {**algorithm.to_jwk(public, as_dict=True), "kid": kid, "use": "sig"}


@dataclass
class Provider:
    """An identity provider: two signing keys, and the JWKS file that publishes their public halves."""

    path: Path
    rsa_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def __post_init__(self) -> None:
        self.publish({"rsa-1": self.rsa_key, "ec-1": self.ec_key})

    def publish(self, keys: dict[str, Any]) -> None:
        doc = {"keys": [_jwk(k.public_key(), kid) for kid, k in keys.items()]}
        self.path.write_text(json.dumps(doc), encoding="utf-8")

    def claims(self, user: str, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"sub": f"id-{user}", "preferred_username": user, "iss": ISSUER, "aud": AUDIENCE}
        return {**base, "iat": now, "exp": now + 3600, **extra}

    def sign(self, user: str, alg: str = "RS256", kid: str | None = None, **extra: Any) -> str:
        key = self.rsa_key if alg == "RS256" else self.ec_key
        kid = kid or ("rsa-1" if alg == "RS256" else "ec-1")
        return jwt.encode(self.claims(user, **extra), key, algorithm=alg, headers={"kid": kid})

    def rsa_pem(self) -> bytes:
        return self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _hs256(payload: dict[str, Any], secret: bytes, kid: str | None) -> str:
    """An HS256 token signed with ``secret`` by hand (PyJWT refuses a PEM key as an HMAC secret)."""
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing}.{_b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"


def _unsigned(payload: dict[str, Any], kid: str) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": kid}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."


@pytest.fixture
def provider(tmp_path: Path) -> Provider:
    return Provider(tmp_path / "jwks.json")


def _settings(provider: Provider, **kw: Any) -> Settings:
    return Settings(demo=False, auth_jwks=str(provider.path), auth_jwks_claim="preferred_username", **kw)


async def _joined(url: str) -> websockets.ClientConnection:
    ws = await websockets.connect(url)
    await ws.send(msgpack.packb({"type": "hello", "id": 0, "client": "c", "version": 1}))
    assert msgpack.unpackb(await ws.recv())["type"] == "welcome"
    return ws


async def _close_of(ws: websockets.ClientConnection) -> tuple[int, str]:
    """How the server closes ``ws`` (its messages until then are read and dropped)."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), timeout(5))
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_rs256_and_es256_tokens_sign_in_their_mapped_user_with_their_grants(
    make_server: Any, provider: Provider
) -> None:
    async with make_server(settings=_settings(provider), auth="token") as srv:
        own = await signed_in(srv, "ann", "viewer")  # ann's coframe HS256 token keeps working
        await signed_in(srv, "eve", "editor")
        viewer, editor = provider.sign("ann", "RS256"), provider.sign("eve", "ES256")
        async with connect(srv.url, "sales", token=viewer) as room:
            assert room.frame.height == 20
            with pytest.raises(OpRejected) as e:
                await room.set_cells([0], "qty", [99])
            assert e.value.code == "forbidden"  # the viewer grant applies
        async with connect(srv.url, "sales", token=editor) as room:
            await room.set_cells([0], "qty", [99])
            assert room.frame["qty"][0] == 99
        async with connect(srv.url, "sales", token=own) as room:
            assert room.frame["qty"][0] == 99
        for token in (viewer, editor, own):
            async with httpx.AsyncClient(
                base_url=srv.http, headers={"Authorization": f"Bearer {token}"}
            ) as http:
                assert [d["name"] for d in (await http.get("/api/datasets")).json()] == ["sales"]
                assert (await http.get("/api/datasets/sales/log")).status_code == 200
        assert srv.app.state.auth.failures == 0


async def test_every_bad_provider_token_is_refused_with_4401_and_counted(
    make_server: Any, provider: Provider, tmp_path: Path
) -> None:
    settings = _settings(provider, auth_jwks_audience=AUDIENCE, auth_jwks_issuer=ISSUER)
    async with make_server(settings=settings, auth="token") as srv:
        auth = srv.app.state.auth
        await signed_in(srv, "ann", "admin")
        await signed_in(srv, "dis", "admin")
        await auth.store.set_user("dis", disabled=True)
        good = provider.sign("ann")
        head, body, sig = good.split(".")
        claims = provider.claims("ann")
        stranger = rsa.generate_private_key(65537, 2048)
        without_exp = {k: v for k, v in claims.items() if k != "exp"}
        pem = provider.rsa_pem()
        bad = {
            "unknown kid": (
                jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": "rsa-9"}),
                "not in --auth-jwks",
            ),
            "expired": (provider.sign("ann", exp=int(time.time()) - 60), "expired"),
            "no exp": (
                jwt.encode(without_exp, provider.rsa_key, "RS256", headers={"kid": "rsa-1"}),
                '"exp"',
            ),
            "wrong audience": (provider.sign("ann", aud="another-app"), "not for this server"),
            "wrong issuer": (provider.sign("ann", iss="https://evil.example"), "expected issuer"),
            "alg none": (_unsigned(claims, "rsa-1"), "RS256 or ES256"),
            "HS256 with the public key as secret": (_hs256(claims, pem, "rsa-1"), "RS256 or ES256"),
            "HS256 with the public key, no kid": (_hs256(claims, pem, None), "no signing key"),
            "ES256 header on the RSA key": (
                jwt.encode(claims, provider.ec_key, algorithm="ES256", headers={"kid": "rsa-1"}),
                "does not verify",
            ),
            "tampered payload": (
                f"{head}.{_b64(json.dumps({**claims, 'preferred_username': 'dis'}).encode())}.{sig}",
                "does not verify",
            ),
            "no user claim": (provider.sign("ann", preferred_username=7), "must name the coframe user"),
            "unknown user": (
                provider.sign("zed"),
                "'zed' is not known here: ask an admin to run coframe user add zed",
            ),
            "disabled user": (provider.sign("dis"), "disabled"),
        }
        assert body  # the tampered token keeps the good header and signature
        for what, (token, words) in bad.items():
            before = auth.failures
            code, reason = await closed_with(f"{srv.url}/ws/sales?token={token}")
            assert code == CloseCode.UNAUTHENTICATED, (what, code, reason)
            assert words in reason, (what, reason)
            async with httpx.AsyncClient(base_url=srv.http) as http:
                r = await http.get("/api/datasets", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401 and words in r.json()["error"]["message"], (what, r.text)
            assert auth.failures == before + 2, what  # each refusal is counted
        async with connect(srv.url, "sales", token=good) as room:  # the good one still works
            assert room.frame.height == 20


async def test_disabling_the_user_closes_their_provider_connections_within_a_second(
    make_server: Any, provider: Provider
) -> None:
    async with make_server(settings=_settings(provider), auth="token") as srv:
        auth = srv.app.state.auth
        await signed_in(srv, "ray", "editor")
        await signed_in(srv, "sam", "editor")
        await signed_in(srv, "tia", "editor")
        ray = await _joined(f"{srv.url}/ws/sales?token={provider.sign('ray')}")
        sam = await _joined(f"{srv.url}/ws/sales?token={provider.sign('sam', 'ES256')}")
        tia = await _joined(f"{srv.url}/ws/sales?token={provider.sign('tia', exp=int(time.time()) + 600)}")
        try:
            started = time.monotonic()
            await auth.store.set_user("ray", disabled=True)
            await auth.store.delete_grant("sales", "sam")
            code, reason = await _close_of(ray)
            assert code == CloseCode.UNAUTHENTICATED and "disabled" in reason
            code, _ = await _close_of(sam)
            assert code == CloseCode.FORBIDDEN
            assert time.monotonic() - started < 1.0  # the server polls the catalog every 0.5 s
            await auth.expire(now=time.time() + 3600)  # as the poll does once tia's exp has passed
            code, reason = await _close_of(tia)
            assert code == CloseCode.UNAUTHENTICATED and "expired" in reason
        finally:
            for ws in (ray, sam, tia):
                await ws.close()


async def test_a_rotated_key_set_is_read_again_without_a_restart(
    make_server: Any, provider: Provider
) -> None:
    async with make_server(settings=_settings(provider), auth="token") as srv:
        await signed_in(srv, "ann", "viewer")
        fresh = rsa.generate_private_key(65537, 2048)
        token = jwt.encode(provider.claims("ann"), fresh, algorithm="RS256", headers={"kid": "rsa-2"})
        code, reason = await closed_with(f"{srv.url}/ws/sales?token={token}")
        assert code == CloseCode.UNAUTHENTICATED and "not in --auth-jwks" in reason
        before = provider.path.stat().st_mtime
        provider.publish({"rsa-2": fresh})
        os.utime(provider.path, (before + 10, before + 10))  # a changed file, whatever the clock's grain
        async with connect(srv.url, "sales", token=token) as room:
            assert room.frame.height == 20
        code, reason = await closed_with(f"{srv.url}/ws/sales?token={provider.sign('ann')}")
        assert code == CloseCode.UNAUTHENTICATED and "not in --auth-jwks" in reason  # rsa-1 was rotated out


async def test_serve_refuses_a_bad_jwks_file_before_listening_and_takes_a_good_one(
    tmp_path: Path, provider: Provider
) -> None:
    data = tmp_path / "data"
    missing = tmp_path / "missing.json"
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json", encoding="utf-8")
    secret_only = tmp_path / "oct.json"
    secret_only.write_text(json.dumps({"keys": [{"kty": "oct", "k": _b64(b"s" * 32), "kid": "x"}]}))
    for path, words in (
        (missing, "no such file"),
        (garbled, "not JSON"),
        (secret_only, "no usable key (RS256 or ES256"),
    ):
        code, out, err = await cli("serve", "--port", "0", "--auth-jwks", str(path), data=data)
        assert code == 2, (path, out, err)
        assert err.strip() == err.strip().splitlines()[0], err  # one line
        assert f"coframe: --auth-jwks {path}: {words}" in err, err
        assert "listening" not in out
    args = ("--auth", "token", "--demo-rows", "50", "--auth-jwks", str(provider.path))
    server = await start_server(*args, "--auth-jwks-audience", AUDIENCE, data_dir=data)
    try:
        for command in (("user", "add", "id-ann"), ("grant", "sales", "id-ann", "viewer")):
            code, _, err = await cli(*command, data=data)
            assert code == 0, err
        async with connect(server.url, "sales", token=provider.sign("ann"), reconnect=False) as room:
            assert room.frame.height == 50  # the default claim, sub, names the user
        code, reason = await closed_with(f"{server.url}/ws/sales?token={provider.sign('ann', aud='x')}")
        assert code == CloseCode.UNAUTHENTICATED and "not for this server" in reason
    finally:
        await server.stop()
