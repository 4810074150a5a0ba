"""Signing in from a browser (issue 12 §1): ``/login?token=`` and a live dashboard on the cookie.

Debian chromium through Playwright, a real uvicorn server on port 0 with
``auth="token"``. The page signs in with the URL ``coframe serve`` prints,
lists only the datasets the user may read, and its dashboard goes live:
the Perspective WebSocket is authenticated by the session cookie alone.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
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


_PROBE = """<!doctype html><body><script>
for (const [key, path] of [["coframe", "/ws/sales"], ["perspective", "/perspective/sales"]]) {
  const ws = new WebSocket("ws://127.0.0.1:PORT" + path);
  ws.onmessage = () => { document.body.dataset[key + "Message"] = "yes"; };
  ws.onclose = (e) => { document.body.dataset[key] = String(e.code); };
}
</script></body>"""


@contextlib.contextmanager
def _page_server(html: str) -> Iterator[str]:
    """Another origin on 127.0.0.1 (a port of its own) serving ``html`` at ``/evil``."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/evil"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_cross_origin_page_cannot_open_a_websocket_on_the_users_cookie(
    browser: Any, make_server: Callable[..., Any]
) -> None:
    """Another origin on the same host (another port: the same *site*, so the SameSite=Strict
    cookie goes along) opens both WebSockets: the Origin check refuses them."""
    from playwright.async_api import expect

    async with make_server(auth="token") as srv:
        port = srv.http.rsplit(":", 1)[1]
        token = await srv.app.state.auth.issue("admin", 600)
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{srv.http}/login?token={token}")  # the user is signed in: the cookie is set
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        with _page_server(_PROBE.replace("PORT", port)) as evil:
            await page.goto(evil)
            body = page.locator("body")
            await expect(body).to_have_attribute("data-coframe", "4403", timeout=10 * MS)
            await expect(body).to_have_attribute("data-perspective", "1006", timeout=10 * MS)
            # The server refused the Perspective handshake itself (not the browser): a 403.
            assert any("/perspective/sales" in m and "403" in m for m in console), console
            assert await body.get_attribute("data-coframe-message") is None
            assert await body.get_attribute("data-perspective-message") is None
        await context.close()
