"""Row and column policies on the HTTP channels and dashboards (docs/security.md "HTTP and dashboards").

A real token server (uvicorn on port 0). ``rita`` reads ``sales`` under a
grant with a row predicate (``owner = current_user()``) and a hidden
column. Three sentinels must never reach her: the hidden column's values,
its name, and a value in a row outside her predicate. Every response is
scanned as raw bytes and decoded; the export must equal Polars' filter of
the whole frame over the visible columns. Her dashboard (Debian chromium)
is served her audience's table: every WebSocket frame the page receives
is scanned, and its table holds only her rows and columns.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import polars as pl
import pyarrow.parquet as pq

from client import connect
from server.ops import normalize_frame
from server.ops.state import State
from server.perspective.editor import DashboardEditor
from server.perspective.readonly import Decision, check_request
from server.rooms import Room
from server.rooms.policy import Audience
from server.storage.auth_types import Grant, User
from tests.browsing import MS
from tests.conftest import timeout

HIDDEN_NAME = "zqsecretcolumnname"  # the hidden column's name
HIDDEN_CELL = "zqhiddencellvalue"  # in the hidden column, on every row
OTHER_ROW = "zqotherrowvalue"  # a visible column of a row outside rita's predicate
SENTINELS = (HIDDEN_NAME, HIDDEN_CELL, OTHER_ROW)
ROWS = "owner = current_user()"


def _frame() -> pl.DataFrame:
    owners = ["rita", "other", "rita", "other", "rita", "other", "other", "rita"]
    return pl.DataFrame(
        {
            "owner": owners,
            "name": [OTHER_ROW if o == "other" else f"ritarow{i}" for i, o in enumerate(owners)],
            "qty": pl.Series(list(range(len(owners))), dtype=pl.Int64),
            HIDDEN_NAME: [f"{HIDDEN_CELL}{i}" for i in range(len(owners))],
        }
    )


def _clean(data: bytes | str, where: str) -> None:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    for s in SENTINELS:
        assert s.encode() not in raw, f"{s!r} leaked in {where}"


def _decode(data: bytes, fmt: str) -> pl.DataFrame:
    buf = io.BytesIO(data)
    if fmt == "csv":
        return pl.read_csv(buf)
    if fmt == "parquet":
        return pl.read_parquet(buf)
    if fmt == "arrow":
        return pl.read_ipc(buf)
    if fmt == "json":
        return pl.read_json(buf)
    return pl.read_ndjson(buf)


async def _restricted(srv: Any, user: str = "rita") -> str:
    """Add ``user`` with a viewer grant on sales: ``ROWS`` and the hidden column; its token."""
    auth = srv.app.state.auth
    state = await srv.registry.live_state("sales")
    hidden = next(c.id for c in state.catalog.columns if c.name == HIDDEN_NAME)
    await auth.store.add_user(User(user, user.title(), created=time.time()))
    await auth.store.put_grant(Grant("sales", user, "viewer", rows=ROWS, hide=(hidden,)))
    return str(await auth.issue(user, 600))


def _expected(full: pl.DataFrame, user: str = "rita") -> pl.DataFrame:
    return full.filter(pl.col("owner") == user).select(["_rid", "owner", "name", "qty"])


async def test_http_channels_show_a_restricted_user_only_their_rows_and_columns(
    make_server: Callable[..., Any],
) -> None:
    async with make_server(auth="token", frames={"sales": _frame()}) as srv:
        admin = str(await srv.app.state.auth.issue("admin", 600))
        rita = await _restricted(srv)
        as_admin, as_rita = {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {rita}"}
        async with httpx.AsyncClient(base_url=srv.http) as http:
            # Not loaded yet: the listing has no count for her (the commit's counts every row).
            listed = (await http.get("/api/datasets", headers=as_rita)).json()
            _clean(json.dumps(listed), "/api/datasets")
            assert listed[0]["rows"] in (None, 4)
            assert [c["name"] for c in listed[0]["columns"]] == ["owner", "name", "qty"]
            first = (await http.get("/api/datasets/sales/log", headers=as_admin)).json()[0]["commit"]
            full = (await srv.registry.live_state("sales")).frame
            control = await http.get("/api/datasets/sales/export?format=csv", headers=as_admin)
            assert HIDDEN_NAME.encode() in control.content and OTHER_ROW.encode() in control.content

            for fmt in ("csv", "parquet", "arrow", "json", "ndjson"):
                r = await http.get(f"/api/datasets/sales/export?format={fmt}", headers=as_rita)
                assert r.status_code == 200, r.text
                _clean(r.content, f"export {fmt}")
                _clean(str(r.headers), f"export {fmt} headers")
                got = _decode(r.content, fmt)
                _clean(got.write_csv(), f"decoded export {fmt}")
                want = _expected(full)
                assert got.columns == want.columns, fmt
                assert got.cast(want.schema).equals(want), fmt
                assert r.headers["X-Coframe-Rows"] == str(want.height)

            # The admin edits both sentinels' rows and one of rita's visible cells, live.
            async with connect(srv.url, "sales", token=admin, reconnect=False) as room:
                other = int(full.filter(pl.col("owner") == "other")["_rid"][0])
                mine = int(full.filter(pl.col("owner") == "rita")["_rid"][0])
                await room.set_cells([other], "name", OTHER_ROW + "edited")
                await room.set_cells([mine], HIDDEN_NAME, HIDDEN_CELL + "edited")
                await room.set_cells([mine], "qty", 99)
                live = (await srv.registry.live_state("sales")).frame

                r = await http.get("/api/datasets/sales/diff?from=main&to=live", headers=as_rita)
                assert r.status_code == 200, r.text
                _clean(r.content, "diff json")
                changed = r.json()["changed"]
                assert [(c["rid"], c["column"], c["new"]) for c in changed] == [(mine, "qty", "99")]
                r = await http.get(
                    "/api/datasets/sales/diff?from=main&to=live&format=parquet", headers=as_rita
                )
                assert r.status_code == 200, r.text
                _clean(r.content, "diff parquet")
                table = pq.read_table(io.BytesIO(r.content))
                _clean(str(table.to_pylist()) + str(table.schema), "decoded diff parquet")
                assert table.num_rows == 1

                r = await http.get("/api/datasets/sales/export?format=parquet", headers=as_rita)
                got = pl.read_parquet(io.BytesIO(r.content))
                assert got.equals(_expected(live)) and _expected(live)["qty"].to_list()[0] == 99
                r = await http.get(f"/api/datasets/sales/export?format=arrow&at={first}", headers=as_rita)
                assert r.status_code == 200 and r.headers["X-Coframe-Commit"] == first
                _clean(r.content, "export at")
                assert pl.read_ipc(io.BytesIO(r.content)).equals(_expected(full))

                # Loaded now: the listing and the index page count her rows only.
                listed = (await http.get("/api/datasets", headers=as_rita)).json()
                assert listed[0]["rows"] == 4
                page = await http.get("/", headers=as_rita)
                _clean(page.content, "index page")
                assert re.search(r"<td>4</td>", page.text) and not re.search(r"<td>8</td>", page.text)
                assert (await http.get("/api/datasets", headers=as_admin)).json()[0]["rows"] == 8

                log = await http.get("/api/datasets/sales/log", headers=as_rita)
                _clean(log.content, "log")
                assert log.json() and all("rows" not in c for c in log.json())
                assert all(
                    "rows" in c for c in (await http.get("/api/datasets/sales/log", headers=as_admin)).json()
                )
                refs = await http.get("/api/datasets/sales/refs", headers=as_rita)
                assert refs.status_code == 200 and refs.json()["branches"][0]["name"] == "main"
                _clean(refs.content, "refs")

                # A rename the predicate does not survive: 403, nothing shown.
                await room.rename_column("owner", "holder")
                for path in ("export?format=csv", "diff?from=main&to=live"):
                    r = await http.get(f"/api/datasets/sales/{path}", headers=as_rita)
                    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
                    _clean(r.content, path)
                assert (await http.get("/api/datasets", headers=as_rita)).json()[0]["rows"] is None


async def test_a_restricted_dashboard_gets_only_its_audience_table(
    browser: Any, make_server: Callable[..., Any]
) -> None:
    from playwright.async_api import expect

    async with make_server(auth="token", frames={"sales": _frame()}) as srv:
        rita = await _restricted(srv)
        context = await browser.new_context(locale="en-US", viewport={"width": 1280, "height": 720})
        page = await context.new_page()
        frames: list[bytes] = []

        def on_socket(ws: Any) -> None:
            ws.on(
                "framereceived",
                lambda payload: frames.append(payload if isinstance(payload, bytes) else payload.encode()),
            )

        page.on("websocket", on_socket)
        await page.goto(f"{srv.http}/login?token={rita}")
        _clean(await page.content(), "index page")
        await page.goto(f"{srv.http}/d/sales")
        await expect(page.locator("body")).to_have_attribute("data-state", "live", timeout=30 * MS)
        rows = page.locator("perspective-viewer regular-table tbody tr")
        await expect(rows).to_have_count(4, timeout=10 * MS)
        size, columns = await page.evaluate(
            """async () => {
                const t = await document.querySelector('perspective-viewer').getTable();
                return [await t.size(), Object.keys(await t.schema())];
            }"""
        )
        assert size == 4 and sorted(columns) == ["_rid", "name", "owner", "qty"]
        await expect(rows.first).to_contain_text("ritarow")
        _clean(await page.content(), "dashboard DOM")
        assert frames and any(b"ritarow" in f for f in frames)  # the scan sees plain strings
        for f in frames:
            _clean(f, "a dashboard WebSocket frame")
        await context.close()


# ---------------------------------------------------------------- grid edits (?edit=1) of a restricted user


def _pb_len(field: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (lengths under 128 bytes)."""
    assert len(data) < 128
    return bytes([field << 3 | 2, len(data)]) + data


