"""The first start of a server that requires tokens: an admin user, and a sign-in token to print."""

from __future__ import annotations

import logging
import time

from ..storage.auth_types import ANY_DATASET, Grant, User
from .service import Auth

__all__ = ["bootstrap", "first_admin", "ADMIN", "SIGNIN_TTL"]

log = logging.getLogger("coframe.auth")

ADMIN = "admin"
SIGNIN_TTL = 30 * 86400.0  # the printed sign-in token's life


async def first_admin(auth: Auth) -> str | None:
    """The first user (by name) with an admin grant on every dataset, or None."""
    grants = await auth.store.list_grants(dataset=ANY_DATASET)
    admins = sorted(g.user for g in grants if g.role == "admin")
    return admins[0] if admins else None


async def bootstrap(auth: Auth, *, signin: bool) -> str | None:
    """With no users yet, create ``admin`` (admin of every dataset, may upload).

    With ``signin``, issue a token for the first admin and return it (the
    caller prints the sign-in URL, as Jupyter does); else None.
    """
    if not auth.enabled:
        return None
    if not await auth.store.list_users():
        await auth.store.add_user(User(ADMIN, "Admin", can_create=True, created=time.time()))
        await auth.store.put_grant(Grant(ANY_DATASET, ADMIN, "admin"))
        log.info("created user %r, admin of every dataset", ADMIN)
    if not signin:
        return None
    user = await first_admin(auth)
    if user is None:
        log.warning("no admin of every dataset: no sign-in URL (coframe token create NAME makes a token)")
        return None
    return await auth.issue(user, SIGNIN_TTL)
