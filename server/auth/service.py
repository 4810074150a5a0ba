"""Turning a token into an identity, and an identity into its role on a dataset.

:class:`Auth` is one per server. ``authenticate`` checks a token's
signature and expiry (:class:`.tokens.Signer`), that the catalog still
knows its id unrevoked and its user enabled. ``role`` reads the user's
grants: one on the dataset overrides one on ``*``; none means the dataset
does not exist for that user. Grants and revocations are cached per
catalog ``auth_version``; :meth:`Auth.run` polls that version (every
``poll`` seconds, 0.5 by default) and re-checks every open connection
(:meth:`Auth.watch`), so a revocation or a grant change reaches them
within a second, through whichever node made it.

With a :class:`.jwks.JwksVerifier` (``--auth-jwks``), RS256/ES256 tokens of an
external identity provider are accepted beside coframe's own: the claim it
names maps to a catalog user, who must exist and be enabled. Such a token
has no catalog record, so it cannot be revoked by itself; disabling its
user closes its connections, and so does its ``exp``.

With ``mode="none"`` (``--auth none``) every request is the one local
identity, admin of everything.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from protocol import CloseCode

from ..rooms.policy import EVERYONE, Audience, bind_user
from ..storage.auth_types import ANY_DATASET, Grant, TokenRecord, User
from ..storage.types import CatalogStore, NotFound
from .audit import Audit
from .jwks import JwksVerifier
from .tokens import Signer, TokenInvalid

__all__ = ["Auth", "AuthFailed", "Identity", "LOCAL", "Watch", "audience_of"]

log = logging.getLogger("coframe.auth")

_EXPIRED = "your token expired: sign in to your identity provider again"


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    display: str = ""
    token_id: str | None = None
    can_create: bool = False
    local: bool = False  # --auth none: admin of everything
    external: bool = False  # an identity provider's token (--auth-jwks): no catalog token record
    expires: float | None = None  # when an external token expires (coframe's: in the catalog)


LOCAL = Identity("local", "local", None, can_create=True, local=True)


class AuthFailed(Exception):
    """Not signed in (4401 / HTTP 401), or no longer allowed (4403 / HTTP 403)."""

    def __init__(self, message: str, *, close: int = CloseCode.UNAUTHENTICATED) -> None:
        super().__init__(message)
        self.message = message
        self.close = close

    @property
    def status(self) -> int:
        return 401 if self.close == CloseCode.UNAUTHENTICATED else 403


def audience_of(grant: Grant, user: str) -> Audience:
    """What ``grant`` lets ``user`` see: its hidden columns, and its row predicate with
    ``current_user()`` bound to ``user`` (so such a predicate makes one audience per user)."""
    if grant.rows is None and not grant.hide:
        return EVERYONE
    rows = None if grant.rows is None else bind_user(grant.rows, user)
    return Audience(rows=rows, hide=frozenset(grant.hide))


@dataclass(eq=False)
class Watch:
    """An open connection :class:`Auth` re-checks after every change: ``close`` ends it,
    ``on_change`` gives it a changed role or audience (the room re-filters it)."""

    identity: Identity
    dataset: str
    role: str
    close: Callable[[int, str], Awaitable[None]]
    on_change: Callable[[str, Audience], None] | None = None
    audience: Audience = EVERYONE


class Auth:
    def __init__(
        self,
        store: CatalogStore,
        signer: Signer,
        *,
        mode: str = "token",
        poll: float = 0.5,
        jwks: JwksVerifier | None = None,
    ) -> None:
        if mode not in ("token", "none"):
            raise ValueError(f"unknown auth mode {mode!r}: use token or none")
        self.store, self.signer, self.mode, self.poll = store, signer, mode, poll
        self.jwks = jwks
        self.audit = Audit(store)
        self.version = -1
        self._grants: dict[str, list[Grant]] = {}
        self._watches: set[Watch] = set()
        self.failures = 0  # failed authentications (counted, not logged one by one)

    @property
    def enabled(self) -> bool:
        return self.mode == "token"

    async def start(self) -> None:
        if self.enabled:
            await self.signer.load()
        self.version = await self.store.auth_version()

    # ------------------------------------------------------------ tokens

    async def issue(self, user: str, ttl: float) -> str:
        """A new token for ``user`` (recorded in the catalog, so it can be revoked)."""
        token, claims = self.signer.issue(user, ttl)
        await self.store.add_token(TokenRecord(claims.token_id, user, claims.issued, claims.expires))
        return token

    async def authenticate(self, token: str | None) -> Identity:
        """The identity ``token`` proves. A failure is counted (``failures``, and per reason
        and minute in the audit trail), never logged one by one.

        Raises:
            AuthFailed: (4401) no token, a bad or expired one, a revoked one, a disabled user.
        """
        if not self.enabled:
            return LOCAL
        try:
            return await self._authenticate(token)
        except AuthFailed as e:
            self.failures += 1
            await self.audit.failed(e.message)
            raise

    async def _authenticate(self, token: str | None) -> Identity:
        if not token:
            raise AuthFailed("sign in: pass a token (?token=, Authorization: Bearer, or /login?token=)")
        if self.jwks is not None and self.jwks.owns(token):
            return await self._external(self.jwks, token)
        try:
            claims = await self.signer.verify(token)
            record = await self.store.get_token(claims.token_id)
            user = await self.store.get_user(claims.user)
        except TokenInvalid as e:
            raise AuthFailed(e.reason) from None
        except NotFound:
            raise AuthFailed(
                "the token is not known here (from another catalog?): ask for a new one"
            ) from None
        if record.revoked is not None or record.user != user.name:
            raise AuthFailed("the token was revoked: ask for a new one (coframe token create)")
        if user.disabled:
            raise AuthFailed(f"user {user.name!r} is disabled: ask an admin")
        return Identity(user.name, user.display or user.name, claims.token_id, user.can_create)

    async def _external(self, jwks: JwksVerifier, token: str) -> Identity:
        """The identity of an identity provider's token: its claim names a known, enabled user."""
        try:
            claims = jwks.verify(token)
        except TokenInvalid as e:
            raise AuthFailed(e.reason) from None
        try:
            user = await self.store.get_user(claims.user)
        except NotFound:
            name = claims.user[:48]
            raise AuthFailed(
                f"user {name!r} is not known here: ask an admin to run coframe user add {shlex.quote(name)}"
            ) from None
        if user.disabled:
            raise AuthFailed(f"user {user.name!r} is disabled: ask an admin")
        return Identity(
            user.name, user.display or user.name, None, user.can_create, external=True, expires=claims.expires
        )

    # ------------------------------------------------------------ grants

    async def _user_grants(self, user: str) -> list[Grant]:
        grants = self._grants.get(user)
        if grants is None:
            grants = self._grants[user] = await self.store.list_grants(user=user)
        return grants

    async def grant(self, identity: Identity, dataset: str) -> Grant | None:
        """The grant that applies to ``dataset`` (the dataset's own, else ``*``), or None."""
        if identity.local:
            return Grant(dataset, identity.user, "admin")
        grants = await self._user_grants(identity.user)
        own = next((g for g in grants if g.dataset == dataset), None)
        return own or next((g for g in grants if g.dataset == ANY_DATASET), None)

    def forget(self, user: str) -> None:
        """Drop ``user``'s cached grants (after this node changed them; other nodes poll)."""
        self._grants.pop(user, None)

    async def role(self, identity: Identity, dataset: str) -> str | None:
        g = await self.grant(identity, dataset)
        return None if g is None else g.role

    async def access(self, identity: Identity, dataset: str) -> tuple[str, Audience] | None:
        """``identity``'s role on ``dataset`` and what it may see there (None: no access)."""
        g = await self.grant(identity, dataset)
        if g is None:
            return None
        return g.role, audience_of(g, identity.user)

    async def readable(self, identity: Identity, names: list[str]) -> list[str]:
        """The datasets of ``names`` ``identity`` may read (the others do not exist for it)."""
        return [n for n in names if await self.role(identity, n) is not None]

    # ------------------------------------------------------------ following changes

    def watch(self, w: Watch) -> Callable[[], None]:
        """Re-check ``w`` after every change; returns the function that stops it."""
        self._watches.add(w)
        return lambda: self._watches.discard(w)

    async def run(self) -> None:
        """Poll the catalog's auth version; after a change, re-check every open connection."""
        while True:
            await asyncio.sleep(self.poll)
            await self.expire()
            try:
                version = await self.store.auth_version()
            except Exception:  # the catalog is down: keep what we know, try again
                log.exception("reading the auth version failed")
                continue
            if version != self.version:
                self.version = version
                self._grants.clear()
                await self.recheck()

    async def expire(self, now: float | None = None) -> None:
        """Close the connections of identity provider tokens past their ``exp`` (no catalog
        change announces that, so every poll looks)."""
        now = time.time() if now is None else now
        for w in [w for w in self._watches if w.identity.expires is not None and w.identity.expires < now]:
            self._watches.discard(w)
            try:
                await w.close(CloseCode.UNAUTHENTICATED, _EXPIRED)
            except Exception:
                log.exception("closing an expired connection of %s failed", w.identity.user)

    async def recheck(self) -> None:
        for w in list(self._watches):
            try:
                await self._recheck(w)
            except Exception:
                log.exception("re-checking a connection of %s failed", w.identity.user)

    async def _recheck(self, w: Watch) -> None:
        if w.identity.local:
            return
        reason = await self._revoked(w.identity)
        if reason is not None:
            self._watches.discard(w)
            await w.close(CloseCode.UNAUTHENTICATED, reason)
            return
        access = await self.access(w.identity, w.dataset)
        if access is None:
            self._watches.discard(w)
            await w.close(CloseCode.FORBIDDEN, f"your access to '{w.dataset}' was revoked: ask an admin")
        elif access != (w.role, w.audience):
            w.role, w.audience = access
            if w.on_change is not None:
                w.on_change(*access)

    async def _revoked(self, identity: Identity) -> str | None:
        if identity.external or identity.token_id is None:
            return await self._external_revoked(identity)
        try:
            user: User = await self.store.get_user(identity.user)
            record = await self.store.get_token(identity.token_id)
        except NotFound:
            return "your token or user was removed: sign in again"
        if record.revoked is not None:
            return "your token was revoked: ask for a new one"
        if user.disabled:
            return "your user was disabled: ask an admin"
        if record.expires is not None and record.expires < time.time():
            return "your token expired: sign in again"
        return None

    async def _external_revoked(self, identity: Identity) -> str | None:
        """An identity provider's token has no record to revoke: its user and its expiry decide."""
        try:
            user = await self.store.get_user(identity.user)
        except NotFound:
            return "your user was removed: ask an admin"
        if user.disabled:
            return "your user was disabled: ask an admin"
        if identity.expires is not None and identity.expires < time.time():
            return _EXPIRED
        return None

    async def close(self) -> None:
        self._watches.clear()
