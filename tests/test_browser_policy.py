"""An open dashboard of a restricted user follows changes to its grant, in a real browser.

Debian chromium (/usr/bin/chromium) driven by Playwright, a real uvicorn
server on port 0 with ``auth="token"``. ``vera`` holds a viewer grant on
``sales`` with a row predicate (``region = 'EU'``) and a hidden column; she
signs in with ``/login?token=`` and opens ``/d/sales``: the grid shows the
EU rows only, and neither the hidden column's name nor its values are
anywhere in the page (light and shadow DOM, text and attributes).

An admin changes her predicate to ``region = 'US'`` over HTTP
(``POST /api/datasets/sales/grants``): the server re-checks open
connections and closes her dashboard's Perspective socket (1012); the page
reconnects by itself (client/web/dashboard.js ``reconnect``) and shows the
US rows only, no EU value left anywhere in the page. Then the admin revokes
the grant (``DELETE .../grants/vera``): the socket is closed with 4403,
which no reconnect can get past, so the page does not retry: it drops its
viewer (no row of the dataset left on screen or in the DOM) and ends in its
``error`` state saying her access ended.

Waits are Playwright's own (a MutationObserver records every state the
page goes through), with deadlines, never sleeps. Screenshots (in
tests/artifacts/): policy_dashboard_eu.png, policy_dashboard_us.png,
policy_dashboard_revoked.png.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import polars as pl

from tests.browsing import ARTIFACTS, MS
from tests.helpers import signed_in
from tests.serving import timeout

HIDDEN = "zqsecretcolumn"  # the hidden column's name
SECRET = "zqsecretcell"  # in the hidden column, on every row
REGIONS = ["EU", "US", "APAC"] * 3
NAMES = [f"{r.lower()}row{i}" for i, r in enumerate(REGIONS)]  # eurow0, usrow1, apacrow2, ...
CELLS = "perspective-viewer regular-table tbody td"
STATUS = "header #status"  # the page's own (the viewer's shadow DOM has a #status too)
GRANT = {"user": "vera", "role": "viewer", "rows": "region = 'EU'", "hide": [HIDDEN]}

# From now on, every value body[data-state] takes, with the status line shown with it
# (dashboard.js show() sets both). One observer per page; a later call restarts the record.
RECORD_STATES = """() => {
    const record = () => [document.body.dataset.state, document.getElementById("status").textContent];
    window.coframeSeen = [record()];
    if (window.coframeObserver) return;
    window.coframeObserver = new MutationObserver(() => window.coframeSeen.push(record()));
    window.coframeObserver.observe(document.body, {attributes: true, attributeFilter: ["data-state"]});
}"""
# The whole page as HTML, every open shadow root included: text and attributes alike.
DEEP_HTML = """() => {
    const parts = [document.documentElement.outerHTML];
    const walk = (root) => {
        for (const el of root.querySelectorAll("*")) {
            if (el.shadowRoot) { parts.push(el.shadowRoot.innerHTML); walk(el.shadowRoot); }
        }
    };
    walk(document);
    return parts.join("\\n");
}"""

TABLE = """async () => {
    const t = await document.querySelector("perspective-viewer").getTable();
    return [await t.size(), Object.keys(await t.schema())];
}"""
VISIBLE = ["_rid", "name", "qty", "region"]


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "region": REGIONS,
            "name": NAMES,
            "qty": pl.Series(range(len(REGIONS)), dtype=pl.Int64),
            HIDDEN: [f"{SECRET}{i}" for i in range(len(REGIONS))],
        }
    )


def _cells(region: str) -> list[str]:
    """The grid's body cells under a ``region = ...`` grant, row by row: _rid, region, name, qty."""
    return [c for i, r in enumerate(REGIONS) if r == region for c in (str(i), r, NAMES[i], str(i))]


def _names_outside(region: str) -> list[str]:
    return [n for n, r in zip(NAMES, REGIONS, strict=True) if r != region]


@dataclass
class Dashboard:
    page: Any
    http: httpx.AsyncClient  # the admin's
    errors: list[str]

    async def absent(self, words: list[str], where: str) -> None:
        html = await self.page.evaluate(DEEP_HTML)
        for w in words:
            assert w not in html, f"{w!r} is in the page {where}"

    async def table(self) -> tuple[int, list[str]]:
        """The size and columns of the table the viewer is bound to (what the server sent her)."""
        size, columns = await self.page.evaluate(TABLE)
        return size, sorted(columns)

    async def states(self) -> list[tuple[str, str]]:
        return [(s, t) for s, t in await self.page.evaluate("() => window.coframeSeen")]

    async def shoot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / name))


