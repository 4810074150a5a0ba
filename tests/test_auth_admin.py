"""Identity over HTTP for admins (issue 12 §2), dataset deletion, and TLS (issue 12 §1)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import connect
from protocol import CloseCode
from server.storage.auth_types import User
from tests.conftest import small_frame, timeout
from tests.helpers import signed_in
from tests.procs import start_server


async def test_admins_manage_users_tokens_and_grants_over_http(make_server: Any) -> None:
    async with make_server(auth="token", frames={"sales": small_frame(), "hr": small_frame(2)}) as srv:
        root = str(await srv.app.state.auth.issue("admin", 600))  # the first start's admin (* admin)
        owner = await signed_in(srv, "olga", "admin", dataset="sales", ttl=600)  # admin of sales only
        as_root = {"Authorization": f"Bearer {root}"}
        as_owner = {"Authorization": f"Bearer {owner}"}
        async with httpx.AsyncClient(base_url=srv.http) as http:
            r = await http.post("/api/users", json={"name": "kim", "display": "Kim"}, headers=as_root)
            assert r.status_code == 201, r.text
            assert (await http.post("/api/users", json={"name": "x"}, headers=as_owner)).status_code == 403
            names = [u["name"] for u in (await http.get("/api/users", headers=as_root)).json()]
            assert names == ["admin", "kim", "olga"]
            r = await http.post("/api/tokens", json={"user": "kim", "expires": "1h"}, headers=as_root)
            assert r.status_code == 201, r.text
            kim = r.json()
            # olga administers sales: she grants kim a viewer role there, not on hr.
            r = await http.post(
                "/api/datasets/sales/grants", json={"user": "kim", "role": "viewer"}, headers=as_owner
            )
            assert r.status_code == 201, r.text
            assert (
                await http.post(
                    "/api/datasets/hr/grants", json={"user": "kim", "role": "admin"}, headers=as_owner
                )
            ).status_code == 404
            listed = (await http.get("/api/datasets/sales/grants", headers=as_owner)).json()
            assert {(g["user"], g["role"]) for g in listed} >= {("kim", "viewer"), ("olga", "admin")}
            as_kim = {"Authorization": f"Bearer {kim['token']}"}
            assert [d["name"] for d in (await http.get("/api/datasets", headers=as_kim)).json()] == ["sales"]
            assert (await http.get("/api/datasets/sales/grants", headers=as_kim)).status_code == 403
            async with connect(srv.url, "sales", token=kim["token"], reconnect=False) as room:
                assert room.frame.height == 20
            r = await http.delete(f"/api/tokens/{kim['id']}", headers=as_root)
            assert r.status_code == 200 and r.json()["revoked"]
            assert (await http.get("/api/datasets", headers=as_kim)).status_code == 401
            r = await http.delete("/api/datasets/sales/grants/kim", headers=as_owner)
            assert r.status_code == 200
            bad = await http.post(
                "/api/datasets/sales/grants", json={"user": "kim", "role": "god"}, headers=as_owner
            )
            assert bad.status_code == 400 and "viewer" in bad.json()["error"]["message"]


async def test_an_admin_deletes_a_dataset_and_its_open_rooms_close_with_4004(make_server: Any) -> None:
    async with make_server(auth="token", frames={"sales": small_frame(), "hr": small_frame(2)}) as srv:
        editor = await signed_in(srv, "ed", "editor", dataset="hr", ttl=600)
        admin = await signed_in(srv, "al", "admin", dataset="hr", ttl=600)
        async with websockets.connect(f"{srv.url}/ws/hr?token={editor}") as ws:
            import msgpack

            await ws.send(msgpack.packb({"type": "hello", "id": 0, "client": "c", "version": 1}))
            assert msgpack.unpackb(await ws.recv())["type"] == "welcome"
            async with httpx.AsyncClient(base_url=srv.http) as http:
                r = await http.delete("/api/datasets/hr", headers={"Authorization": f"Bearer {editor}"})
                assert r.status_code == 403
                r = await http.delete("/api/datasets/hr", headers={"Authorization": f"Bearer {admin}"})
                assert r.status_code == 200 and r.json()["deleted"], r.text
            try:
                while True:
                    await ws.recv()
            except websockets.ConnectionClosed as e:
                assert e.rcvd is not None and e.rcvd.code == CloseCode.NO_SUCH_DATASET
        assert "hr" not in await srv.registry.names()


LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK)]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_serve_over_tls_prints_an_https_sign_in_url_and_sets_a_secure_cookie(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = await start_server(
        "--auth", "token", "--demo-rows", "20", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
        data_dir=tmp_path / "data",
    )  # fmt: skip
    try:
        line = await server.wait_log(
            r"Sign in: https://127\.0\.0\.1:\d+/login\?token=\S+", within=timeout(30)
        )
        token = line.split("token=", 1)[1]
        base = f"https://127.0.0.1:{server.port}"
        context = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=base, verify=context) as http:
            r = await http.get(f"/login?token={token}")
            assert r.status_code == 303
            cookie = r.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await server.stop()


async def test_uploads_need_can_create_and_make_the_uploader_admin(make_server: Any) -> None:
    async with make_server(auth="token") as srv:
        auth = srv.app.state.auth
        await auth.store.add_user(User("uma", "Uma", can_create=True, created=time.time()))
        await auth.store.add_user(User("nik", "Nik", created=time.time()))
        uma, nik = str(await auth.issue("uma", 600)), str(await auth.issue("nik", 600))
        csv = b"a,b\n1,x\n2,y\n"
        async with httpx.AsyncClient(base_url=srv.http) as http:
            refused = await http.post(
                "/api/datasets/notes?format=csv", content=csv, headers={"Authorization": f"Bearer {nik}"}
            )
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
            r = await http.post(
                "/api/datasets/notes?format=csv&author=someone-else",
                content=csv,
                headers={"Authorization": f"Bearer {uma}"},
            )
            assert r.status_code == 201, r.text
            log = (
                await http.get("/api/datasets/notes/log", headers={"Authorization": f"Bearer {uma}"})
            ).json()
            assert log[0]["author"] == "uma"  # the identity, not the query's author
            # The existing dataset: nik may not even learn it exists, uma may not overwrite it.
            assert (
                await http.get("/api/datasets/notes/log", headers={"Authorization": f"Bearer {nik}"})
            ).status_code == 404
        assert await auth.role(await auth.authenticate(uma), "notes") == "admin"
