"""Loading a branch = its head commit + a replay of the WAL after it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .core import RoomCore
from .wal import decode_ack, replay

if TYPE_CHECKING:
    from ..storage.service import BranchHandle, Storage

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
    for e in tail:
        core.replies.put(e.client, e.client_seq, decode_ack(e))
    replayed = await asyncio.to_thread(replay, core, entries)
    core.flush()
    return handle, core, replayed