@asynccontextmanager
async def _eu_dashboard(
    browser: Any, make_server: Callable[..., Any], shot: str | None
) -> AsyncIterator[Dashboard]:
    """vera's live dashboard under the EU grant (checked: EU rows only, nothing hidden shown)."""
    from playwright.async_api import expect

    async with make_server(auth="token", frames={"sales": _frame()}) as srv:
        admin = str(await srv.app.state.auth.issue("admin", 600))
        vera = await signed_in(srv, "vera", role=None)
        headers = {"Authorization": f"Bearer {admin}"}
        async with httpx.AsyncClient(base_url=srv.http, headers=headers) as http:
            r = await http.post("/api/datasets/sales/grants", json=GRANT)
            assert r.status_code == 201, r.text
            context = await browser.new_context(locale="en-US", viewport={"width": 1280, "height": 720})
            page = await context.new_page()
            board = Dashboard(page, http, [])
            page.on("pageerror", lambda e: board.errors.append(str(e)))
            await page.goto(f"{srv.http}/login?token={vera}")
            await page.goto(f"{srv.http}/d/sales")
            await expect(page.locator("body")).to_have_attribute(
                "data-state", "live", timeout=timeout(30) * MS
            )
            await expect(page.locator(CELLS)).to_have_text(_cells("EU"), timeout=timeout(10) * MS)
            assert await board.table() == (3, VISIBLE)
            await board.absent([HIDDEN, SECRET, *_names_outside("EU")], "under the EU grant")
            if shot:
                await board.shoot(shot)
            await page.evaluate(RECORD_STATES)
            try:
                yield board
            finally:
                await context.close()


async def _move_to_us(board: Dashboard, shot: str | None) -> None:
    """The admin changes vera's predicate: the page reconnects by itself and shows the US rows only."""
    from playwright.async_api import expect

    r = await board.http.post("/api/datasets/sales/grants", json={**GRANT, "rows": "region = 'US'"})
    assert r.status_code == 201, r.text
    await expect(board.page.locator(CELLS)).to_have_text(_cells("US"), timeout=timeout(30) * MS)
    await expect(board.page.locator("body")).to_have_attribute("data-state", "live")
    seen = await board.states()
    assert re.fullmatch(r"live(,reconnecting)+,live", ",".join(s for s, _ in seen)), seen
    assert all("1012" in text for state, text in seen if state == "reconnecting"), seen
    assert await board.table() == (3, VISIBLE)
    await board.absent([HIDDEN, SECRET, *_names_outside("US")], "under the US grant")
    if shot:
        await board.shoot(shot)
    await board.page.evaluate(RECORD_STATES)


async def test_a_restricted_dashboard_follows_a_grant_change_by_itself(
    browser: Any, make_server: Callable[..., Any]
) -> None:
    async with _eu_dashboard(browser, make_server, "policy_dashboard_eu.png") as board:
        await _move_to_us(board, "policy_dashboard_us.png")
        assert not board.errors, board.errors


async def test_a_revoked_dashboard_ends_not_live_and_shows_no_rows(
    browser: Any, make_server: Callable[..., Any]
) -> None:
    from playwright.async_api import expect

    async with _eu_dashboard(browser, make_server, None) as board:
        await _move_to_us(board, None)
        r = await board.http.delete("/api/datasets/sales/grants/vera")
        assert r.status_code == 200, r.text
        # The socket is closed with 4403 (forbidden): no reconnect can succeed, so the page
        # does not retry, drops its viewer and says why.
        await expect(board.page.locator("body")).to_have_attribute(
            "data-state", "error", timeout=timeout(30) * MS
        )
        await expect(board.page.locator(STATUS)).to_have_text(
            re.compile(r"^access ended \(4403\): your access to this dataset was revoked; ask an admin$")
        )
        seen = await board.states()
        assert ",".join(s for s, _ in seen) == "live,error", seen
        await expect(board.page.locator("#withdrawn")).to_have_text("This page no longer shows the dataset.")
        await board.shoot("policy_dashboard_revoked.png")
        await expect(board.page.locator(CELLS)).to_have_count(0)
        assert await board.page.locator("perspective-viewer").count() == 0
        await board.absent(NAMES, "after the revocation")
        assert not board.errors, board.errors
