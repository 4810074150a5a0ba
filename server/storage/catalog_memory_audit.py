"""The in-memory catalog's audit trail: a list of rows and an index of counted ones.

:class:`MemoryAudit` implements :class:`~.audit_types.AuditStore` for
:class:`~.catalog_memory.MemoryCatalog`, which inherits it. As there, no
method awaits anything, so each call is atomic on its event loop. Rows are
numbered from 1 in the order they are added and kept with times as floats and
counts as ints, as a round trip through the other backends would make them.
Audit rows are not identity changes: they leave the auth version alone.
"""

from __future__ import annotations

from dataclasses import replace

from .audit_types import AuditEvent
from .catalog_common import audit_limit, check_audit_kind

__all__ = ["MemoryAudit"]


class MemoryAudit:
    """AuditStore in this process's memory."""

    def __init__(self) -> None:
        super().__init__()
        self._audit: list[AuditEvent] = []  # in id order (ids 1, 2, ...)
        self._counted: dict[tuple[str, str, float], int] = {}  # (kind, detail, minute) → index in _audit

    def _append(self, event: AuditEvent) -> int:
        self._audit.append(replace(event, id=len(self._audit) + 1))
        return len(self._audit) - 1

    async def add_audit(self, event: AuditEvent) -> None:
        check_audit_kind(event.kind)
        self._append(replace(event, time=float(event.time), count=int(event.count)))

    async def count_audit(self, kind: str, detail: str, minute: float) -> None:
        check_audit_kind(kind)
        key = (kind, detail, float(minute))
        at = self._counted.get(key)
        if at is None:
            self._counted[key] = self._append(AuditEvent(float(minute), kind, "", "", detail, 1))
        else:
            self._audit[at] = replace(self._audit[at], count=self._audit[at].count + 1)

    async def list_audit(
        self,
        *,
        since: float | None = None,
        user: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        if kind is not None:
            check_audit_kind(kind)
        rows = [
            e
            for e in self._audit
            if (since is None or e.time >= since)
            and (user is None or e.user == user)
            and (kind is None or e.kind == kind)
        ]
        rows.sort(key=lambda e: (e.time, e.id), reverse=True)
        return rows[: audit_limit(limit)]
