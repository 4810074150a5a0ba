"""What the browser tests share: Debian's chromium driven by Playwright (never a downloaded browser).

The ``browser`` fixture (tests/conftest.py) launches it with :func:`launched`;
:func:`need_browser` skips a test (fails it under ``CI=true``) when chromium,
the playwright package or the dashboards' npm packages are missing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from server.perspective.assets import WEB_ROOT, missing_assets
from tests.pg import require_service

__all__ = ["CHROMIUM", "ARGS", "ARTIFACTS", "MS", "need_browser", "launched"]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]  # fmt: skip
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots
MS = 1000  # Playwright timeouts are in milliseconds


def need_browser() -> None:
    """Skip (fail under CI=true) when something the browser tests need is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        require_service(f"Chromium not found at {CHROMIUM}: run `sh tests/browser.sh` (make test does)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        require_service("the playwright package is not installed: run `make install-test`")
    missing = missing_assets(WEB_ROOT)
    if missing:
        require_service(f"client/web/node_modules/{missing[0]} is missing: run `make install` (npm ci)")


@contextlib.asynccontextmanager
async def launched() -> AsyncIterator[Any]:
    """A headless Debian chromium, closed on exit."""
    need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            await b.close()
