"""The PostgreSQL catalog's identity tables: users, tokens, grants and signing keys.

:class:`PostgresAuth` implements :class:`~.auth_types.AuthStore` on the
connection pool of :class:`~.catalog_pg.PostgresCatalog`, which inherits it.
Each mutating method is one transaction that also bumps
``auth_state.version``; the bump takes that row's lock, so identity changes
from several nodes are serialized and each sees the version its change made.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from .auth_types import Grant, SigningKey, TokenRecord, User
from .catalog_common import check_role, decode_hide, encode_hide, msg
from .types import AlreadyExists, NotFound

__all__ = ["PostgresAuth"]

_USER = "SELECT name, display, disabled, can_create, created FROM users"
_TOKEN = "SELECT id, user_name, issued, expires, revoked FROM tokens"
_GRANT = "SELECT dataset, user_name, role, rows_predicate, hide FROM grants"
_BUMP = "UPDATE auth_state SET version = version + 1 WHERE id = 1"


def _seconds(t: float | None) -> float | None:
    return None if t is None else float(t)


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], row[3], row[4])


def _token(row: Any) -> TokenRecord:
    return TokenRecord(row[0], row[1], row[2], row[3], row[4])


def _grant(row: Any) -> Grant:
    return Grant(row[0], row[1], row[2], row[3], decode_hide(row[4]))


class PostgresAuth:
    """AuthStore on PostgreSQL; the class using it provides ``pool`` (an open asyncpg pool)."""

    pool: asyncpg.Pool  # PostgresCatalog.pool (raises StorageError when not open)

    @staticmethod
    async def _require_user(conn: asyncpg.Connection, name: str) -> None:
        if await conn.fetchval("SELECT 1 FROM users WHERE name = $1", name) is None:
            raise NotFound(msg.user_missing(name), missing="user")

    async def auth_version(self) -> int:
        return int(await self.pool.fetchval("SELECT version FROM auth_state WHERE id = 1"))

    # -- users ---------------------------------------------------------------

    async def add_user(self, user: User) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "INSERT INTO users (name, display, disabled, can_create, created) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                user.name,
                user.display,
                bool(user.disabled),
                bool(user.can_create),
                float(user.created),
            )
            if status.endswith(" 0"):
                raise AlreadyExists(msg.user_exists(user.name))
            await conn.execute(_BUMP)

    async def get_user(self, name: str) -> User:
        row = await self.pool.fetchrow(f"{_USER} WHERE name = $1", name)
        if row is None:
            raise NotFound(msg.user_missing(name), missing="user")
        return _user(row)

    async def list_users(self) -> list[User]:
        return [_user(r) for r in await self.pool.fetch(f"{_USER} ORDER BY name")]

    async def set_user(
        self, name: str, *, disabled: bool | None = None, can_create: bool | None = None
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE users SET disabled = COALESCE($2, disabled), can_create = COALESCE($3, can_create) "
                "WHERE name = $1",
                name,
                disabled,
                can_create,
            )
            if status.endswith(" 0"):
                raise NotFound(msg.user_missing(name), missing="user")
            await conn.execute(_BUMP)

    # -- tokens --------------------------------------------------------------

    async def add_token(self, token: TokenRecord) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._require_user(conn, token.user)
            status = await conn.execute(
                "INSERT INTO tokens (id, user_name, issued, expires, revoked) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                token.id,
                token.user,
                float(token.issued),
                _seconds(token.expires),
                _seconds(token.revoked),
            )
            if status.endswith(" 0"):
                raise AlreadyExists(msg.token_exists(token.id))
            await conn.execute(_BUMP)

    async def get_token(self, token_id: str) -> TokenRecord:
        row = await self.pool.fetchrow(f"{_TOKEN} WHERE id = $1", token_id)
        if row is None:
            raise NotFound(msg.token_missing(token_id), missing="token")
        return _token(row)

    async def list_tokens(self, user: str | None = None) -> list[TokenRecord]:
        if user is None:
            rows = await self.pool.fetch(f"{_TOKEN} ORDER BY issued, id")
        else:
            rows = await self.pool.fetch(f"{_TOKEN} WHERE user_name = $1 ORDER BY issued, id", user)
        return [_token(r) for r in rows]

    async def revoke_token(self, token_id: str, when: float) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE tokens SET revoked = COALESCE(revoked, $2) WHERE id = $1", token_id, float(when)
            )
            if status.endswith(" 0"):
                raise NotFound(msg.token_missing(token_id), missing="token")
            await conn.execute(_BUMP)

    # -- grants --------------------------------------------------------------

    async def put_grant(self, grant: Grant) -> None:
        check_role(grant.role)
        hide = encode_hide(grant.hide)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._require_user(conn, grant.user)
            await conn.execute(
                "INSERT INTO grants (dataset, user_name, role, rows_predicate, hide) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dataset, user_name) DO UPDATE SET "
                "role = excluded.role, rows_predicate = excluded.rows_predicate, hide = excluded.hide",
                grant.dataset,
                grant.user,
                grant.role,
                grant.rows,
                hide,
            )
            await conn.execute(_BUMP)

    async def delete_grant(self, dataset: str, user: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "DELETE FROM grants WHERE dataset = $1 AND user_name = $2", dataset, user
            )
            if status.endswith(" 0"):
                raise NotFound(msg.grant_missing(dataset, user), missing="grant")
            await conn.execute(_BUMP)

    async def list_grants(self, dataset: str | None = None, user: str | None = None) -> list[Grant]:
        where = [(c, v) for c, v in (("dataset", dataset), ("user_name", user)) if v is not None]
        sql = _GRANT + "".join(f" {'AND' if i else 'WHERE'} {c} = ${i + 1}" for i, (c, _) in enumerate(where))
        rows = await self.pool.fetch(f"{sql} ORDER BY dataset, user_name", *(v for _, v in where))
        return [_grant(r) for r in rows]

    # -- signing keys --------------------------------------------------------

    async def signing_keys(self) -> list[SigningKey]:
        rows = await self.pool.fetch("SELECT kid, secret, created FROM auth_keys ORDER BY created, kid")
        return [SigningKey(r[0], bytes(r[1]), r[2]) for r in rows]

    async def add_signing_key(self, key: SigningKey) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "INSERT INTO auth_keys (kid, secret, created) VALUES ($1, $2, $3) "
                "ON CONFLICT (kid) DO NOTHING",
                key.kid,
                bytes(key.secret),
                float(key.created),
            )
            if status.endswith(" 0"):
                raise AlreadyExists(msg.signing_key_exists(key.kid))
            await conn.execute(_BUMP)
