"""HTML pages: ``GET /`` (the datasets) and ``GET /d/{dataset}`` (a live dashboard).

The dashboard page is a shell: ``client/web/dashboard.js`` connects a
``<perspective-viewer>`` to ``/perspective/{dataset}?branch=`` (see
:mod:`.endpoint`) and applies the ``?config=`` viewer config. With
``?edit=1`` it connects with ``edit=1`` and turns on the datagrid's edit
mode: a typed cell becomes a coframe ``set`` (:mod:`.editor`). Every
failure the page can know about up front gets its own status and a message
that says what to do: 404 for an unknown dataset or branch, 400 for a bad
``config``, 503 when the browser packages are not installed.
"""

from __future__ import annotations

import json
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..ops import is_ref_name
from ..rooms.listing import listing
from ..rooms.policy import Audience
from ..storage.types import NotFound
from .assets import missing_assets, web_root
from .edits import wants_edit
from .types import RID

if TYPE_CHECKING:
    from ..rooms import Registry

__all__ = ["index_page", "dashboard_page", "parse_config", "with_defaults", "RID_COLUMN_CONFIG"]

#: How the datagrid shows ``_rid``: a whole number without separators. The
#: Perspective table stores it as float64 (see :mod:`.types`: int32 is too
#: small), which the datagrid would otherwise show as 0.00, 1.00, ...
RID_COLUMN_CONFIG: dict[str, Any] = {
    "number_format": {"minimumFractionDigits": 0, "maximumFractionDigits": 0, "useGrouping": False}
}


def _page(title: str, body: str, *, status: int = 200, body_class: str = "", head: str = "") -> HTMLResponse:
    cls = f' class="{body_class}"' if body_class else ""
    html = (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/assets/coframe/coframe.css">'
        f"{head}</head><body{cls}>\n{body}\n</body></html>\n"
    )
    return HTMLResponse(html, status_code=status)


def _error_page(title: str, message: str, status: int) -> HTMLResponse:
    body = (
        f'<header><h1>{escape(title)}</h1><a href="/">all datasets</a></header>'
        f'<main><p class="error" id="error">{message}</p></main>'
    )
    return _page(title, body, status=status)


def dashboard_href(dataset: str, branch: str = "main") -> str:
    query = "" if branch == "main" else "?" + urlencode({"branch": branch})
    return f"/d/{quote(dataset, safe='')}{query}"


async def index_page(request: Request) -> HTMLResponse:
    """``GET /``: each dataset the user may read: its row count (under a row policy, of the
    user's rows, or ``-`` while the dataset is not loaded), a link to each branch's dashboard."""
    registry: Registry = request.app.state.registry
    # The identity the auth middleware proved (server.auth.http); the others do not exist for it.
    auth, identity = request.app.state.auth, request.scope["coframe.identity"]

    async def audience_of(name: str) -> Audience | None:
        access = await auth.access(identity, name)
        return None if access is None else access[1]  # type: ignore[no-any-return]

    rows = []
    for d in await listing(registry, audience_of):
        name = str(d["name"])
        if d.get("broken"):  # listed, not linked: it cannot load (see the listing's "broken")
            rows.append(
                f'<tr class="broken"><td>{escape(name)}</td><td>-</td>'
                f'<td class="error">broken: {escape(str(d["broken"]))}</td></tr>'
            )
            continue
        branches = [str(b) for b in d.get("branches") or ["main"]]  # type: ignore[attr-defined]
        links = " ".join(f'<a href="{escape(dashboard_href(name, b))}">{escape(b)}</a>' for b in branches)
        rows.append(
            f'<tr><td><a class="dataset" href="{escape(dashboard_href(name))}">{escape(name)}</a></td>'
            f"<td>{'-' if d['rows'] is None else format(d['rows'], ',')}</td><td>{links}</td></tr>"
        )
    table = (
        '<table class="datasets"><tr><th>dataset</th><th>rows</th><th>branches</th></tr>'
        + "".join(rows)
        + "</table>"
        if rows
        else "<p>No datasets yet: start with <code>coframe serve --demo</code> or upload one.</p>"
    )
    body = (
        "<header><h1>coframe</h1><span>datasets</span></header>"
        f"<main>{table}<p>Each dashboard is live and read-only; add <code>?config=</code> "
        "with a perspective-viewer config (JSON) to open it pivoted, or <code>?edit=1</code> "
        "to edit cells in the grid.</p></main>"
    )
    return _page("coframe: datasets", body)


