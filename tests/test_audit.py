"""The audit trail (issue 12 §4): what is recorded; failed authentications counted, not one row each."""

from __future__ import annotations

import time
from typing import Any

import httpx

from client import connect
from server.storage.auth_types import Grant, User
from tests.helpers import signed_in


async def test_the_audit_trail_records_who_did_what_and_counts_failures(make_server: Any) -> None:
    async with make_server(auth="token") as srv:
        auth = srv.app.state.auth
        root = str(await auth.issue("admin", 600))
        await auth.store.add_user(User("vee", "Vee", created=time.time()))
        await auth.store.put_grant(Grant("sales", "vee", "viewer"))
        vee = str(await auth.issue("vee", 600))
        as_root = {"Authorization": f"Bearer {root}"}
        async with httpx.AsyncClient(base_url=srv.http) as http:
            for i in range(60):  # an attack: 60 bad tokens
                r = await http.get("/api/datasets", headers={"Authorization": f"Bearer junk{i}"})
                assert r.status_code == 401
            assert (await http.get(f"/login?token={root}")).status_code == 303
            r = await http.post(
                "/api/datasets/sales/grants", json={"user": "vee", "role": "editor"}, headers=as_root
            )
            assert r.status_code == 201
            r = await http.post("/api/datasets/sales/tags", json={"name": "v1"}, headers=as_root)
            assert r.status_code == 201, r.text
            assert (
                await http.get("/api/audit", headers={"Authorization": f"Bearer {vee}"})
            ).status_code == 403
            rows = (await http.get("/api/audit?since=1h", headers=as_root)).json()
        failed = [r for r in rows if r["kind"] == "auth_failed"]
        assert sum(r["count"] for r in failed) == 60 and len(failed) <= 2  # one row per reason and minute
        assert all("junk" not in r["detail"] for r in rows)  # never a token
        kinds = {(r["kind"], r["user"], r["dataset"]) for r in rows}
        assert {("sign_in", "admin", ""), ("grant", "admin", "sales"), ("tag", "admin", "sales")} <= kinds
        grant = next(r for r in rows if r["kind"] == "grant")
        assert grant["detail"] == "vee editor"
        times = [r["time"] for r in rows if r["kind"] != "auth_failed"]
        assert times == sorted(times, reverse=True)  # newest first


async def test_a_commit_over_the_protocol_is_in_the_audit_trail(make_server: Any) -> None:
    async with make_server(auth="token") as srv:
        ed = await signed_in(srv, "eddie", "editor")
        async with connect(srv.url, "sales", token=ed) as room:
            await room.set_cells([0], "qty", [3])
            commit = await room.commit("by eddie")
        rows = await srv.app.state.auth.store.list_audit(kind="commit")
        assert [(r.user, r.dataset, r.detail) for r in rows] == [("eddie", "sales", f"main {commit[:12]}")]