def _grid_edit(rows: list[dict[str, Any]], msg_id: int) -> Decision:
    """A ``table_update_req`` as the datagrid sends it (``from_rows`` JSON), marked as an edit."""
    body = _pb_len(1, _pb_len(4, json.dumps(rows).encode())) + b"\x10\x01"
    return Decision(False, msg_id, "sales/main", 33, "table_update_req", body, edit=True)


async def test_a_restricted_users_grid_edits_pass_the_rooms_policy_checks() -> None:
    df, catalog = normalize_frame(_frame())
    room = Room("sales", "main", State(df, catalog, df.height))
    room.start()
    hidden = next(c.id for c in catalog.columns if c.name == HIDDEN_NAME)
    audience = Audience(rows="owner = 'rita'", hide=frozenset({hidden}))
    editor = DashboardEditor(room, audience=audience)
    answers: dict[int, bytes] = {}
    got = asyncio.Event()

    def push(data: bytes) -> None:
        answers[check_request(data).msg_id] = data
        got.set()

    async def answer(msg_id: int) -> bytes:
        while msg_id not in answers:
            got.clear()
            await asyncio.wait_for(got.wait(), timeout(10))
        return answers[msg_id]

    mine = int(df.filter(pl.col("owner") == "rita")["_rid"][0])
    other = int(df.filter(pl.col("owner") == "other")["_rid"][0])
    try:
        editor.submit(_grid_edit([{"__INDEX__": mine, "qty": 42}], 1), push)
        assert check_request(await answer(1)).field == 33  # acked: her row, a visible column
        editor.submit(_grid_edit([{"__INDEX__": other, "qty": 77}], 2), push)
        assert b"(no_such_row)" in await answer(2)  # a hidden row is as a missing one
        editor.submit(_grid_edit([{"__INDEX__": mine, HIDDEN_NAME: "x"}], 3), push)
        refused = await answer(3)
        assert b"(no_such_column)" in refused and HIDDEN_CELL.encode() not in refused
        editor.submit(_grid_edit([{"__INDEX__": mine, "owner": "other"}], 4), push)
        assert b"(forbidden)" in await answer(4)  # WITH CHECK: it would leave her rows
        row = room.state.frame.filter(pl.col("_rid") == mine)
        assert (row["qty"].item(), row["owner"].item()) == (42, "rita")
        assert room.state.frame.filter(pl.col("_rid") == other)["qty"].item() != 77
    finally:
        await editor.close()
        await room.close()
