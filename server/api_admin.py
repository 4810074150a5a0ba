"""The identity operations over HTTP, for admins (docs/security.md "Users, roles and grants").

- ``GET /api/users``, ``POST /api/users`` ``{"name", "display", "can_create"}``,
  ``POST /api/users/{name}/disable``: admins of every dataset (a ``*`` admin grant);
- ``POST /api/tokens`` ``{"user", "expires": "8h"}`` (the token is in the reply, once),
  ``DELETE /api/tokens/{id}``: the same;
- ``GET|POST /api/datasets/{name}/grants`` ``{"user", "role", "rows", "hide": [columns]}``,
  ``DELETE /api/datasets/{name}/grants/{user}``: admins of that dataset;
- ``DELETE /api/datasets/{name}``: admins of that dataset; its rooms close with 4004.

The auth middleware has already proved the identity and, on dataset paths,
the role it needs; these handlers check what is left (a global admin for
users and tokens, admin for reading grants). Errors are the API's JSON
errors (PROTOCOL.md §11).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from protocol import ErrorCode

from .api import _dataset, _str_field
from .api_body import json_body
from .auth import Auth, parse_duration
from .auth.http import identity_of
from .auth.tokens import DEFAULT_EXPIRES
from .errors import ApiError
from .rooms.policy import check_rows
from .storage.audit_types import AuditEvent
from .storage.auth_types import ANY_DATASET, ROLES, Grant, User

__all__ = ["routes", "late_routes"]


def _auth(request: Request) -> Auth:
    return request.app.state.auth  # type: ignore[no-any-return]


async def _global_admin(request: Request) -> Auth:
    auth = _auth(request)
    if await auth.role(identity_of(request), ANY_DATASET) != "admin":
        raise ApiError(
            403, ErrorCode.FORBIDDEN, "only an admin of every dataset (a * admin grant) may do this"
        )
    return auth


def audit_json(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id, "time": e.time, "kind": e.kind, "user": e.user, "dataset": e.dataset,
        "detail": e.detail, "count": e.count,
    }  # fmt: skip


def _user_json(u: User) -> dict[str, Any]:
    return {"name": u.name, "display": u.display, "disabled": u.disabled, "can_create": u.can_create}


async def list_users(request: Request) -> Response:
    auth = await _global_admin(request)
    return JSONResponse([_user_json(u) for u in await auth.store.list_users()])


async def add_user(request: Request) -> Response:
    auth = await _global_admin(request)
    body = await json_body(request)
    user = User(
        _str_field(body, "name"),
        str(body.get("display") or ""),
        False,
        bool(body.get("can_create")),
        time.time(),
    )
    await auth.store.add_user(user)
    await auth.audit.record("user_add", identity_of(request).user, detail=user.name)
    return JSONResponse(_user_json(user), status_code=201)


async def disable_user(request: Request) -> Response:
    auth = await _global_admin(request)
    name = request.path_params["name"]
    await auth.store.set_user(name, disabled=True)
    await auth.audit.record("user_disable", identity_of(request).user, detail=name)
    return JSONResponse({"name": name, "disabled": True})


async def create_token(request: Request) -> Response:
    auth = await _global_admin(request)
    body = await json_body(request)
    user = _str_field(body, "user")
    try:
        ttl = parse_duration(str(body.get("expires") or DEFAULT_EXPIRES))
    except ValueError as e:
        raise ApiError(400, ErrorCode.BAD_REQUEST, str(e)) from None
    await auth.store.get_user(user)  # 404 for an unknown user
    token = await auth.issue(user, ttl)
    claims = await auth.signer.verify(token)
    await auth.audit.record("token_create", identity_of(request).user, detail=f"{claims.token_id} for {user}")
    reply = {"id": claims.token_id, "user": user, "expires": claims.expires, "token": token}
    return JSONResponse(reply, status_code=201)


async def revoke_token(request: Request) -> Response:
    auth = await _global_admin(request)
    token_id = request.path_params["id"]
    await auth.store.revoke_token(token_id, time.time())
    await auth.audit.record("token_revoke", identity_of(request).user, detail=token_id)
    return JSONResponse({"id": token_id, "revoked": True})


async def _dataset_admin(request: Request) -> tuple[Auth, str]:
    _, name = await _dataset(request)
    auth = _auth(request)
    if await auth.role(identity_of(request), name) != "admin":
        raise ApiError(403, ErrorCode.FORBIDDEN, f"only an admin of '{name}' may see or change its grants")
    return auth, name


def _grant_json(g: Grant) -> dict[str, Any]:
    return {"dataset": g.dataset, "user": g.user, "role": g.role, "rows": g.rows, "hide": list(g.hide)}


async def grants(request: Request) -> Response:
    auth, name = await _dataset_admin(request)
    if request.method == "GET":
        return JSONResponse([_grant_json(g) for g in await auth.store.list_grants(dataset=name)])
    body = await json_body(request)
    role = _str_field(body, "role")
    if role not in ROLES:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"role must be one of {', '.join(ROLES)}")
    hide_names = body.get("hide") or []
    if not isinstance(hide_names, list) or not all(isinstance(c, str) for c in hide_names):
        raise ApiError(400, ErrorCode.BAD_REQUEST, "give 'hide' as a list of column names")
    state = await request.app.state.registry.live_state(name)
    ids = {c.name: c.id for c in state.catalog.columns}
    missing = [c for c in hide_names if c not in ids]
    if missing:
        raise ApiError(400, ErrorCode.NO_SUCH_COLUMN, f"no column '{missing[0]}' in '{name}'")
    rows = body.get("rows")
    if rows is not None and not isinstance(rows, str):
        raise ApiError(400, ErrorCode.BAD_REQUEST, "give 'rows' as a SQL predicate string")
    cap = request.app.state.user_limits.expression_cap(identity_of(request))
    if rows is not None and cap is not None and len(rows) > cap:  # docs/security.md "Per-user limits"
        message, details = request.app.state.user_limits.expression_too_long("rows", len(rows))
        raise ApiError(413, ErrorCode.TOO_LARGE, message, details)
    if rows is not None:
        check_rows(rows, state.catalog.names())  # bad_expr (400) names what is wrong
    grant = Grant(name, _str_field(body, "user"), role, rows, tuple(ids[c] for c in hide_names))
    await auth.store.put_grant(grant)
    auth.forget(grant.user)
    await auth.audit.record("grant", identity_of(request).user, name, f"{grant.user} {role}")
    return JSONResponse(_grant_json(grant), status_code=201)


async def delete_grant(request: Request) -> Response:
    auth, name = await _dataset_admin(request)
    user = request.path_params["user"]
    await auth.store.delete_grant(name, user)
    auth.forget(user)
    await auth.audit.record("revoke", identity_of(request).user, name, user)
    return JSONResponse({"dataset": name, "user": user, "revoked": True})


async def audit(request: Request) -> Response:
    """``GET /api/audit?since=1h&user=&kind=&limit=``: the audit trail, newest first (global admins)."""
    auth = await _global_admin(request)
    q = request.query_params
    try:
        since = time.time() - parse_duration(q["since"]) if q.get("since") else None
        limit = int(q.get("limit") or 100)
    except ValueError as e:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"bad parameter: {e}") from None
    rows = await auth.store.list_audit(since=since, user=q.get("user"), kind=q.get("kind"), limit=limit)
    return JSONResponse([audit_json(e) for e in rows])


async def delete_dataset(request: Request) -> Response:
    registry, name = await _dataset(request)
    await registry.delete(name)
    await _auth(request).audit.record("delete_dataset", identity_of(request).user, name)
    return JSONResponse({"name": name, "deleted": True})


routes = [
    Route("/api/audit", audit, methods=["GET"]),
    Route("/api/users", list_users, methods=["GET"]),
    Route("/api/users", add_user, methods=["POST"]),
    Route("/api/users/{name}/disable", disable_user, methods=["POST"]),
    Route("/api/tokens", create_token, methods=["POST"]),
    Route("/api/tokens/{id}", revoke_token, methods=["DELETE"]),
    Route("/api/datasets/{name}/grants", grants, methods=["GET", "POST"]),
    Route("/api/datasets/{name}/grants/{user}", delete_grant, methods=["DELETE"]),
]

#: After the API's routes: its more specific ``/api/datasets/{name}/...`` routes match first.
late_routes = [Route("/api/datasets/{name:path}", delete_dataset, methods=["DELETE"])]
