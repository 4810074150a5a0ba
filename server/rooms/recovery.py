"""Loading a branch = its head commit + a replay of the WAL after it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .core import RoomCore
from .wal import put_replies, replay

if TYPE_CHECKING:
    from ..storage.service import BranchHandle, Storage
    from ..storage.types import WalEntry

__all__ = ["recover"]


async def recover(storage: Storage, dataset: str, branch: str) -> tuple[BranchHandle, RoomCore, int]:
    """The branch's live core: state, seq, exactly-once replies and dirty ranges.

    Returns ``(handle, core, replayed)``.

    Raises:
        NotFound: no such dataset or branch.
        ValueError: the WAL does not continue the head commit.
    """
    handle, state, entries, tail = await storage.open_branch(dataset, branch)
    core = RoomCore(state, handle.head.seq)
    core.replies.seed(handle.head.clients)
    replayed = await asyncio.to_thread(_restore, core, tail, entries)
    return handle, core, replayed


def _restore(core: RoomCore, tail: list[WalEntry], entries: list[WalEntry]) -> int:
    """The tail's replies, then the replay (in a worker thread: both are pure CPU)."""
    put_replies(core, tail)
    return replay(core, entries)
