"""Browser dashboards (issue 4): the routes the app mounts.

| route | what | module |
|---|---|---|
| ``GET /`` | the datasets, with links to their dashboards | :mod:`.pages` |
| ``GET /d/{dataset}?branch=&config=`` | a live ``<perspective-viewer>`` | :mod:`.pages` |
| ``GET /assets/{path}`` | whitelisted ``client/web`` files (JS, wasm, CSS) | :mod:`.assets` |
| ``WS /perspective/{dataset}?branch=`` | Perspective's protocol, read-only | :mod:`.endpoint` |
"""

from __future__ import annotations

from starlette.routing import Route, WebSocketRoute

from .assets import asset
from .endpoint import perspective_endpoint
from .pages import dashboard_page, index_page

__all__ = ["routes"]

routes = [
    Route("/", index_page),
    Route("/d/{dataset}", dashboard_page),
    Route("/assets/{path:path}", asset),
    WebSocketRoute("/perspective/{dataset}", perspective_endpoint),
]