def parse_config(raw: str | None) -> dict[str, Any]:
    """The ``?config=`` query value as a viewer config object ({} when absent).

    Raises:
        ValueError: not JSON, or not a JSON object; the message says what to send.
    """
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"config is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(value, dict):
        raise ValueError(f"config must be a JSON object, not {type(value).__name__}")
    return value


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A viewer config with coframe's defaults under it: ``_rid`` shown as an integer.

    What the config says about ``_rid`` wins, key by key; a ``columns_config``
    that is not an object is left for the viewer to reject.
    """
    columns = config.get("columns_config", {})
    if not isinstance(columns, dict):
        return config
    rid = columns.get(RID, {})
    if not isinstance(rid, dict):
        return config
    return {**config, "columns_config": {**columns, RID: {**RID_COLUMN_CONFIG, **rid}}}


async def _branch_exists(registry: Registry, dataset: str, branch: str) -> bool:
    if branch == "main" or (dataset, branch) in registry.rooms:
        return True
    if not is_ref_name(branch):  # a NUL or a newline never reaches the catalog
        return False
    try:
        await registry.storage.catalog.get_ref(dataset, branch, "branch")
    except NotFound:
        return False
    return True


def _script_json(value: Any) -> str:
    """JSON safe to put inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


async def dashboard_page(request: Request) -> HTMLResponse:
    """``GET /d/{dataset}?branch=&config=&edit=``: a ``<perspective-viewer>`` bound live to the room."""
    registry: Registry = request.app.state.registry
    dataset = request.path_params["dataset"]
    branch = request.query_params.get("branch", "main")
    if not await registry.exists(dataset):
        known = ", ".join(await registry.names()) or "none"
        return _error_page(
            "dataset not found",
            f"There is no dataset named <b>{escape(dataset)}</b>. Known datasets: {escape(known)}.",
            404,
        )
    if not await _branch_exists(registry, dataset, branch):
        return _error_page(
            "branch not found",
            f"Dataset <b>{escape(dataset)}</b> has no branch <b>{escape(branch)}</b>.",
            404,
        )
    try:
        config = parse_config(request.query_params.get("config"))
    except ValueError as e:
        example = escape('{"group_by":["region"],"columns":["price"],"aggregates":{"price":"sum"}}')
        return _error_page(
            "bad dashboard config",
            f"{escape(str(e))}. Pass a URL-encoded perspective-viewer config, e.g. <code>{example}</code>.",
            400,
        )
    missing = missing_assets(web_root(request))
    if missing:
        return _error_page(
            "dashboard assets missing",
            "The browser packages for dashboards are not installed (missing "
            f"<code>client/web/node_modules/{escape(missing[0])}</code>). "
            "Run <code>make install</code> (it runs <code>npm ci</code> in <code>client/web</code>), "
            "then reload this page.",
            503,
        )
    edit = wants_edit(request.query_params)
    query = {"branch": branch, **({"edit": "1"} if edit else {})}
    socket = f"/perspective/{quote(dataset, safe='')}?{urlencode(query)}"
    page = {"dataset": dataset, "branch": branch, "socket": socket, "config": with_defaults(config)}
    if edit:  # dashboard.js turns on the datagrid's edit mode
        page["edit"] = True
    head = (
        '<link rel="stylesheet" href="/assets/@perspective-dev/viewer/dist/css/themes.css">'
        '<link rel="stylesheet" href="/assets/coframe/d3fc-compat.css">'
        f'<script type="application/json" id="coframe-page">{_script_json(page)}</script>'
        '<script type="module" src="/assets/coframe/dashboard.js" onerror="document.getElementById('
        "'status').textContent='dashboard scripts failed to load: run make install'\"></script>"
    )
    title = f"{dataset}" + ("" if branch == "main" else f" ({branch})")
    body = (
        f'<header><h1>{escape(title)}</h1><a href="/">all datasets</a>'
        '<span id="status">loading…</span></header>'
        "<perspective-viewer></perspective-viewer>"
    )
    return _page(f"coframe: {title}", body, body_class="dashboard", head=head)
