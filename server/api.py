"""The HTTP API for datasets and their versions (PROTOCOL.md §13).

Routes (``routes``, added to the app by :func:`server.app.create_app`):

- ``POST /api/datasets/{name}?format=&filename=&rids=``: upload a file as a new dataset
  (``rids=new``, the default, numbers the rows afresh; ``rids=keep`` keeps a ``_rid`` column).
- ``GET /api/datasets/{name}/export?at=&branch=&format=``
- ``GET /api/datasets/{name}/log?ref=&limit=``
- ``GET /api/datasets/{name}/diff?from=&to=&format=``
- ``GET /api/datasets/{name}/refs``
- ``POST /api/datasets/{name}/branches`` | ``/tags`` | ``/revert`` (JSON bodies)

Under a row or column policy (the request's audience, :func:`server.auth.http.audience_of_request`)
nothing hidden leaves: an export is the audience's rows and visible columns, a diff compares
those of each side, and the log and commits carry no row count (it would tell how many rows
are hidden). docs/security.md "HTTP and dashboards".

Every request body (an upload, a JSON body) is read through :mod:`server.api_body`, which counts
it as it arrives against the per-request limit and the signed-in user's upload budget
(``user_upload_bytes_per_hour``; 429 ``rate_limited`` with ``Retry-After``).

Every error is ``{"error": {"code", "message", "details"}}`` with the status
of the :class:`~protocol.CoframeError` raised (PROTOCOL.md section 11), and
the message says what to do: a handler just raises, and
:data:`server.errors.exception_handlers` (installed by
:func:`server.app.create_app`) write the reply. ``{name}`` takes the whole rest of the path so that ``../x``
(sent URL-encoded) gets a 400 naming the rule, not a 404.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from protocol import ErrorCode

from .api_body import SPOOL_BYTES, json_body, spool_body
from .auth.http import audience_of_request, identity_of
from .errors import ApiError
from .io import (
    check_format,
    content_type,
    diff_table,
    format_from_content_type,
    format_from_name,
    read_frame,
    write_frame,
)
from .ops import RID_MODES
from .ops import check_ref_name as _check_ref_name
from .ops.state import State
from .rooms.policy import EVERYONE, Audience, narrow_state
from .rooms.queries import commit_json
from .rooms.registry import Registry
from .settings import Settings
from .storage.auth_types import Grant
from .storage.diff import diff_states
from .storage.service import Storage
from .storage.types import AlreadyExists, DatasetExists, Manifest, NotFound

__all__ = [
    "routes",
    "ApiError",
    "check_ref_name",
    "resolve",
    "commit_json",
    "refs_json",
    "side_label",
    "SPOOL_BYTES",
]

log = logging.getLogger("coframe.api")

MAX_LOG_LIMIT = 10_000


# ---------------------------------------------------------------- shared helpers (HTTP and CLI)


def check_ref_name(value: str, what: str = "dataset") -> str:
    """Validate a dataset, branch or tag name, or a version (:func:`server.ops.check_ref_name`).

    Raises:
        OpError: 400 ``bad_name``.
    """
    return _check_ref_name(value, what)


async def resolve(storage: Storage, dataset: str, ref: str) -> Manifest:
    """The commit a tag, branch or commit id (prefix) names.

    Raises:
        NotFound: with a message naming all three kinds (or the ambiguity, or the
            missing dataset).
    """
    try:
        return await storage.resolve(dataset, ref)
    except NotFound as e:
        if e.details.get("missing") != "commit" or e.details.get("ambiguous"):
            raise
        raise NotFound(
            f"no branch, tag or commit '{ref}' in dataset '{dataset}'; list the refs and the log to see"
            " what exists",
            missing="ref",
        ) from None


async def refs_json(storage: Storage, dataset: str) -> dict[str, list[dict[str, str]]]:
    """``{"branches": [{"name", "commit"}], "tags": [...]}``, each sorted by name."""
    out: dict[str, list[dict[str, str]]] = {}
    for kind, key in (("branch", "branches"), ("tag", "tags")):
        found = await storage.catalog.list_refs(dataset, kind)
        out[key] = [{"name": r.name, "commit": r.commit} for r in sorted(found, key=lambda r: r.name)]
    return out


def side_label(side: str) -> tuple[bool, str]:
    """``(is_live, branch_or_ref)`` for a diff side: ``live``, ``live:BRANCH`` or a ref."""
    if side == "live":
        return True, "main"
    if side.startswith("live:"):
        return True, check_ref_name(side[5:], "branch")
    return False, side


# ---------------------------------------------------------------- request helpers


def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def _path_name(request: Request) -> str:
    """The ``{name}`` of the path, checked whole.

    Starlette's route pattern ends in ``$``, which matches before a final
    newline, so ``/api/datasets/x%0A`` would route as ``x``: check the raw path.
    """
    name = request.path_params["name"]
    if request.scope["path"].endswith("\n"):
        name += "\n"  # refused below, naming it as sent
    return check_ref_name(name)


async def _dataset(request: Request) -> tuple[Registry, str]:
    registry = _registry(request)
    name = _path_name(request)
    if not await registry.exists(name):
        raise NotFound(f"no dataset '{name}'; list them with GET /api/datasets", missing="dataset")
    return registry, name


def _str_field(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or not value:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"give '{key}' as a non-empty string in the JSON body")
    return value


async def _state_at(registry: Registry, name: str, side: str) -> tuple[State, dict[str, Any]]:
    live, ref = side_label(side)
    if live:
        state = await registry.live_state(name, ref)
        return state, {"ref": side, "live": True, "branch": ref, "commit": None}
    storage = registry.storage
    m = await resolve(storage, name, ref)
    return await storage.state_of(m), {"ref": side, "live": False, "commit": m.id, "seq": m.seq}


async def _narrowed(state: State, audience: Audience) -> State:
    """``state`` as ``audience`` sees it (:func:`server.rooms.policy.narrow_state`, off the loop).

    Raises:
        PolicyBroken: 403 ``forbidden``: the row predicate no longer compiles for this state.
    """
    if audience == EVERYONE:
        return state
    return await asyncio.to_thread(narrow_state, state, audience)


def _filename(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", "@".join(p for p in parts if p))


# ---------------------------------------------------------------- handlers


async def upload(request: Request) -> Response:
    registry = _registry(request)
    settings: Settings = request.app.state.settings
    name = _path_name(request)
    q = request.query_params
    filename = q.get("filename")
    fmt = q.get("format") or format_from_content_type(request.headers.get("content-type"))
    fmt = check_format(fmt) if fmt else (format_from_name(filename) if filename else None)
    rids = q.get("rids") or "new"
    if rids not in RID_MODES:
        raise ApiError(
            400,
            ErrorCode.BAD_REQUEST,
            f"rids={rids!r}: use rids=new (number the rows afresh, the default) or rids=keep"
            " (keep the file's _rid column as the row ids)",
        )
    if await registry.exists(name):
        raise DatasetExists(f"dataset '{name}' already exists; pick another name")
    spool = await spool_body(request, settings.max_upload_bytes)
    try:
        frame = await asyncio.to_thread(read_frame, spool, fmt, name=filename or "the upload")
    finally:
        spool.close()
    identity = identity_of(request)
    author = (q.get("author") or "http") if identity.local else identity.user
    message = q.get("message") or f"import of {filename or 'an upload'}"
    manifest = await registry.create(name, frame, author=author, message=message, rids=rids)
    auth = request.app.state.auth
    if not identity.local:  # the uploader administers the new dataset
        await auth.store.put_grant(Grant(name, identity.user, "admin"))
        auth.forget(identity.user)
    await auth.audit.record("upload", identity.user, name, f"{manifest.rows} rows, commit {manifest.id[:12]}")
    body = {"name": name, "rows": manifest.rows, "columns": len(manifest.schema), "commit": manifest.id}
    log.info("uploaded dataset %s: %d rows × %d columns", name, manifest.rows, len(manifest.schema))
    return JSONResponse(body, status_code=201)


async def export(request: Request) -> Response:
    registry, name = await _dataset(request)
    q = request.query_params
    fmt = check_format(q.get("format") or "parquet")
    at, branch = q.get("at"), check_ref_name(q.get("branch") or "main", "branch")
    headers: dict[str, str] = {}
    if at:
        storage = registry.storage
        m = await resolve(storage, name, at)
        state = await storage.state_of(m)
        headers["X-Coframe-Commit"] = m.id
        stem = _filename(name, at)
    else:
        state, _ = await _state_at(registry, name, "live:" + branch)
        stem = _filename(name, "" if branch == "main" else branch)
    state = await _narrowed(state, audience_of_request(request))
    data = await asyncio.to_thread(write_frame, state.frame, fmt)
    headers["Content-Disposition"] = f'attachment; filename="{stem}.{fmt}"'
    headers["X-Coframe-Rows"] = str(state.frame.height)
    return Response(data, media_type=content_type(fmt), headers=headers)


async def history(request: Request) -> Response:
    registry, name = await _dataset(request)
    storage = registry.storage
    ref = request.query_params.get("ref") or "main"
    raw = request.query_params.get("limit") or "100"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LOG_LIMIT:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"limit must be a whole number from 1 to {MAX_LOG_LIMIT}")
    await resolve(storage, name, ref)
    commits = await storage.log(name, ref, int(raw))
    counts = audience_of_request(request) == EVERYONE
    return JSONResponse([commit_json(m, counts=counts) for m in commits])


async def diff(request: Request) -> Response:
    registry, name = await _dataset(request)
    q = request.query_params
    a, b = q.get("from"), q.get("to") or "live"
    if not a:
        raise ApiError(
            400, ErrorCode.BAD_REQUEST, "give ?from=REF (a branch, tag, commit, 'live' or 'live:BRANCH')"
        )
    fmt = (q.get("format") or "json").lower()
    if fmt not in ("json", "parquet"):
        raise ApiError(400, ErrorCode.BAD_FORMAT, f"unknown diff format {fmt!r}; use json or parquet")
    (sa, da), (sb, db) = await _state_at(registry, name, a), await _state_at(registry, name, b)
    audience = audience_of_request(request)  # each side as the user sees it
    sa, sb = await _narrowed(sa, audience), await _narrowed(sb, audience)
    d = await asyncio.to_thread(diff_states, sa, sb)
    if fmt == "json":
        return JSONResponse({**d.to_json(), "from": da, "to": db})

    def encode() -> bytes:
        sink = pa.BufferOutputStream()
        pq.write_table(diff_table(d), sink)
        return bytes(sink.getvalue().to_pybytes())

    data = await asyncio.to_thread(encode)
    stem = _filename(name, "diff", a, b)
    return Response(
        data,
        media_type=content_type("parquet"),
        headers={"Content-Disposition": f'attachment; filename="{stem}.parquet"'},
    )


async def refs(request: Request) -> Response:
    registry, name = await _dataset(request)
    storage = registry.storage
    return JSONResponse(await refs_json(storage, name))


async def create_branch(request: Request) -> Response:
    registry, name = await _dataset(request)
    storage = registry.storage
    body = await json_body(request)
    new = check_ref_name(_str_field(body, "name"), "branch")
    source = _str_field(body, "from", "main")
    m = await resolve(storage, name, source)
    await storage.create_branch(name, new, m.id)
    await request.app.state.auth.audit.record(
        "branch", identity_of(request).user, name, f"{new} at {m.id[:12]}"
    )
    return JSONResponse({"name": new, "commit": m.id, "from": source}, status_code=201)


async def create_tag(request: Request) -> Response:
    registry, name = await _dataset(request)
    storage = registry.storage
    body = await json_body(request)
    tag = check_ref_name(_str_field(body, "name"), "tag")
    at = _str_field(body, "at", "main")
    m = await resolve(storage, name, at)
    try:
        await storage.create_tag(name, tag, m.id)
    except AlreadyExists:
        existing = await storage.catalog.get_ref(name, tag, "tag")
        raise AlreadyExists(
            f"tag '{tag}' already exists at commit {existing.commit[:12]} and tags never move;"
            " create a new tag instead"
        ) from None
    await request.app.state.auth.audit.record("tag", identity_of(request).user, name, f"{tag} at {m.id[:12]}")
    return JSONResponse({"name": tag, "commit": m.id, "at": at}, status_code=201)


async def revert(request: Request) -> Response:
    registry, name = await _dataset(request)
    storage = registry.storage
    body = await json_body(request)
    branch = check_ref_name(_str_field(body, "branch", "main"), "branch")
    to = _str_field(body, "to")
    target = await resolve(storage, name, to)
    await storage.catalog.get_ref(name, branch, "branch")  # 404 before anyone is disconnected
    identity = identity_of(request)
    m = await registry.revert(name, branch, target.id, author="http" if identity.local else identity.user)
    await request.app.state.auth.audit.record("revert", identity.user, name, f"{branch} to {target.id[:12]}")
    counts = audience_of_request(request) == EVERYONE
    body = {"branch": branch, "reverted_to": target.id, **commit_json(m, counts=counts)}
    return JSONResponse(body, status_code=201)


routes = [
    Route("/api/datasets/{name:path}/export", export, methods=["GET"]),
    Route("/api/datasets/{name:path}/log", history, methods=["GET"]),
    Route("/api/datasets/{name:path}/diff", diff, methods=["GET"]),
    Route("/api/datasets/{name:path}/refs", refs, methods=["GET"]),
    Route("/api/datasets/{name:path}/branches", create_branch, methods=["POST"]),
    Route("/api/datasets/{name:path}/tags", create_tag, methods=["POST"]),
    Route("/api/datasets/{name:path}/revert", revert, methods=["POST"]),
    Route("/api/datasets/{name:path}", upload, methods=["POST"]),
]
