"""The audit trail the catalog keeps: who did what, when (docs/security.md "Audit")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["AuditEvent", "AuditStore", "AUDIT_KINDS"]

#: What is recorded. ``auth_failed`` rows are counted per (reason, minute), not one per attempt.
AUDIT_KINDS = (
    "sign_in",
    "auth_failed",
    "grant",
    "revoke",
    "token_create",
    "token_revoke",
    "user_add",
    "user_disable",
    "upload",
    "branch",
    "tag",
    "revert",
    "commit",
    "delete_dataset",
)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    time: float  # unix seconds (for a counted row: the start of its minute)
    kind: str  # one of AUDIT_KINDS
    user: str  # who did it ("" when unknown, e.g. a failed authentication)
    dataset: str = ""  # the dataset it concerns, if any
    detail: str = ""  # what, in words (never a token or a secret)
    count: int = 1  # how many times (auth_failed rows add up within their minute)
    id: int = 0  # the catalog's sequence number (0 before it is stored)


class AuditStore(Protocol):
    """Append-only audit rows. Every method is a coroutine."""

    async def add_audit(self, event: AuditEvent) -> None:
        """Append one row (``event.id`` is ignored; the catalog numbers rows in order)."""

    async def count_audit(self, kind: str, detail: str, minute: float) -> None:
        """Add one to the row of (``kind``, ``detail``, ``minute``), creating it with count 1."""

    async def list_audit(
        self,
        *,
        since: float | None = None,
        user: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Newest first: rows at or after ``since``, of ``user``/``kind`` when given; at most ``limit``."""
