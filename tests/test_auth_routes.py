"""Every per-dataset HTTP route asks for the role issue 12 §2 gives it, user by user.

viewer: reads (log, refs, export, diff); editor: also branches; admin: also
tags, revert, grants and deleting the dataset. A
refusal is a 403 JSON error with the code ``forbidden``, and changes nothing.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import small_frame
from tests.helpers import signed_in

ROLES = ("viewer", "editor", "admin")
NEEDS = {"viewer": 0, "editor": 1, "admin": 2}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _refused(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("role", ROLES)
async def test_each_route_needs_its_role(make_server: Any, role: str) -> None:
    async with make_server(auth="token", frames={"sales": small_frame()}) as srv:
        token = await signed_in(srv, f"u-{role}", role)
        me = _bearer(token)
        level = NEEDS[role]
        async with httpx.AsyncClient(base_url=srv.http, headers={"Origin": srv.http}) as http:
            log = await http.get("/api/datasets/sales/log", headers=me)
            assert log.status_code == 200, log.text
            head = log.json()[0]["commit"]
            for path in ("refs", "export?format=csv", f"diff?from={head}&to=live"):
                r = await http.get(f"/api/datasets/sales/{path}", headers=me)
                assert r.status_code == 200, (path, r.text)
            before = (await http.get("/api/datasets/sales/refs", headers=me)).json()

            # (what, needed level, request, expected success status)
            writes = [
                (
                    "branch",
                    1,
                    http.post("/api/datasets/sales/branches", json={"name": "b1"}, headers=me),
                    201,
                ),
                ("tag", 2, http.post("/api/datasets/sales/tags", json={"name": "t1"}, headers=me), 201),
                ("revert", 2, http.post("/api/datasets/sales/revert", json={"to": head}, headers=me), 201),
                ("grants", 2, http.get("/api/datasets/sales/grants", headers=me), 200),
            ]
            for what, needed, request, ok in writes:
                r = await request
                if level >= needed:
                    assert r.status_code == ok, (what, r.text)
                else:
                    await _refused(r)
            # An upload to a taken name is a clash, whatever the role.
            r = await http.post(
                "/api/datasets/sales?format=csv",
                content=b"name\nx\n",
                headers={**me, "Content-Type": "text/csv"},
            )
            assert r.status_code == 409 and r.json()["error"]["code"] == "dataset_exists", r.text
            if level < NEEDS["editor"]:
                after = (await http.get("/api/datasets/sales/refs", headers=me)).json()
                assert after == before  # nothing a refusal touched moved
            r = await http.delete("/api/datasets/sales", headers=me)
            if level >= NEEDS["admin"]:
                assert r.status_code == 200, r.text
                assert (await http.get("/api/datasets/sales/log", headers=me)).status_code == 404
            else:
                await _refused(r)
                assert (await http.get("/api/datasets/sales/log", headers=me)).status_code == 200
