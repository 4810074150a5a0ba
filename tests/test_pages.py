"""Dashboard pages and assets (issue 4): ``/``, ``/d/{dataset}``, ``/assets/...``.

Real uvicorn on port 0 for the pages; in-process (httpx's ASGI transport)
for a checkout without ``client/web/node_modules``; pure for the asset whitelist.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from server.app import create_app, open_registry, start_auth
from server.perspective.assets import ASSETS, REQUIRED, WEB_ROOT, missing_assets, resolve
from server.perspective.pages import RID_COLUMN_CONFIG, parse_config, with_defaults
from server.settings import Settings
from tests.conftest import LiveServer, small_frame
from tests.pg import require_service

GROUPED = {"group_by": ["region"], "columns": ["price"], "aggregates": {"price": "sum"}}


@pytest.fixture
async def http(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http) as c:
        yield c


def installed() -> bool:
    return not missing_assets(WEB_ROOT)


async def test_index_lists_datasets(http: httpx.AsyncClient) -> None:
    r = await http.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert 'href="/d/sales"' in r.text
    assert ">sales</a>" in r.text


async def test_unknown_dataset_is_a_404_page(http: httpx.AsyncClient) -> None:
    r = await http.get("/d/nope")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert "no dataset named <b>nope</b>" in r.text
    assert "Known datasets: sales" in r.text


async def test_unknown_branch_is_a_404_page(http: httpx.AsyncClient) -> None:
    r = await http.get("/d/sales", params={"branch": "dev"})
    assert r.status_code == 404
    assert "has no branch <b>dev</b>" in r.text


async def test_bad_config_is_a_400_page(http: httpx.AsyncClient) -> None:
    r = await http.get("/d/sales", params={"config": "{group_by"})
    assert r.status_code == 400
    assert "config is not valid JSON" in r.text
    r = await http.get("/d/sales", params={"config": "[1]"})
    assert r.status_code == 400
    assert "must be a JSON object" in r.text


async def test_dashboard_page_embeds_config_and_socket(http: httpx.AsyncClient) -> None:
    if not installed():
        require_service("client/web/node_modules is not installed: run `make install` (npm ci)")
    config = {**GROUPED, "title": "</script><b>x</b>"}
    r = await http.get(f"/d/sales?config={quote(json.dumps(config))}")
    assert r.status_code == 200
    assert "<perspective-viewer>" in r.text
    assert "</script><b>" not in r.text  # escaped inside the JSON <script>
    start = r.text.index('id="coframe-page">') + len('id="coframe-page">')
    page = json.loads(r.text[start : r.text.index("</script>", start)])
    assert page == {
        "dataset": "sales",
        "branch": "main",
        "socket": "/perspective/sales?branch=main",
        "config": {**config, "columns_config": {"_rid": RID_COLUMN_CONFIG}},
    }


async def test_assets_have_content_types(http: httpx.AsyncClient) -> None:
    if not installed():
        require_service("client/web/node_modules is not installed: run `make install` (npm ci)")
    types = {".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css"}
    for path in (*REQUIRED, "coframe/dashboard.js", "coframe/coframe.css"):
        r = await http.get(f"/assets/{path}")
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith(types[Path(path).suffix]), path


@pytest.mark.parametrize(
    "path",
    [
        "@perspective-dev/viewer/dist/cdn/perspective-viewer.js.map",  # source maps are not served
        "@perspective-dev/viewer/package.json",
        "@perspective-dev/viewer/dist/wasm/perspective-viewer.js",  # only the wasm from that directory
        "@perspective-dev/viewer/dist/cdn/../../package.json",
        "@perspective-dev/viewer/dist/cdn/%2e%2e/%2e%2e/package.json",
        "@perspective-dev/client/dist/cdn/..%2f..%2fpackage.json",
        "@perspective-dev/server/dist/wasm/perspective-server.wasm",  # not needed: not served
        "coframe/package.json",
        "coframe/package-lock.json",
        "coframe/.hidden.js",
        "coframe/node_modules/@perspective-dev/client/dist/cdn/perspective.js",
    ],
)
async def test_only_whitelisted_files_are_served(http: httpx.AsyncClient, path: str) -> None:
    r = await http.get(f"/assets/{path}")
    assert r.status_code == 404


def test_resolve_stays_inside_whitelisted_directories(tmp_path: Path) -> None:
    cdn = tmp_path / "node_modules/@perspective-dev/client/dist/cdn"
    cdn.mkdir(parents=True)
    (cdn / "perspective.js").write_text("export default 1;")
    (cdn / "evil.js").symlink_to(tmp_path / "outside.js")
    (tmp_path / "outside.js").write_text("x")
    assert resolve(tmp_path, "@perspective-dev/client/dist/cdn/perspective.js") == (cdn / "perspective.js")
    assert resolve(tmp_path, "@perspective-dev/client/dist/cdn/evil.js") is None  # symlink out
    assert resolve(tmp_path, "@perspective-dev/client/dist/cdn/missing.js") is None
    assert resolve(tmp_path, "@perspective-dev/client/dist/perspective.js") is None
    assert all(not d.startswith("/") and ".." not in d for d in ASSETS)


def test_the_default_config_shows_rid_as_an_integer_under_the_users_config() -> None:
    """_rid is float64 in the Perspective table; the datagrid shows it with no decimals."""
    fmt = RID_COLUMN_CONFIG["number_format"]
    assert fmt["maximumFractionDigits"] == 0 and fmt["useGrouping"] is False
    assert with_defaults({}) == {"columns_config": {"_rid": RID_COLUMN_CONFIG}}
    mine = {"columns_config": {"price": {"fixed": 1}, "_rid": {"bold": True, "number_format": {"a": 1}}}}
    assert with_defaults(mine) == {
        "columns_config": {"price": {"fixed": 1}, "_rid": {"bold": True, "number_format": {"a": 1}}}
    }
    assert with_defaults({"columns_config": {"_rid": {"bold": True}}})["columns_config"]["_rid"] == {
        **RID_COLUMN_CONFIG,
        "bold": True,
    }
    assert with_defaults({"columns_config": 3}) == {"columns_config": 3}  # for the viewer to reject


def test_parse_config() -> None:
    assert parse_config(None) == {}
    assert parse_config(" ") == {}
    assert parse_config(json.dumps(GROUPED)) == GROUPED
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_config("{")
    with pytest.raises(ValueError, match="must be a JSON object"):
        parse_config('"x"')


async def test_missing_node_modules_page_says_run_make_install(tmp_path: Path) -> None:
    """Without client/web/node_modules the app still serves, and the dashboard says what to do."""
    registry = await open_registry(Settings(demo=False))
    await registry.create("sales", small_frame())
    settings = Settings(demo=False, auth="none")
    app = create_app(settings, registry)
    app.state.registry = registry  # what the lifespan does; pages need nothing else
    app.state.auth, _ = await start_auth(settings, registry)
    app.state.web_root = tmp_path  # a checkout where `npm ci` has not run
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://coframe") as c:
        assert (await c.get("/healthz")).status_code == 200
        r = await c.get("/d/sales")
        assert r.status_code == 503
        assert "make install" in r.text
        assert "client/web/node_modules/@perspective-dev/" in r.text
        r = await c.get("/assets/@perspective-dev/client/dist/cdn/perspective.js")
        assert r.status_code == 404
        assert "make install" in r.text
        assert (await c.get("/d/nope")).status_code == 404  # an unknown dataset is still a 404
