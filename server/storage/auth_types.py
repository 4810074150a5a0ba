"""What the catalog keeps for identity: users, tokens, grants and the token signing keys.

Every catalog backend (SQLite, PostgreSQL, memory) implements
:class:`AuthStore` beside :class:`~.types.CatalogStore`, so that several
nodes sharing one catalog share users, grants, revocations and keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["User", "TokenRecord", "Grant", "SigningKey", "AuthStore", "ROLES", "ANY_DATASET"]

#: The roles of a grant, weakest first.
ROLES = ("viewer", "editor", "admin")
#: A grant's dataset for every dataset (a grant on the dataset itself overrides it).
ANY_DATASET = "*"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    display: str = ""
    disabled: bool = False
    can_create: bool = False  # may upload new datasets (and becomes their admin)
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An issued token's id (the JWT ``jti``), not the token itself."""

    id: str
    user: str
    issued: float
    expires: float | None
    revoked: float | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    dataset: str  # a dataset name, or ANY_DATASET
    user: str
    role: str  # one of ROLES
    rows: str | None = None  # a Polars SQL predicate over the dataset's columns, or None for every row
    hide: tuple[int, ...] = ()  # hidden column ids (ids survive renames)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    secret: bytes
    created: float


class AuthStore(Protocol):
    """Users, tokens, grants and signing keys. Every method is a coroutine.

    Every change bumps :meth:`auth_version`, which servers poll to re-check
    their open connections (a revocation reaches them within a second).
    Raises NotFound / AlreadyExists (``server.storage.types``) as documented.
    """

    async def auth_version(self) -> int:
        """A counter bumped by every change made through this interface (by any node)."""

    async def add_user(self, user: User) -> None:
        """Raises AlreadyExists if the name is taken."""

    async def get_user(self, name: str) -> User:
        """Raises NotFound."""

    async def list_users(self) -> list[User]:
        """By name."""

    async def set_user(
        self, name: str, *, disabled: bool | None = None, can_create: bool | None = None
    ) -> None:
        """Change a user's flags (None leaves one as it is). Raises NotFound."""

    async def add_token(self, token: TokenRecord) -> None:
        """Raises NotFound if the user does not exist, AlreadyExists if the id is taken."""

    async def get_token(self, token_id: str) -> TokenRecord:
        """Raises NotFound."""

    async def list_tokens(self, user: str | None = None) -> list[TokenRecord]:
        """By issue time (every user's, or one user's)."""

    async def revoke_token(self, token_id: str, when: float) -> None:
        """Mark it revoked at ``when`` (a second revoke keeps the first time). Raises NotFound."""

    async def put_grant(self, grant: Grant) -> None:
        """Create or replace the grant of (dataset, user). Raises NotFound if the user does not exist."""

    async def delete_grant(self, dataset: str, user: str) -> None:
        """Raises NotFound if there is no such grant."""

    async def list_grants(self, dataset: str | None = None, user: str | None = None) -> list[Grant]:
        """By (dataset, user); filtered by either or both."""

    async def signing_keys(self) -> list[SigningKey]:
        """By creation time, oldest first."""

    async def add_signing_key(self, key: SigningKey) -> None:
        """Raises AlreadyExists if the kid is taken."""
