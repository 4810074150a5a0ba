"""The in-memory catalog's identity: users, tokens, grants and signing keys in dicts.

:class:`MemoryAuth` implements :class:`~.auth_types.AuthStore` for
:class:`~.catalog_memory.MemoryCatalog`, which inherits it. As there, no
method awaits anything, so each call is atomic on its event loop; every
successful call of a mutating method bumps the version. The records are
frozen dataclasses, stored as given except that flags are made bools, times
floats and ``Grant.hide`` a tuple of ints, as a round trip through the other
backends would make them.
"""

from __future__ import annotations

from dataclasses import replace

from .auth_types import Grant, SigningKey, TokenRecord, User
from .catalog_common import check_role, decode_hide, encode_hide, msg
from .types import AlreadyExists, NotFound

__all__ = ["MemoryAuth"]


def _seconds(t: float | None) -> float | None:
    return None if t is None else float(t)


class MemoryAuth:
    """AuthStore in this process's memory."""

    def __init__(self) -> None:
        super().__init__()
        self._auth_version = 0
        self._users: dict[str, User] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._grants: dict[tuple[str, str], Grant] = {}  # (dataset, user) → grant
        self._keys: dict[str, SigningKey] = {}

    def _require_user(self, name: str) -> User:
        user = self._users.get(name)
        if user is None:
            raise NotFound(msg.user_missing(name), missing="user")
        return user

    async def auth_version(self) -> int:
        return self._auth_version

    # -- users ---------------------------------------------------------------

    async def add_user(self, user: User) -> None:
        if user.name in self._users:
            raise AlreadyExists(msg.user_exists(user.name))
        self._users[user.name] = replace(
            user, disabled=bool(user.disabled), can_create=bool(user.can_create), created=float(user.created)
        )
        self._auth_version += 1

    async def get_user(self, name: str) -> User:
        return self._require_user(name)

    async def list_users(self) -> list[User]:
        return [self._users[n] for n in sorted(self._users)]

    async def set_user(
        self, name: str, *, disabled: bool | None = None, can_create: bool | None = None
    ) -> None:
        user = self._require_user(name)
        if disabled is not None:
            user = replace(user, disabled=bool(disabled))
        if can_create is not None:
            user = replace(user, can_create=bool(can_create))
        self._users[name] = user
        self._auth_version += 1

    # -- tokens --------------------------------------------------------------

    async def add_token(self, token: TokenRecord) -> None:
        self._require_user(token.user)
        if token.id in self._tokens:
            raise AlreadyExists(msg.token_exists(token.id))
        self._tokens[token.id] = replace(
            token,
            issued=float(token.issued),
            expires=_seconds(token.expires),
            revoked=_seconds(token.revoked),
        )
        self._auth_version += 1

    def _token(self, token_id: str) -> TokenRecord:
        token = self._tokens.get(token_id)
        if token is None:
            raise NotFound(msg.token_missing(token_id), missing="token")
        return token

    async def get_token(self, token_id: str) -> TokenRecord:
        return self._token(token_id)

    async def list_tokens(self, user: str | None = None) -> list[TokenRecord]:
        tokens = [t for t in self._tokens.values() if user is None or t.user == user]
        return sorted(tokens, key=lambda t: (t.issued, t.id))

    async def revoke_token(self, token_id: str, when: float) -> None:
        token = self._token(token_id)
        if token.revoked is None:
            self._tokens[token_id] = replace(token, revoked=float(when))
        self._auth_version += 1

    # -- grants --------------------------------------------------------------

    async def put_grant(self, grant: Grant) -> None:
        check_role(grant.role)
        self._require_user(grant.user)
        hide = decode_hide(encode_hide(grant.hide))
        self._grants[(grant.dataset, grant.user)] = replace(grant, hide=hide)
        self._auth_version += 1

    async def delete_grant(self, dataset: str, user: str) -> None:
        if self._grants.pop((dataset, user), None) is None:
            raise NotFound(msg.grant_missing(dataset, user), missing="grant")
        self._auth_version += 1

    async def list_grants(self, dataset: str | None = None, user: str | None = None) -> list[Grant]:
        return [
            self._grants[k]
            for k in sorted(self._grants)
            if (dataset is None or k[0] == dataset) and (user is None or k[1] == user)
        ]

    # -- signing keys --------------------------------------------------------

    async def signing_keys(self) -> list[SigningKey]:
        return sorted(self._keys.values(), key=lambda k: (k.created, k.kid))

    async def add_signing_key(self, key: SigningKey) -> None:
        if key.kid in self._keys:
            raise AlreadyExists(msg.signing_key_exists(key.kid))
        self._keys[key.kid] = replace(key, secret=bytes(key.secret), created=float(key.created))
        self._auth_version += 1
