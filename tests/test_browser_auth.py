"""Signing in from a browser (issue 12 §1): ``/login?token=`` and a live dashboard on the cookie.

Debian chromium through Playwright, a real uvicorn server on port 0 with
``auth="token"``. The page signs in with the URL ``coframe serve`` prints,
lists only the datasets the user may read, and its dashboard goes live:
the Perspective WebSocket is authenticated by the session cookie alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from server.storage.auth_types import Grant, User
from tests.browsing import ARTIFACTS, MS
from tests.conftest import small_frame


async def test_a_browser_signs_in_with_the_printed_url_and_sees_only_its_datasets(
    browser: Any, make_server: Callable[..., Any]
) -> None:
    from playwright.async_api import expect

    frames = {"sales": small_frame(), "secret": small_frame(3)}
    async with make_server(auth="token", frames=frames) as srv:
        auth = srv.app.state.auth
        await auth.store.add_user(User("dana", "Dana", created=time.time()))
        await auth.store.put_grant(Grant("sales", "dana", "viewer"))
        token = await auth.issue("dana", 600)
        context = await browser.new_context(locale="en-US", viewport={"width": 1280, "height": 720})
        page = await context.new_page()
        denied = await page.goto(f"{srv.http}/")
        assert denied is not None and denied.status == 401  # no cookie yet
        await page.goto(f"{srv.http}/login?token={token}")
        assert page.url == f"{srv.http}/"  # redirected to the index
        await expect(page.locator("a.dataset")).to_have_text(["sales"])  # not "secret"
        cookies = await context.cookies()
        session = next(c for c in cookies if c["name"] == "coframe_session")
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        await page.goto(f"{srv.http}/d/sales")
        await expect(page.locator("body")).to_have_attribute("data-state", "live", timeout=30 * MS)
        rows = page.locator("perspective-viewer regular-table tbody tr")
        await expect(rows.first).to_be_visible(timeout=10 * MS)  # data came over the cookie's socket
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "signed_in_dashboard.png"))
        hidden = await page.goto(f"{srv.http}/d/secret")
        assert hidden is not None and hidden.status == 404  # as if it did not exist
        await context.close()
