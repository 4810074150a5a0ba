"""Recording the audit trail (docs/security.md "Audit"): who did what, when, in the catalog.

Recording never fails the request it describes: a catalog that cannot take
the row is logged, and the request goes on. Failed authentications are
counted per (reason, minute) in one row each, so an attack of a million
packets is a handful of rows, not a million.
"""

from __future__ import annotations

import logging
import math
import time

from ..storage.audit_types import AuditEvent, AuditStore

__all__ = ["Audit", "OPERATOR"]

log = logging.getLogger("coframe.audit")

OPERATOR = "(operator)"  # the user of rows the coframe CLI writes on the catalog directly


class Audit:
    def __init__(self, store: AuditStore) -> None:
        self.store = store

    async def record(self, kind: str, user: str, dataset: str = "", detail: str = "") -> None:
        try:
            await self.store.add_audit(AuditEvent(time.time(), kind, user, dataset, detail))
        except Exception:
            log.exception("could not record %s by %s in the audit trail", kind, user)

    async def failed(self, reason: str) -> None:
        """Count one failed authentication under ``reason`` (its words, never the token) this minute."""
        minute = math.floor(time.time() / 60) * 60.0
        try:
            await self.store.count_audit("auth_failed", reason.split(":", 1)[0][:120], minute)
        except Exception:
            log.exception("could not count a failed authentication in the audit trail")
