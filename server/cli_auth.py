"""Operator commands for identity: users, tokens and grants, on the catalog directly.

``coframe user add NAME [--display "Alice B."] [--can-create]``,
``coframe user list``, ``coframe user disable NAME``,
``coframe token create NAME [--expires 8h]`` (the token alone on its last
line), ``coframe token revoke ID``,
``coframe grant DATASET USER ROLE [--rows SQL] [--hide COL,...]`` and
``coframe revoke DATASET USER``. Each takes ``--data-dir`` and
``--catalog`` as ``serve`` does; a running server sees the change within a
second (it polls the catalog's auth version).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from .auth.audit import OPERATOR, Audit
from .auth.tokens import DEFAULT_EXPIRES, Signer, env_key, parse_duration
from .errors import CliError
from .rooms.policy import check_rows
from .storage.audit_types import AUDIT_KINDS
from .storage.auth_types import ANY_DATASET, ROLES, Grant, TokenRecord, User
from .storage.service import Storage
from .storage.types import NotFound

__all__ = ["add_auth_commands", "AUTH_COMMANDS"]


def add_auth_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    # --data-dir and --catalog go on the actions, so they may follow them (coframe user add x --data-dir d).
    p = sub.add_parser("user", help="add, list or disable users")
    users = p.add_subparsers(dest="action", required=True)
    q = users.add_parser("add", parents=[common], help="add a user")
    q.add_argument("name")
    q.add_argument("--display", default="", help='the name others see, e.g. "Alice B."')
    q.add_argument("--can-create", action="store_true", help="may upload new datasets (and admin them)")
    users.add_parser("list", parents=[common], help="list users")
    q = users.add_parser(
        "disable", parents=[common], help="disable a user: their connections close within a second"
    )
    q.add_argument("name")

    p = sub.add_parser("token", help="create or revoke tokens")
    tokens = p.add_subparsers(dest="action", required=True)
    q = tokens.add_parser(
        "create", parents=[common], help="create a token for a user (printed alone on the last line)"
    )
    q.add_argument("name")
    q.add_argument("--expires", default=DEFAULT_EXPIRES, help="lifetime, e.g. 8h, 30d (default %(default)s)")
    q = tokens.add_parser(
        "revoke", parents=[common], help="revoke a token by id: its connections close within a second"
    )
    q.add_argument("id")

    p = sub.add_parser("grant", parents=[common], help="give a user a role on a dataset (or * for all)")
    p.add_argument("grant_dataset", metavar="DATASET")
    p.add_argument("user")
    p.add_argument("role", choices=ROLES)
    p.add_argument("--rows", default=None, metavar="SQL", help='row predicate, e.g. "owner = current_user()"')
    p.add_argument("--hide", default="", metavar="COL,...", help="columns the user may not see")
    p = sub.add_parser("audit", parents=[common], help="the audit trail, newest first")
    p.add_argument("--since", default=None, help="only this recent, e.g. 1h, 7d")
    p.add_argument("--user", default=None)
    p.add_argument("--kind", default=None, choices=AUDIT_KINDS)
    p.add_argument("--limit", type=int, default=100)
    p = sub.add_parser("revoke", parents=[common], help="remove a user's grant on a dataset")
    p.add_argument("grant_dataset", metavar="DATASET")
    p.add_argument("user")


def _out(text: str) -> None:
    print(text, flush=True)


async def _user(args: argparse.Namespace, storage: Storage) -> None:
    catalog = storage.catalog
    if args.action == "add":
        await catalog.add_user(User(args.name, args.display, can_create=args.can_create, created=time.time()))
        await Audit(catalog).record("user_add", OPERATOR, detail=args.name)
        _out(f"added user {args.name}" + (" (may create datasets)" if args.can_create else ""))
    elif args.action == "list":
        grants = await catalog.list_grants()
        for u in await catalog.list_users():
            roles = ", ".join(f"{g.dataset}:{g.role}" for g in grants if g.user == u.name) or "no grants"
            flags = [f for f, on in (("disabled", u.disabled), ("can-create", u.can_create)) if on]
            display = f" ({u.display})" if u.display else ""
            _out(f"{u.name}{display}  {roles}" + (f"  [{', '.join(flags)}]" if flags else ""))
    else:
        await catalog.set_user(args.name, disabled=True)
        await Audit(catalog).record("user_disable", OPERATOR, detail=args.name)
        _out(f"disabled user {args.name}")


async def _token(args: argparse.Namespace, storage: Storage) -> None:
    catalog = storage.catalog
    if args.action == "revoke":
        await catalog.revoke_token(args.id, time.time())
        await Audit(catalog).record("token_revoke", OPERATOR, detail=args.id)
        _out(f"revoked token {args.id}")
        return
    ttl = parse_duration(args.expires)
    user = await catalog.get_user(args.name)
    if user.disabled:
        raise CliError(f"user {args.name} is disabled: a token would be refused")
    secret = os.environ.get("COFRAME_SECRET")
    signer = Signer(catalog, env_key(secret) if secret else None)
    await signer.load()
    token, claims = signer.issue(args.name, ttl)
    await catalog.add_token(TokenRecord(claims.token_id, args.name, claims.issued, claims.expires))
    await Audit(catalog).record("token_create", OPERATOR, detail=f"{claims.token_id} for {args.name}")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(claims.expires))
    _out(f"token {claims.token_id} for {args.name}, expires {when}")
    _out(token)


async def _columns(storage: Storage, dataset: str, names: list[str], rows: str | None) -> tuple[int, ...]:
    """The ids of the columns ``names`` of ``dataset``'s ``main`` (ids survive renames),
    after checking the row predicate ``rows`` against its columns."""
    if not names and rows is None:
        return ()
    if dataset == ANY_DATASET:
        if names:
            raise CliError("--hide names columns of one dataset: grant on that dataset, not *")
        check_rows(rows or "true", None)
        return ()
    head = await storage.catalog.get_ref(dataset, "main", "branch")
    schema = (await storage.catalog.get_commit(dataset, head.commit)).schema
    ids = {c["name"]: int(c["id"]) for c in schema}
    if rows is not None:
        check_rows(rows, list(ids))
    missing = [n for n in names if n not in ids]
    if missing:
        raise NotFound(f"no column {missing[0]!r} in {dataset}; columns: {', '.join(ids)}", missing="column")
    return tuple(ids[n] for n in names)


async def _grant(args: argparse.Namespace, storage: Storage) -> None:
    names = [c.strip() for c in args.hide.split(",") if c.strip()]
    hide = await _columns(storage, args.grant_dataset, names, args.rows)
    await storage.catalog.put_grant(Grant(args.grant_dataset, args.user, args.role, args.rows, hide))
    await Audit(storage.catalog).record("grant", OPERATOR, args.grant_dataset, f"{args.user} {args.role}")
    extra = (f", rows where {args.rows}" if args.rows else "") + (f", hiding {args.hide}" if hide else "")
    _out(f"granted {args.role} on {args.grant_dataset} to {args.user}{extra}")


async def _revoke(args: argparse.Namespace, storage: Storage) -> None:
    await storage.catalog.delete_grant(args.grant_dataset, args.user)
    await Audit(storage.catalog).record("revoke", OPERATOR, args.grant_dataset, args.user)
    _out(f"revoked {args.user}'s grant on {args.grant_dataset}")


async def _audit(args: argparse.Namespace, storage: Storage) -> None:
    since = time.time() - parse_duration(args.since) if args.since else None
    rows = await storage.catalog.list_audit(since=since, user=args.user, kind=args.kind, limit=args.limit)
    for e in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.time))
        times = f" ×{e.count}" if e.count > 1 else ""
        where = f" {e.dataset}" if e.dataset else ""
        _out(f"{when}  {e.kind}{times}  {e.user or '-'}{where}  {e.detail}".rstrip())
    if not rows:
        _out("(no audit rows)")


AUTH_COMMANDS = {"user": _user, "token": _token, "grant": _grant, "revoke": _revoke, "audit": _audit}
