"""The dashboard's browser files, served from ``client/web/`` (no CDN, no bundler).

``make install`` runs ``npm ci`` in ``client/web/``, which puts the
``@perspective-dev/*`` packages in ``client/web/node_modules``. Only a
whitelist of their ``dist`` directories is served, under
``/assets/<package>/dist/<dir>/<file>``, so the relative URLs inside the
bundles keep working: ``viewer/dist/cdn/perspective-viewer.js`` fetches
``../wasm/perspective-viewer.wasm``, and the WebSocket client of
``client/dist/cdn/perspective.js`` reuses the viewer's compiled wasm (it
fetches nothing itself; its own worker/server wasm is only for in-browser
tables, which a dashboard does not make). Source maps are not served.

Our own page script lives in ``client/web/`` and is served as
``/assets/coframe/<file>``.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

__all__ = ["ASSETS", "REQUIRED", "WEB_ROOT", "asset", "missing_assets", "web_root"]

#: client/web of the source tree, or COFRAME_WEB_DIR (the Docker image, where the code is installed).
WEB_ROOT = Path(os.environ.get("COFRAME_WEB_DIR") or Path(__file__).resolve().parents[2] / "client" / "web")

_JS, _WASM, _CSS = ".js", ".wasm", ".css"
CONTENT_TYPES = {
    _JS: "text/javascript; charset=utf-8",
    _WASM: "application/wasm",
    _CSS: "text/css; charset=utf-8",
}

# URL directory under /assets/ → (directory under client/web, suffixes served from it).
ASSETS: dict[str, tuple[str, frozenset[str]]] = {
    "coframe": (".", frozenset({_JS, _CSS})),
    **{
        f"@perspective-dev/{d}": (f"node_modules/@perspective-dev/{d}", frozenset(s))
        for d, s in (
            ("client/dist/cdn", {_JS}),
            ("viewer/dist/cdn", {_JS}),
            ("viewer/dist/wasm", {_WASM}),
            ("viewer/dist/css", {_CSS}),
            ("viewer-datagrid/dist/cdn", {_JS}),
            ("viewer-d3fc/dist/cdn", {_JS}),
        )
    },
}

# What the dashboard page loads; if one is missing the page says to run `make install`.
REQUIRED = (
    "@perspective-dev/client/dist/cdn/perspective.js",
    "@perspective-dev/viewer/dist/cdn/perspective-viewer.js",
    "@perspective-dev/viewer/dist/wasm/perspective-viewer.wasm",
    "@perspective-dev/viewer/dist/css/themes.css",
    "@perspective-dev/viewer-datagrid/dist/cdn/perspective-viewer-datagrid.js",
    "@perspective-dev/viewer-d3fc/dist/cdn/perspective-viewer-d3fc.js",
)


def web_root(request: Request) -> Path:
    """``client/web`` of this checkout, or ``app.state.web_root`` when a test sets it."""
    return Path(getattr(request.app.state, "web_root", None) or WEB_ROOT)


def resolve(root: Path, path: str) -> Path | None:
    """The file for URL path ``path`` (relative to /assets/), or None if it is not whitelisted."""
    directory, _, name = path.rpartition("/")
    entry = ASSETS.get(directory)
    if entry is None or not name or name.startswith(".") or "\\" in name:
        return None
    folder, suffixes = entry
    if Path(name).suffix not in suffixes:
        return None
    base = (root / folder).resolve()
    target = (base / name).resolve()
    if target.parent != base or not target.is_file():
        return None
    return target


def missing_assets(root: Path) -> list[str]:
    """The :data:`REQUIRED` files not installed under ``root`` (empty when all are there)."""
    return [p for p in REQUIRED if resolve(root, p) is None]


async def asset(request: Request) -> Response:
    """``GET /assets/{path}``: a whitelisted file with its content type, else 404."""
    path = request.path_params["path"]
    target = resolve(web_root(request), path)
    if target is None:
        hint = ""
        if path.startswith("@perspective-dev/") and missing_assets(web_root(request)):
            hint = " The browser packages are not installed: run `make install`."
        return PlainTextResponse(f"no asset '{path}'.{hint}", status_code=404)
    return FileResponse(
        target, media_type=CONTENT_TYPES[target.suffix], headers={"Cache-Control": "no-cache"}
    )
