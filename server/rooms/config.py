"""A room's limits and commit policy (PROTOCOL.md sections 10 and 13)."""

from __future__ import annotations

from dataclasses import dataclass

from .session import SessionLimits

__all__ = ["RoomConfig"]


@dataclass(frozen=True, slots=True)
class RoomConfig:
    max_batch: int = 4096  # messages drained per tick
    session: SessionLimits = SessionLimits()
    delta_log_entries: int = 4096
    delta_log_bytes: int = 64 * 1024 * 1024
    prune_every: int = 64  # ticks between cell-clock prunes
    max_message_bytes: int = 8 * 1024 * 1024
    max_rows_per_op: int = 1_000_000
    max_rows_per_message: int = 1_000_000
    max_presence_bytes: int = 64 * 1024  # the connection core enforces these two; welcomes announce them
    max_meta_bytes: int = 64 * 1024
    max_meta_doc_bytes: int = 1024 * 1024  # over it, the metadata doc is compacted (metadoc.py)
    autocommit_ops: int = 10_000  # commit after this many batches...
    autocommit_seconds: float = 60.0  # ...or this long after the first uncommitted one,
    autocommit_share: float = 0.1  # ...but commits take at most this share of the time (durability.py)
