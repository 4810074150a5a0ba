"""The SQLite catalog's audit trail (the ``audit`` table of migration 3).

:class:`SqliteAudit` implements :class:`~.audit_types.AuditStore` on the
plumbing of :class:`~.sqlite_thread.SqliteThread`, and
:class:`~.catalog_sqlite.SqliteCatalog` inherits it. Each method is one
transaction. Audit rows are not identity changes: they leave
``auth_state.version`` alone.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .audit_types import AuditEvent
from .catalog_common import audit_limit, audit_where, check_audit_kind
from .sqlite_thread import SqliteThread

__all__ = ["SqliteAudit"]

_COLUMNS = "time, kind, user_name, dataset, detail, count"
_COUNT = (
    f"INSERT INTO audit ({_COLUMNS}, counted) VALUES (?, ?, '', '', ?, 1, 1) "
    "ON CONFLICT (kind, detail, time) WHERE counted = 1 DO UPDATE SET count = audit.count + 1"
)


def _event(row: Any) -> AuditEvent:
    return AuditEvent(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


class SqliteAudit(SqliteThread):
    """AuditStore on the SQLite catalog file."""

    async def add_audit(self, event: AuditEvent) -> None:
        check_audit_kind(event.kind)
        row = (float(event.time), event.kind, event.user, event.dataset, event.detail, int(event.count))

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT INTO audit ({_COLUMNS}, counted) VALUES (?, ?, ?, ?, ?, ?, 0)", row)

        await self._tx(fn)

    async def count_audit(self, kind: str, detail: str, minute: float) -> None:
        check_audit_kind(kind)

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(_COUNT, (float(minute), kind, detail))

        await self._tx(fn)

    async def list_audit(
        self,
        *,
        since: float | None = None,
        user: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        where, params = audit_where(since, user, kind, lambda i: "?")
        sql = f"SELECT {_COLUMNS}, id FROM audit{where} ORDER BY time DESC, id DESC LIMIT ?"
        params.append(audit_limit(limit))

        def fn(conn: sqlite3.Connection) -> list[AuditEvent]:
            return [_event(r) for r in conn.execute(sql, params)]

        return await self._tx(fn, write=False)
