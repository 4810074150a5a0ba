"""Editing a cell in the dashboard's datagrid (issue 11 §4), in a real browser.

Debian chromium (/usr/bin/chromium) driven by Playwright, as in
tests/test_browser.py; a real uvicorn server on port 0 with the demo table.
The page is opened with ``?edit=1``; a cell typed into the grid goes to
the server as Perspective's ``table_update_req`` and becomes a coframe
``set`` (server/perspective/editor.py). A Python client's mirror sees it;
a value the room refuses comes back to the grid as the server's value and
the room's message. Waits are Playwright's DOM waits and the client's delta
stream, with deadlines, never sleeps.

Screenshots: tests/artifacts/edit_accepted.png, tests/artifacts/edit_refused.png.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import polars as pl
import pytest

from client import connect
from server.demo import demo_sales
from tests.browsing import ARTIFACTS, MS
from tests.conftest import LiveServer
from tests.serving import timeout

COLUMNS = {"columns": ["_rid", "qty", "price", "note"]}


@pytest.fixture
async def demo(make_server: Callable[..., Any]) -> AsyncIterator[LiveServer]:
    async with make_server(frames={"sales": demo_sales(500)}) as srv:
        yield srv


async def _type_into(page: Any, cell: Any, text: str) -> None:
    """Type ``text`` into a datagrid cell as a user does: click, select its text, type, Enter."""
    await cell.click()
    await page.keyboard.press("Control+A")
    await page.keyboard.type(text)
    await page.keyboard.press("Enter")  # focus moves down a row: the datagrid writes the cell


async def test_grid_edit_reaches_a_mirror_and_a_refused_one_reverts(browser: Any, demo: LiveServer) -> None:
    from playwright.async_api import expect

    context = await browser.new_context(locale="en-US", viewport={"width": 1280, "height": 720})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    await page.goto(f"{demo.http}/d/sales?edit=1&config={quote(json.dumps(COLUMNS))}")
    body, status = page.locator("body"), page.locator("#status")
    await expect(body).to_have_attribute("data-state", "live", timeout=30 * MS)
    await expect(status).to_contain_text("editing")
    settings = json.loads(await page.locator("#coframe-page").text_content() or "{}")
    assert settings["edit"] is True and settings["socket"] == "/perspective/sales?branch=main&edit=1"

    async with connect(demo.url, "sales") as room:
        deltas = room.deltas()
        # The first row whose qty is not null (rows are in _rid order: no sort in the config).
        i = next(n for n, q in enumerate(room.frame["qty"].to_list()[:20]) if q is not None)
        rid, before = int(room.frame["_rid"][i]), int(room.frame["qty"][i])
        cells = page.locator("perspective-viewer regular-table tbody tr").nth(i).locator("td")
        await expect(cells.nth(0)).to_have_text(str(rid), timeout=10 * MS)
        qty = cells.nth(1)
        await expect(qty).to_have_text(str(before))

        # 1. An edit in the grid reaches the Python client's mirror, as this connection.
        new = 777 if before != 777 else 778
        await _type_into(page, qty, f"00{new}")  # the grid sends 777; the server's value shows "777"
        async with asyncio.timeout(timeout(10)):
            async for d in deltas:
                if rid in d.upserts["_rid"].to_list():
                    break
        assert d.by[0].startswith("dashboard-"), d.by
        assert room.frame.filter(pl.col("_rid") == rid)["qty"].item() == new
        await expect(qty).to_have_text(str(new), timeout=timeout(10) * MS)  # redrawn from the room's delta
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "edit_accepted.png"))

        # 2. A value the room refuses (1.5 into the Int32 column qty; the grid sends any number):
        #    the message shows, and the cell shows the server's value again.
        seq = room.seq
        await _type_into(page, qty, "1.5")
        await expect(status).to_have_attribute("data-edit-error", re.compile("bad_value"), timeout=10 * MS)
        message = await status.get_attribute("data-edit-error") or ""
        assert message.startswith("coframe edit refused (bad_value): column 'qty' is Int32"), message
        await expect(status).to_have_text(message)
        await expect(qty).to_have_text(str(new), timeout=timeout(10) * MS)
        await page.screenshot(path=str(ARTIFACTS / "edit_refused.png"))
        await room.sync()
        assert room.seq == seq
        assert room.frame.filter(pl.col("_rid") == rid)["qty"].item() == new

        # 3. Text in a number cell never leaves the browser: the datagrid puts the old text back.
        price = cells.nth(2)
        shown = await price.inner_text()
        await _type_into(page, price, "abc")
        await expect(price).to_have_class(re.compile("psp-error"))
        await expect(price).to_have_text(shown)
        await room.sync()
        assert room.seq == seq
    assert not errors, errors
