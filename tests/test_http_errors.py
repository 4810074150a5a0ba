"""Errors at the edges of routing: names that end in a newline, unknown routes and methods."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from client import OpRejected, connect
from tests.conftest import small_frame, timeout
from tests.helpers import frame

Site = tuple[Any, httpx.AsyncClient]


@pytest.fixture
async def site(make_server: Any) -> AsyncIterator[Site]:
    """A server with the "sales" dataset, and an HTTP client for it."""
    async with make_server(frames={"sales": small_frame()}) as srv:
        async with httpx.AsyncClient(base_url=srv.http) as http:
            yield srv, http


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    return err


async def test_a_name_ending_in_a_newline_is_refused_everywhere(site: Site) -> None:
    srv, http = site
    csv = frame().write_csv().encode()
    r = await http.post("/api/datasets/x%0A", params={"format": "csv"}, content=csv)
    err = _error(r, 400, "bad_name")
    assert "'x\\n'" in err["message"]
    branch, tag = {"name": "b\n", "from": "main"}, {"name": "v1\n", "at": "main"}
    _error(await http.post("/api/datasets/sales/branches", json=branch), 400, "bad_name")
    _error(await http.post("/api/datasets/sales/tags", json=tag), 400, "bad_name")
    assert [d["name"] for d in (await http.get("/api/datasets")).json()] == ["sales"]
    refs = (await http.get("/api/datasets/sales/refs")).json()
    assert [b["name"] for b in refs["branches"]] == ["main"] and refs["tags"] == []
    async with ws_connect(f"{srv.url}/ws/sales%0A") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4004
    assert "'sales\\n'" in closed.value.rcvd.reason


async def test_unknown_routes_and_methods_under_api_are_json_errors(site: Site) -> None:
    _, http = site
    err = _error(await http.get("/api/nonexistent"), 404, "no_route")
    assert "GET /api/nonexistent" in err["message"]
    err = _error(await http.get("/api/datasets/sales/nonexistent"), 405, "method_not_allowed")
    assert "use POST" in err["message"]  # only an upload (POST) takes any path after /api/datasets/
    r = await http.put("/api/datasets/sales")  # an upload is POST, a deletion DELETE (admins)
    err = _error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"] and "POST" in err["message"]
    page = await http.get("/no/such/page")  # pages keep their plain 404
    assert page.status_code == 404 and not page.headers["content-type"].startswith("application/json")


async def test_a_taken_branch_name_says_how_to_list_the_refs(site: Site) -> None:
    _, http = site
    r = await http.post("/api/datasets/sales/branches", json={"name": "main", "from": "main"})
    err = _error(r, 409, "already_exists")
    assert "GET /api/datasets/sales/refs" in err["message"] and "move_branch" not in err["message"]


async def test_a_time_travel_room_says_how_to_branch_from_its_version(site: Site) -> None:
    srv, http = site
    head = (await http.get("/api/datasets/sales/log")).json()[0]["commit"]
    async with connect(srv.url, "sales", at=head) as room:
        with pytest.raises(OpRejected) as e:
            await asyncio.wait_for(room.set_cells([0], "qty", 1), timeout(10))
    assert e.value.code == "read_only"
    assert "POST /api/datasets/sales/branches" in e.value.message and head[:12] in e.value.message
