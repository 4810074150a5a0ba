"""Identity on HTTP: the middleware in front of every route, and ``/login``.

Every request but ``/healthz``, ``/readyz``, ``/login`` and the dashboard's
static ``/assets`` proves who it is with ``Authorization: Bearer <token>``
or the ``coframe_session`` cookie that ``/login?token=`` sets (signed:
it is the token itself; HttpOnly, SameSite=Strict). Without one: 401 JSON
``unauthenticated`` (pages and API alike). The coframe WebSocket
(``/ws/...``) checks identity itself, so it can close with 4401/4004 as
PROTOCOL.md §11 says; the Perspective WebSocket is checked here, and a
refused upgrade gets HTTP 403.

Per dataset (``/api/datasets/{name}/...``, ``/d/{name}``,
``/perspective/{name}``): a dataset the user may not read answers 404
exactly as an unknown one; reading needs viewer, creating a branch
editor, tags, revert and deletion admin; uploading a new dataset needs
``can_create``. State-changing requests authenticated by the cookie must
come from this origin (``Origin``, else ``Referer``), so another site
cannot forge them (CSRF); a WebSocket upgrade from another origin is
refused (cross-site WebSocket hijacking).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response

# Scope keys the dashboard socket reads: what the user may see, how to follow changes to
# their access, and their expression cap (server.perspective.endpoint defines them).
from ..perspective.endpoint import AUDIENCE, EXPRESSION_CAP, WATCH
from ..rooms.policy import EVERYONE, Audience
from .roles import at_least
from .service import Auth, AuthFailed, Identity, Watch

__all__ = [
    "AuthMiddleware",
    "COOKIE",
    "login",
    "identity_of",
    "audience_of_request",
    "token_of",
    "same_origin",
]

COOKIE = "coframe_session"
IDENTITY = "coframe.identity"
_OPEN = ("/healthz", "/readyz", "/login", "/assets/")
_SAFE = ("GET", "HEAD", "OPTIONS")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def token_of(conn: HTTPConnection) -> tuple[str | None, bool]:
    """The token a request or upgrade carries, and whether it came from the cookie.

    Order: ``Authorization: Bearer``, then ``?token=``, then the session cookie.
    """
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip(), False
    if conn.query_params.get("token"):
        return conn.query_params["token"], False
    cookie = conn.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


def same_origin(conn: HTTPConnection) -> bool:
    """Whether the request's ``Origin`` (else ``Referer``) is this server; no header at all: True."""
    origin = conn.headers.get("origin") or conn.headers.get("referer")
    if not origin:
        return True
    host = conn.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower()


def identity_of(conn: HTTPConnection) -> Identity:
    """The identity the middleware proved for this request."""
    return conn.scope[IDENTITY]  # type: ignore[no-any-return]


def audience_of_request(conn: HTTPConnection) -> Audience:
    """What the request's user may see of the dataset its path names (everything without one)."""
    return conn.scope.get(AUDIENCE, EVERYONE)  # type: ignore[no-any-return]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": {}}}, status_code=status)


def _watcher(
    auth: Auth, identity: Identity, dataset: str, role: str, audience: Audience
) -> Callable[[Callable[[int, str], Awaitable[None]], Callable[[str, Audience], None]], Callable[[], None]]:
    """``watch(close, on_change) -> unwatch`` for the dashboard socket (server.perspective.endpoint):
    :meth:`Auth.watch` re-checks it after every grant or token change."""

    def watch(
        close: Callable[[int, str], Awaitable[None]], on_change: Callable[[str, Audience], None]
    ) -> Callable[[], None]:
        return auth.watch(Watch(identity, dataset, role, close, on_change, audience))

    return watch


def _dataset_of(path: str) -> tuple[str | None, str]:
    """(dataset, what) for a per-dataset path: ``what`` is the sub-resource ('' for the dataset).

    Dataset names never hold a ``/`` (the naming rule), so the first segment is the dataset.
    """
    for prefix in ("/api/datasets/", "/d/", "/perspective/"):
        if path.startswith(prefix):
            dataset, _, rest = path[len(prefix) :].partition("/")
            if prefix != "/api/datasets/":
                return dataset, "page"
            return dataset, rest.split("/", 1)[0]
    return None, ""


def _needed(method: str, what: str) -> str:
    if method in _SAFE:
        return "viewer"
    if what == "branches":
        return "editor"
    return "admin"  # tags, revert, grants, DELETE of the dataset


class AuthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"].startswith(_OPEN):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket" and scope["path"].startswith("/ws/"):
            await self.app(scope, receive, send)  # the coframe endpoint checks identity itself
            return
        auth: Auth = scope["app"].state.auth
        conn = HTTPConnection(scope)
        refusal = await self._check(auth, conn, scope)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": ""})  # the handshake gets 403
        else:
            await refusal(scope, receive, send)

    async def _check(self, auth: Auth, conn: HTTPConnection, scope: Scope) -> Response | None:
        token, from_cookie = token_of(conn)
        if scope["type"] == "websocket" and not same_origin(conn):
            return _error(403, "forbidden", "a WebSocket from another site is refused")
        try:
            identity = await auth.authenticate(token)
        except AuthFailed as e:
            return _error(401, "unauthenticated", e.message)
        method = scope.get("method", "GET")
        if from_cookie and method not in _SAFE and not same_origin(conn):
            return _error(403, "forbidden", "a request from another site is refused (CSRF)")
        scope[IDENTITY] = identity
        dataset, what = _dataset_of(scope["path"])
        if not dataset:
            return None
        access = await auth.access(identity, dataset)
        role = None if access is None else access[0]
        if access is not None:
            scope[AUDIENCE] = access[1]
            if scope["type"] == "websocket":
                scope[WATCH] = _watcher(auth, identity, dataset, *access)
                scope[EXPRESSION_CAP] = scope["app"].state.user_limits.expression_cap(identity)
        if method == "POST" and what == "":  # an upload: a new dataset, or a clash with an existing one
            if role is None and not (identity.can_create or identity.local):
                return _error(403, "forbidden", "you may not create datasets: ask an admin for --can-create")
            return None
        if role is None:
            return _error(404, "not_found", f"no dataset '{dataset}'")
        needed = _needed(method, what)
        if what == "page" and scope["path"].startswith("/perspective/") and conn.query_params.get("edit"):
            needed = "editor"  # a dashboard opened with ?edit=1 turns grid edits into coframe sets
        if not at_least(role, needed):
            return _error(403, "forbidden", f"your role on '{dataset}' is {role}; this needs {needed}")
        return None


async def login(request: Request) -> Response:
    """``/login?token=...``: check the token, set the session cookie, and go to the index page."""
    auth: Auth = request.app.state.auth
    token = request.query_params.get("token")
    try:
        identity = await auth.authenticate(token)
    except AuthFailed as e:
        return _error(401, "unauthenticated", e.message)
    await auth.audit.record("sign_in", identity.user)
    response = RedirectResponse("/", status_code=303)
    if token:
        secure = request.url.scheme == "https"  # served over TLS (--ssl-certfile): never sent in clear
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/", secure=secure)
    return response
