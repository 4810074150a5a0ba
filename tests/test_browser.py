"""Dashboards in a real browser (issue 4): headless Chromium driven by Playwright.

Chromium is Debian's package at /usr/bin/chromium (tests/browser.sh installs
it; ``playwright install`` is never run). The server is real uvicorn on a
port-0 socket with the demo dataset. Waits are Playwright's own DOM waits
with deadlines, never sleeps.

The dashboard test saves a screenshot to tests/artifacts/dashboard.png.
"""

from __future__ import annotations

import json
import re
import time
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

GROUPED = {"group_by": ["region"], "columns": ["price"], "aggregates": {"price": "sum"}}


@pytest.fixture
async def demo(make_server: Callable[..., Any]) -> AsyncIterator[LiveServer]:
    async with make_server(frames={"sales": demo_sales(5_000)}) as srv:
        yield srv


async def _page(browser: Any) -> tuple[Any, list[str]]:
    context = await browser.new_context(locale="en-US", viewport={"width": 1280, "height": 720})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    return page, errors


def _number(text: str) -> float:
    return float(text.replace(",", "").strip())


def _eu_sum(frame: pl.DataFrame) -> float:
    return float(frame.filter(pl.col("region") == "EU")["price"].sum())


async def test_dashboard_is_live_and_read_only(browser: Any, demo: LiveServer) -> None:
    from playwright.async_api import expect

    page, errors = await _page(browser)
    url = f"{demo.http}/d/sales?config={quote(json.dumps(GROUPED))}"
    await page.goto(url)
    await expect(page.locator("body")).to_have_attribute("data-state", "live", timeout=30 * MS)

    # 1. A grouped sum, read from the datagrid's cells (regular-table, in open shadow roots).
    rows = page.locator("perspective-viewer regular-table tbody tr")
    eu = rows.filter(has=page.locator("th", has_text=re.compile(r"^\s*EU\s*$"))).locator("td").first
    await expect(eu).to_have_text(re.compile(r"\d"), timeout=10 * MS)
    shown = await eu.inner_text()
    async with connect(demo.url, "sales") as room:
        assert _number(shown) == pytest.approx(_eu_sum(room.frame), abs=0.01)
        seq, frame = room.seq, room.frame

        # 2. The browser's own Perspective connection cannot change the table.
        refused = await page.evaluate(
            """async (rid) => {
                const table = await document.querySelector("perspective-viewer").getTable();
                const out = {size: await table.size()};
                const attempts = {  // delete last: the JS Table answers nothing after a delete()
                    update: () => table.update([{_rid: rid, price: 1e9}]),
                    remove: () => table.remove([rid]),
                    clear: () => table.clear(),
                    delete: () => table.delete(),
                };
                for (const [name, attempt] of Object.entries(attempts)) {
                    try { await attempt(); out[name] = "accepted"; }
                    catch (e) { out[name] = String(e?.message ?? e); }
                }
                return out;
            }""",
            float(frame["_rid"][0]),
        )
        for name in ("update", "remove", "clear", "delete"):
            assert "read-only" in refused[name], (name, refused[name])
        assert refused["size"] == frame.height
        await room.sync()
        assert room.seq == seq
        assert room.frame.equals(frame)
        await expect(eu).to_have_text(shown)

        # 3. An edit through coframe shows up in the browser within a tick (10 s deadline).
        target = frame.filter(pl.col("region") == "EU").drop_nulls("price").row(0, named=True)
        started = time.monotonic()
        await room.set_cells([target["_rid"]], "price", [target["price"] + 1234.5])
        expected = _eu_sum(frame) + 1234.5
        await expect(eu).not_to_have_text(shown, timeout=timeout(10) * MS)
        elapsed = time.monotonic() - started
        assert _number(await eu.inner_text()) == pytest.approx(expected, abs=0.01)

        # 4. A schema change rebuilds the table: the dashboard reconnects by itself, keeps its
        #    pivot, and has the new column.
        await room.add_column("tax", dtype="Float64", default=0.5)
        await page.wait_for_function(
            """async () => {
                try {
                    const table = await document.querySelector("perspective-viewer").getTable();
                    return (await table.columns()).includes("tax");
                } catch (e) { return false; }  // the old connection, closed by the server
            }""",
            timeout=timeout(10) * MS,
        )
        await expect(page.locator("body")).to_have_attribute("data-state", "live", timeout=timeout(10) * MS)
        await expect(eu).to_have_text(re.compile(r"\d"), timeout=timeout(10) * MS)
        assert _number(await eu.inner_text()) == pytest.approx(expected, abs=0.01)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    await page.screenshot(path=str(shot))
    print(f"\nedit visible in the browser after {elapsed * 1000:.0f} ms; screenshot: {shot}")
    assert not [e for e in errors if "read-only" not in e], errors


async def test_unknown_dataset_page_and_index_in_the_browser(browser: Any, demo: LiveServer) -> None:
    page, _ = await _page(browser)
    response = await page.goto(f"{demo.http}/d/nope")
    assert response is not None and response.status == 404
    assert "no dataset named nope" in await page.locator("#error").inner_text()
    await page.goto(f"{demo.http}/")
    link = page.locator("a.dataset", has_text="sales")
    assert await link.get_attribute("href") == "/d/sales"


async def test_rid_shows_as_an_integer_in_the_datagrid(browser: Any, demo: LiveServer) -> None:
    """_rid is float64 in the Perspective table; the dashboard shows 0, 1, 2, not 0.00, 1.00."""
    from playwright.async_api import expect

    page, errors = await _page(browser)
    await page.goto(f"{demo.http}/d/sales?config={quote(json.dumps({'columns': ['_rid', 'price']}))}")
    await expect(page.locator("body")).to_have_attribute("data-state", "live", timeout=30 * MS)
    first = page.locator("perspective-viewer regular-table tbody tr").first.locator("td")
    await expect(first.first).to_have_text(re.compile(r"\d"), timeout=10 * MS)
    rid, price = (await first.nth(0).inner_text()).strip(), (await first.nth(1).inner_text()).strip()
    assert re.fullmatch(r"\d+", rid), f"_rid shows as {rid!r}"
    assert re.fullmatch(r"-?[\d,]+\.\d\d", price), f"other float columns keep two decimals: {price!r}"
    assert not errors, errors
