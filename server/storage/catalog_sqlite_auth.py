"""The SQLite catalog's identity tables: users, tokens, grants and signing keys.

:class:`SqliteAuth` implements :class:`~.auth_types.AuthStore` on the
plumbing of :class:`~.sqlite_thread.SqliteThread`, and
:class:`~.catalog_sqlite.SqliteCatalog` inherits it. As there, each method is
one transaction; every successful call of a mutating method also bumps
``auth_state.version`` in that transaction, so another process on the same
file sees the change and the new version together.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .auth_types import Grant, SigningKey, TokenRecord, User
from .catalog_common import check_role, decode_hide, encode_hide, msg
from .sqlite_thread import SqliteThread
from .types import AlreadyExists, NotFound

__all__ = ["SqliteAuth"]

_USER = "SELECT name, display, disabled, can_create, created FROM users"
_TOKEN = "SELECT id, user_name, issued, expires, revoked FROM tokens"
_GRANT = "SELECT dataset, user_name, role, rows_predicate, hide FROM grants"


def _user(row: Any) -> User:
    return User(row[0], row[1], bool(row[2]), bool(row[3]), row[4])


def _grant(row: Any) -> Grant:
    return Grant(row[0], row[1], row[2], row[3], decode_hide(row[4]))


class SqliteAuth(SqliteThread):
    """AuthStore on the SQLite catalog file."""

    @staticmethod
    def _bump(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE auth_state SET version = version + 1 WHERE id = 1")

    @staticmethod
    def _require_user(conn: sqlite3.Connection, name: str) -> None:
        if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
            raise NotFound(msg.user_missing(name), missing="user")

    async def auth_version(self) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT version FROM auth_state WHERE id = 1").fetchone()[0])

        return await self._tx(fn, write=False)

    # -- users ---------------------------------------------------------------

    async def add_user(self, user: User) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO users (name, display, disabled, can_create, created) VALUES (?, ?, ?, ?, ?)",
                    (user.name, user.display, int(user.disabled), int(user.can_create), user.created),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(msg.user_exists(user.name)) from None
            self._bump(conn)

        await self._tx(fn)

    async def get_user(self, name: str) -> User:
        def fn(conn: sqlite3.Connection) -> User:
            row = conn.execute(f"{_USER} WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(msg.user_missing(name), missing="user")
            return _user(row)

        return await self._tx(fn, write=False)

    async def list_users(self) -> list[User]:
        def fn(conn: sqlite3.Connection) -> list[User]:
            return [_user(r) for r in conn.execute(f"{_USER} ORDER BY name")]

        return await self._tx(fn, write=False)

    async def set_user(
        self, name: str, *, disabled: bool | None = None, can_create: bool | None = None
    ) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            self._require_user(conn, name)
            if disabled is not None:
                conn.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
            if can_create is not None:
                conn.execute("UPDATE users SET can_create = ? WHERE name = ?", (int(can_create), name))
            self._bump(conn)

        await self._tx(fn)

    # -- tokens --------------------------------------------------------------

    async def add_token(self, token: TokenRecord) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            self._require_user(conn, token.user)
            try:
                conn.execute(
                    "INSERT INTO tokens (id, user_name, issued, expires, revoked) VALUES (?, ?, ?, ?, ?)",
                    (token.id, token.user, token.issued, token.expires, token.revoked),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(msg.token_exists(token.id)) from None
            self._bump(conn)

        await self._tx(fn)

    async def get_token(self, token_id: str) -> TokenRecord:
        def fn(conn: sqlite3.Connection) -> TokenRecord:
            row = conn.execute(f"{_TOKEN} WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                raise NotFound(msg.token_missing(token_id), missing="token")
            return TokenRecord(*row)

        return await self._tx(fn, write=False)

    async def list_tokens(self, user: str | None = None) -> list[TokenRecord]:
        def fn(conn: sqlite3.Connection) -> list[TokenRecord]:
            if user is None:
                rows = conn.execute(f"{_TOKEN} ORDER BY issued, id")
            else:
                rows = conn.execute(f"{_TOKEN} WHERE user_name = ? ORDER BY issued, id", (user,))
            return [TokenRecord(*r) for r in rows]

        return await self._tx(fn, write=False)

    async def revoke_token(self, token_id: str, when: float) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            found = conn.execute(
                "UPDATE tokens SET revoked = COALESCE(revoked, ?) WHERE id = ?", (when, token_id)
            ).rowcount
            if found == 0:
                raise NotFound(msg.token_missing(token_id), missing="token")
            self._bump(conn)

        await self._tx(fn)

    # -- grants --------------------------------------------------------------

    async def put_grant(self, grant: Grant) -> None:
        check_role(grant.role)
        hide = encode_hide(grant.hide)

        def fn(conn: sqlite3.Connection) -> None:
            self._require_user(conn, grant.user)
            conn.execute(
                "INSERT INTO grants (dataset, user_name, role, rows_predicate, hide) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (dataset, user_name) DO UPDATE SET "
                "role = excluded.role, rows_predicate = excluded.rows_predicate, hide = excluded.hide",
                (grant.dataset, grant.user, grant.role, grant.rows, hide),
            )
            self._bump(conn)

        await self._tx(fn)

    async def delete_grant(self, dataset: str, user: str) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            gone = conn.execute(
                "DELETE FROM grants WHERE dataset = ? AND user_name = ?", (dataset, user)
            ).rowcount
            if gone == 0:
                raise NotFound(msg.grant_missing(dataset, user), missing="grant")
            self._bump(conn)

        await self._tx(fn)

    async def list_grants(self, dataset: str | None = None, user: str | None = None) -> list[Grant]:
        where = [(c, v) for c, v in (("dataset", dataset), ("user_name", user)) if v is not None]
        sql = _GRANT + "".join(f" {'AND' if i else 'WHERE'} {c} = ?" for i, (c, _) in enumerate(where))

        def fn(conn: sqlite3.Connection) -> list[Grant]:
            rows = conn.execute(f"{sql} ORDER BY dataset, user_name", [v for _, v in where])
            return [_grant(r) for r in rows]

        return await self._tx(fn, write=False)

    # -- signing keys --------------------------------------------------------

    async def signing_keys(self) -> list[SigningKey]:
        def fn(conn: sqlite3.Connection) -> list[SigningKey]:
            rows = conn.execute("SELECT kid, secret, created FROM auth_keys ORDER BY created, kid")
            return [SigningKey(kid, bytes(secret), created) for kid, secret, created in rows]

        return await self._tx(fn, write=False)

    async def add_signing_key(self, key: SigningKey) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO auth_keys (kid, secret, created) VALUES (?, ?, ?)",
                    (key.kid, bytes(key.secret), key.created),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(msg.signing_key_exists(key.kid)) from None
            self._bump(conn)

        await self._tx(fn)
