"""The PostgreSQL catalog's audit trail (the ``audit`` table of migration 3).

:class:`PostgresAudit` implements :class:`~.audit_types.AuditStore` on the
connection pool of :class:`~.catalog_pg.PostgresCatalog`, which inherits it.
Each method is one statement. ``count_audit`` is one ``INSERT ... ON
CONFLICT`` on the partial unique index of counted rows, so nodes counting
the same (kind, detail, minute) at once add up in one row. Audit rows are
not identity changes: they leave ``auth_state.version`` alone.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from .audit_types import AuditEvent
from .catalog_common import audit_limit, audit_where, check_audit_kind

__all__ = ["PostgresAudit"]

_COLUMNS = "time, kind, user_name, dataset, detail, count"
_ADD = f"INSERT INTO audit ({_COLUMNS}, counted) VALUES ($1, $2, $3, $4, $5, $6, false)"
_COUNT = (
    f"INSERT INTO audit ({_COLUMNS}, counted) VALUES ($1, $2, '', '', $3, 1, true) "
    "ON CONFLICT (kind, detail, time) WHERE counted DO UPDATE SET count = audit.count + 1"
)


def _event(row: Any) -> AuditEvent:
    return AuditEvent(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


class PostgresAudit:
    """AuditStore on PostgreSQL; the class using it provides ``pool`` (an open asyncpg pool)."""

    pool: asyncpg.Pool  # PostgresCatalog.pool (raises StorageError when not open)

    async def add_audit(self, event: AuditEvent) -> None:
        check_audit_kind(event.kind)
        await self.pool.execute(
            _ADD, float(event.time), event.kind, event.user, event.dataset, event.detail, int(event.count)
        )

    async def count_audit(self, kind: str, detail: str, minute: float) -> None:
        check_audit_kind(kind)
        await self.pool.execute(_COUNT, float(minute), kind, detail)

    async def list_audit(
        self,
        *,
        since: float | None = None,
        user: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        where, params = audit_where(since, user, kind, lambda i: f"${i}")
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS}, id FROM audit{where} ORDER BY time DESC, id DESC LIMIT ${len(params) + 1}",
            *params,
            audit_limit(limit),
        )
        return [_event(r) for r in rows]
