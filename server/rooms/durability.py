"""A room's durability: the WAL append before any ack, commits and autocommit.

PROTOCOL.md section 13. Each tick's accepted batches are appended to the
branch's write-ahead log in one transaction *before* any of them is acked.
Commits write the frame's dirty chunks and a manifest; autocommit runs after
``autocommit_ops`` batches or ``autocommit_seconds`` after the first
uncommitted one, and when the room unloads.

**Autocommits take a bounded share of the time.** Under random edits every
chunk is dirty, so a commit rewrites the whole frame (about 0.3 s for 1M x
10 here): committing every 10,000 batches of a fast stream spent about 40 %
of the server's CPU on it (issue 9's profile). After a commit that took
``t`` seconds, the next autocommit waits at least ``t * (1/share - 1)``
(``autocommit_share``, 0.1 by default: at most a tenth of the time). The WAL
keeps every batch meanwhile, and recovery replays over 100,000 entries/s, so
a longer WAL costs little. Explicit commits and the unload commit never wait.

**Commits never stall the room.** A commit is taken in two steps:
:meth:`Durability.prepare` captures, synchronously and in tick order, the
state, seq and dirty rows to write (states are immutable, so the capture is
free); :meth:`Durability.write` then writes it while the room keeps ticking.
Writes run one at a time, in the order they were prepared. If one fails, the
writes after it rewrite every chunk, since their dirty rows were counted from
a state that never became a commit.

The storage backend sits behind :class:`~server.storage.service.BranchHandle`
(SQLite, PostgreSQL or in memory); this module never knows which.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from protocol import Commit, Committed, Error, ErrorCode

from ..ops.state import State
from ..storage.types import WalEntry
from .core import RoomCore

if TYPE_CHECKING:
    from ..storage.service import BranchHandle

__all__ = ["Durability", "Prepared"]

log = logging.getLogger("coframe.room")


@dataclass(frozen=True, slots=True)
class Prepared:
    """What one commit writes, captured in tick order."""

    state: State
    seq: int
    dirty: np.ndarray | None  # rids touched since the previous prepare; None: every chunk
    clients: dict[str, int]  # highest client_seq per client (exactly-once after a restart)
    appended: int  # batches appended to the WAL when it was captured


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
        autocommit_share: float = 1.0,
        announce: Callable[[Committed], None],
        written: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self._announce = announce  # broadcast a ``committed`` to the room
        self._written = written  # called after each write, done or failed
        self.handle = handle
        self.autocommit_ops = autocommit_ops
        self.autocommit_seconds = autocommit_seconds
        self.autocommit_share = autocommit_share
        self._not_before = 0.0  # monotonic time before which no autocommit starts (the share)
        self.broken: str | None = None  # set when the WAL failed: the room must reload
        self._appended = 0  # batches appended to the WAL (or replayed from it) ...
        self._committed = 0  # ... and how many of them a commit covers
        self._prepared_seq = -1 if handle is None else handle.head.seq  # the last seq prepared
        self._first_uncommitted: float | None = None
        self._writing = asyncio.Lock()  # one write at a time, in prepare order
        self._rewrite_all = False  # a write failed: the next ones rewrite every chunk

    @property
    def uncommitted(self) -> int:
        """Batches in the WAL that no commit covers yet."""
        return self._appended - self._committed

    @uncommitted.setter
    def uncommitted(self, n: int) -> None:
        """Seed the count (the registry, after replaying ``n`` WAL entries)."""
        self._appended = self._committed + n
        if n and self._first_uncommitted is None:
            self._first_uncommitted = time.monotonic()

    @property
    def busy(self) -> bool:
        """A commit is being written."""
        return self._writing.locked()

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
        self._appended += len(entries)
        if self._first_uncommitted is None:
            self._first_uncommitted = time.monotonic()
        return True

    def wait(self) -> float | None:
        """Seconds until an autocommit is due (None: nothing pending, or a write running).

        The time-based one, or an op-count one that the share deferred.
        """
        if self.handle is None or self._first_uncommitted is None or self.broken or self.busy:
            return None
        now = time.monotonic()
        due_at = self._first_uncommitted + self.autocommit_seconds
        if self.uncommitted >= self.autocommit_ops and now < self._not_before:
            due_at = min(due_at, self._not_before)  # an op-count autocommit the share deferred
        return max(0.0, max(due_at, self._not_before) - now)

    @property
    def due(self) -> bool:
        """Enough batches for an op-count autocommit, no write running, and the share allows one."""
        return (
            self.uncommitted >= self.autocommit_ops and not self.busy and time.monotonic() >= self._not_before
        )

    def prepare(self, core: RoomCore) -> Prepared | None:
        """Capture the core's state for a commit (synchronous: call it in tick order).

        None when nothing changed since the last prepare.
        """
        assert self.handle is not None
        core.flush()
        if core.seq == self._prepared_seq:
            return None
        self._prepared_seq = core.seq
        return Prepared(core.state, core.seq, core.take_dirty(), core.replies.high_water(), self._appended)

    async def write(self, prepared: Prepared | None, author: str, message: str) -> Committed:
        """Write a prepared commit (after any written before it) and announce it.

        With nothing new (``prepared`` None), the answer names the head once
        the writes before it are done.

        Raises:
            StorageError: the commit could not be written; the next ones rewrite every chunk.
        """
        assert self.handle is not None
        try:
            return await self._write(prepared, author, message)
        finally:
            self._written()

    async def _write(self, prepared: Prepared | None, author: str, message: str) -> Committed:
        assert self.handle is not None
        async with self._writing:
            if prepared is None or prepared.seq <= self.handle.head.seq:
                head = self.handle.head
            else:
                dirty = None if self._rewrite_all else prepared.dirty
                started = time.monotonic()
                try:
                    head = await self.handle.commit(
                        prepared.state,
                        prepared.seq,
                        dirty,
                        author=author,
                        message=message,
                        clients=prepared.clients,
                    )
                except BaseException:
                    self._rewrite_all = True
                    raise
                self._rewrite_all = False
                now = time.monotonic()
                self._not_before = now + (now - started) * (1 / self.autocommit_share - 1)
                self._committed = max(self._committed, prepared.appended)
                self._first_uncommitted = time.monotonic() if self.uncommitted else None
        done = Committed(head.id, head.seq, head.rows, head.message, head.author, head.time, head.parents)
        self._announce(done)
        return done

    async def commit(self, core: RoomCore, author: str, message: str) -> Committed:
        """Prepare and write a commit of the core's current state.

        Raises:
            StorageError: the commit could not be written.
        """
        return await self.write(self.prepare(core), author, message)

    async def autocommit(self, prepared: Prepared | None, message: str) -> Committed | None:
        """Write an automatic commit; a failure is logged, never raised (the WAL keeps the batches)."""
        try:
            return await self.write(prepared, "coframe", message)
        except Exception:
            log.exception("autocommit failed in room %s", self.name)
            return None

    async def answer(self, prepared: Prepared | None, client: str, msg: Commit) -> Committed | Error:
        """The reply to a client's ``commit`` (PROTOCOL.md "commit")."""
        try:
            done = await self.write(prepared, client, msg.message)
        except Exception as e:
            log.exception("commit failed in room %s", self.name)
            return Error(ErrorCode.INTERNAL, f"commit failed ({type(e).__name__}: {e})", re=msg.id)
        return dataclasses.replace(done, re=msg.id)
