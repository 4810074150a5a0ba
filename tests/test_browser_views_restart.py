"""A dashboard after a kill -9 of the views process (issue 11 §1), in a real browser.

Debian chromium (/usr/bin/chromium) driven by Playwright, as in
tests/test_browser.py; a real uvicorn server on port 0 with a demo table.
The page is live, a Python client has a view open on the same room; then the
views process is killed with SIGKILL. The server closes the dashboard with
1012 and rebuilds the views in a fresh process; the page reconnects by
itself (client/web/dashboard.js ``reconnect``) and shows the table's rows
again, and the Python view gets a fresh snapshot. An edit afterwards reaches
both, so they follow the new process. Waits are Playwright's own (a
MutationObserver records every state the page goes through) and the view's
update stream, with deadlines, never sleeps.

Screenshots: tests/artifacts/views_restart_before.png,
tests/artifacts/views_restart_after.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import polars as pl
import psutil
import pytest

from client import connect
from server.demo import demo_sales
from tests.browsing import ARTIFACTS, MS
from tests.conftest import LiveServer
from tests.serving import timeout

COLUMNS = {"columns": ["order_id", "region", "price"]}
KNOWN, EDITED = 4242.25, 5151.75  # the first row's price, before and after the edit

# Every value body[data-state] takes from now on, in order, with the status line shown with it
# (both are set together by dashboard.js show()).
RECORD_STATES = """() => {
    const record = () => [document.body.dataset.state, document.getElementById("status").textContent];
    window.coframeSeen = [record()];
    new MutationObserver(() => window.coframeSeen.push(record()))
        .observe(document.body, {attributes: true, attributeFilter: ["data-state"]});
}"""
RECONNECTED = """() => {
    const states = window.coframeSeen.map(([state, _]) => state);
    return states.includes("reconnecting") && states[states.length - 1] === "live";
}"""


@pytest.fixture
async def demo(make_server: Callable[..., Any]) -> AsyncIterator[LiveServer]:
    frame = demo_sales(500).with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(KNOWN).otherwise(pl.col("price")).alias("price")
    )
    async with make_server(frames={"sales": frame}) as srv:
        yield srv


def _workers() -> set[int]:
    """Pids of this process's children that run the views process (server.perspective.worker)."""
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if any("server.perspective.worker" in part for part in child.cmdline()):
                out.add(child.pid)
        except psutil.NoSuchProcess:  # the killed one, reaped meanwhile
            continue
    return out


async def test_a_dashboard_reconnects_by_itself_after_the_views_process_is_killed(
    browser: Any, demo: LiveServer
) -> None:
    from playwright.async_api import expect

    context = await browser.new_context(locale="en-US", viewport={"width": 1280, "height": 720})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    await page.goto(f"{demo.http}/d/sales?config={quote(json.dumps(COLUMNS))}")
    body = page.locator("body")
    await expect(body).to_have_attribute("data-state", "live", timeout=30 * MS)
    first = page.locator("perspective-viewer regular-table tbody tr").first.locator("td")
    await expect(first.nth(0)).to_have_text("1", timeout=10 * MS)  # order_id of _rid 0
    await expect(first.nth(2)).to_have_text("4,242.25")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "views_restart_before.png"))

    async with connect(demo.url, "sales") as room:
        # An expression keeps it a Perspective view (a plain view is served from the frame, which the
        # kill does not touch).
        view = await room.subscribe_view(
            columns=["order_id", "price", "twice"], expressions={"twice": '"price" * 2'}, viewport=(0, 10)
        )
        assert view.frame["price"][0] == KNOWN
        updates = view.updates()
        process = demo.registry.views.process
        killed = process.pid
        assert killed is not None and _workers() == {killed}
        await page.evaluate(RECORD_STATES)

        os.kill(killed, signal.SIGKILL)

        # The page goes through "reconnecting" and is live again, on the new process, with its rows.
        await page.wait_for_function(RECONNECTED, timeout=timeout(60) * MS)
        seen = await page.evaluate("() => window.coframeSeen")
        states = [state for state, _ in seen]
        assert re.fullmatch(r"live(,reconnecting)+,live", ",".join(states)), seen
        # The server closed it with 1012 (reconnect); Perspective's client drops the close reason.
        assert all("1012" in text for state, text in seen if state == "reconnecting"), seen
        first = page.locator("perspective-viewer regular-table tbody tr").first.locator("td")
        await expect(first.nth(0)).to_have_text("1", timeout=timeout(10) * MS)
        await expect(first.nth(2)).to_have_text("4,242.25")
        assert process.restarts == 1 and process.pid not in (None, killed)
        assert _workers() == {process.pid}

        # The Python client's view got a fresh snapshot from the new process, and is still open.
        async with asyncio.timeout(timeout(30)):
            async for ev in updates:
                if ev.kind == "snapshot":
                    break
        assert ev.kind == "snapshot" and not view.closed
        assert ev.frame["order_id"].to_list() == list(range(1, 11)) and ev.frame["price"][0] == KNOWN

        # Both follow the room again: an edit reaches the grid and the view.
        ack = await room.set_cells([0], "price", [EDITED])
        await expect(first.nth(2)).to_have_text("5,151.75", timeout=timeout(10) * MS)
        frame = await asyncio.wait_for(view.wait_for(lambda f: view.seq >= ack.seq), timeout(10))
        assert frame["price"][0] == EDITED
        await expect(body).to_have_attribute("data-state", "live")
        await page.screenshot(path=str(ARTIFACTS / "views_restart_after.png"))
        print(f"\nstates after the kill: {seen}; status: {await page.locator('#status').inner_text()!r}")
    assert not errors, errors
    await context.close()
