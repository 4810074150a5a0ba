"""A room's durability: the WAL append before any ack, commits and autocommit.

PROTOCOL.md section 13. Each tick's accepted batches are appended to the
branch's write-ahead log in one transaction *before* any of them is acked.
Commits write the frame's dirty chunks and a manifest; autocommit runs after
``autocommit_ops`` batches or ``autocommit_seconds`` after the first
uncommitted one, and when the room unloads.

The storage backend sits behind :class:`~server.storage.service.BranchHandle`
(SQLite, PostgreSQL or in memory); this module never knows which.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from protocol import Commit, Committed, Error, ErrorCode

from ..storage.types import WalEntry
from .core import RoomCore

if TYPE_CHECKING:
    from ..storage.service import BranchHandle

__all__ = ["Durability"]

log = logging.getLogger("coframe.room")


class Durability:
    """The WAL and commit side of one room.

    ``handle`` is the room's branch in storage (memory, SQLite or PostgreSQL).
    It is None only for a read-only room at a past version, which never
    reaches the WAL, and for rooms that unit tests make without storage.
    """

    def __init__(
        self,
        name: str,
        handle: BranchHandle | None,
        *,
        autocommit_ops: int,
        autocommit_seconds: float,
        announce: Callable[[Committed], None],
    ) -> None:
        self.name = name
        self._announce = announce  # broadcast a ``committed`` to the room
        self.handle = handle
        self.autocommit_ops = autocommit_ops
        self.autocommit_seconds = autocommit_seconds
        self.uncommitted = 0  # batches since the last commit
        self.broken: str | None = None  # set when the WAL failed: the room must reload
        self._first_uncommitted: float | None = None

    async def append(self, entries: list[WalEntry]) -> bool:
        """Append one tick's WAL entries in one transaction; False (and ``broken`` set) on failure.

        After a failure the in-memory state is ahead of the durable one: the
        room closes its sessions and reloads from storage, and clients resend
        their unacked batches to the reloaded room.
        """
        if self.handle is None:  # a room made without a branch (read-only, or a unit test's)
            return True
        try:
            await self.handle.append(entries)
        except Exception as e:
            log.exception("WAL append failed in room %s", self.name)
            self.broken = f"could not make batches durable ({type(e).__name__}); reconnect and resend"
            return False
        self.uncommitted += len(entries)
        if self._first_uncommitted is None:
            self._first_uncommitted = time.monotonic()
        return True

    def wait(self) -> float | None:
        """Seconds until the time-based autocommit is due (None: nothing pending)."""
        if self.handle is None or self._first_uncommitted is None or self.broken:
            return None
        return max(0.0, self._first_uncommitted + self.autocommit_seconds - time.monotonic())

    @property
    def due(self) -> bool:
        """Enough batches for an op-count autocommit."""
        return self.uncommitted >= self.autocommit_ops

    async def autocommit(self, core: RoomCore, message: str) -> Committed | None:
        """Commit if anything is uncommitted; a failure is logged, never raised."""
        if self.handle is None or not self.uncommitted or self.broken:
            return None
        try:
            return await self.commit(core, "coframe", message)
        except Exception:  # the batches stay in the WAL; the next commit takes them
            log.exception("autocommit failed in room %s", self.name)
            return None

    async def commit(self, core: RoomCore, author: str, message: str) -> Committed:
        """Commit the core's current state (from the tick loop, or while it is idle).

        Raises:
            StorageError: the commit could not be written; the next commit rewrites every chunk.
        """
        assert self.handle is not None
        core.flush()
        if self.handle.head.seq == core.seq:
            head = self.handle.head
        else:
            dirty = core.take_dirty()
            try:
                head = await self.handle.commit(
                    core.state,
                    core.seq,
                    dirty,
                    author=author,
                    message=message,
                    clients=core.replies.high_water(),
                )
            except BaseException:
                core.dirty_rids = None  # unknown what was written: rewrite every chunk next time
                raise
        self.uncommitted = 0
        self._first_uncommitted = None
        done = Committed(head.id, head.seq, head.rows, head.message, head.author, head.time, head.parents)
        self._announce(done)
        return done

    async def answer(self, core: RoomCore, client: str, msg: Commit) -> Committed | Error:
        """The reply to a client's ``commit`` (PROTOCOL.md "commit")."""
        try:
            done = await self.commit(core, client, msg.message)
        except Exception as e:
            log.exception("commit failed in room %s", self.name)
            return Error(ErrorCode.INTERNAL, f"commit failed ({type(e).__name__}: {e})", re=msg.id)
        return dataclasses.replace(done, re=msg.id)
