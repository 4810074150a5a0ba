"""Views served without Perspective: plain viewports and grouped views computed from the room's frame.

Perspective keeps a sorted view sorted by re-sorting every row on each
update (about 740 ms at 1M rows), and holds a copy of every column its
views use. A plain view (no group_by, split_by, aggregates or
expressions) whose sort, filters and dtypes :mod:`.fast` proves equal to
Perspective's is served by :class:`~.fast.FastPlan` instead, and a
grouped one of counts, sums and means by :class:`~.fastgroup.GroupedPlan`.
Such a view needs no Perspective table at all, so it costs no memory in
the views process and survives the process's restarts untouched.

A fast view is read in full once, in a worker thread (a Polars top-k over
the frame: 10-25 ms at 1M rows, or a group-by). From then on it
**follows** the room on the event loop (:meth:`FastViews._step`): a step
after the ticks moves every fast view by the rows their deltas changed
(:mod:`.fasttop`, :meth:`~.fastgroup.GroupedPlan.follow`), in well under
a millisecond, and sends an update for each one whose content changed.
A view that cannot follow a delta (a row leaving a sorted top, a schema
change, too many changed rows) is marked stale and read in full
again by the fast pump, in a worker thread, while the others go on
following. Steps come at most every :data:`STEP_INTERVAL` seconds and
the steps of all rooms take at most about :data:`STEP_SHARE` of the loop's
time (:func:`step_wait`), so a busy room
coalesces more ticks per step: the views get later, the acks never slower.

:class:`FastViews` is mixed into :class:`~.live.RoomViews`. A view leaves
this path for Perspective (:meth:`FastViews._demote`) when a schema change
makes its config one the engine no longer serves, or when a read finds
values it cannot order as Perspective does (NaN, ``-0.0`` in a float sort
key): its next message is a Perspective snapshot, so it never sees two
orders mixed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..ops.state import RID, State
from ..rooms.policy import EVERYONE
from .fast import FastPlan, NeedsRead, NotServable, plan_fast
from .subscription import Subscription

__all__ = ["FastViews", "STEP_INTERVAL", "STEP_SHARE", "TOUCHED_DELTAS", "step_wait", "touched_rids"]

#: How many recent deltas' touched rids (upserted or deleted) a room keeps for its fast views; a
#: view last read or moved before them is read in full instead.
TOUCHED_DELTAS = 4096
#: Seconds at least between two steps of the fast views (each covers the ticks since the last).
STEP_INTERVAL = 0.004
#: The share of the event loop's time the steps of all rooms together may take under a stream of
#: ticks: after a step that took ``t`` seconds, a room's next waits ``t * k / STEP_SHARE`` (at least
#: STEP_INTERVAL), ``k`` the rooms that stepped in the last second (:func:`step_wait`). Rooms with
#: many fast views get later updates, never slower acks.
STEP_SHARE = 0.2
#: Rooms whose steps count as recent for :func:`step_wait`: room name -> loop time of its last step.
_RECENT: dict[str, float] = {}


def step_wait(took: float, now: float, room: str) -> float:
    """Seconds ``room`` waits before its next step, after one that took ``took`` seconds of the loop
    thread's CPU at loop time ``now``: each of the ``k`` rooms stepping lately waits ``k * took /
    STEP_SHARE``, so together their steps take about STEP_SHARE of the loop."""
    _RECENT[room] = now
    for name, at in list(_RECENT.items()):
        if at < now - 1.0:
            del _RECENT[name]
    return max(STEP_INTERVAL, took * len(_RECENT) / STEP_SHARE)


def _cheap(plan: Any) -> bool:
    """Whether a fast plan's read costs little at any size: grouped (a tally kept up to date) or
    a plain viewport with no sort and no filter (a slice)."""
    if isinstance(plan, FastPlan):
        return not plan.sort and not plan.filters
    return True


def touched_rids(delta: Any) -> np.ndarray | None:
    """The rids ``delta`` upserted or deleted, or None when it changed the schema."""
    if delta.schema is not None:
        return None
    upserted = (
        np.asarray(delta.upserts.column(RID).to_numpy(), dtype=np.uint64)
        if delta.upserts is not None
        else np.empty(0, dtype=np.uint64)
    )
    if not delta.deleted:
        return upserted
    return np.concatenate([upserted, np.asarray(delta.deleted, dtype=np.uint64)])


log = logging.getLogger("coframe.views")

Result = tuple[pa.Table, int] | Exception


class FastViews:
    """The fast-served subscriptions of one room (mixed into :class:`~.live.RoomViews`)."""

    if TYPE_CHECKING:
        subs: dict[tuple[str, str], Subscription]
        _current: Callable[[], tuple[State, int]]
        _fast_dirty: bool
        _fast_kind: str
        _fast_pump: asyncio.Task[None] | None
        _stepper: asyncio.Task[None] | None
        _step_due: bool
        _next_step: float
        full_reads: int
        name: str
        _touched: deque[tuple[int, int, np.ndarray | None]]
        _closed: bool
        _lock: asyncio.Lock

        def _kick(self) -> None: ...

        def spawn(self, work: Any) -> asyncio.Task[Any]: ...

        def _deliver(
            self, sub: Subscription, result: Result, kind: str, re: Any = None, seq: int | None = None
        ) -> None: ...

        async def _open_perspective(self, sub: Subscription, re: Any) -> None: ...

    def _plan(self, sub: Subscription) -> FastPlan | None:
        """The fast plan for ``sub``, or None (Perspective serves it). Only for the EVERYONE audience."""
        if getattr(sub.session, "audience", EVERYONE) != EVERYONE:
            return None
        state, _ = self._current()
        return plan_fast(sub.config, sub.viewport, state.catalog.to_wire())

    def _fast(self) -> list[Subscription]:
        return [s for s in self.subs.values() if s.fast is not None]

    def _step_soon(self) -> None:
        """Move the fast views with the deltas since the last step, soon (at most every
        :data:`STEP_INTERVAL` seconds: one step covers every tick since the last)."""
        self._step_due = True
        if self._stepper is None and not self._closed:
            self._stepper = asyncio.get_running_loop().create_task(
                self._run_steps(), name=f"steps:{self.name}"
            )

    async def _run_steps(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._step_due and not self._closed:
                wait = self._next_step - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # pacing: the ticks meanwhile join this step
                self._step_due = False
                start = time.thread_time()  # the loop's CPU, not the wall clock: a step's Polars calls
                self._step()  # wait for the GIL while other threads hold it, which costs the loop nothing
                took = time.thread_time() - start
                now = loop.time()
                self._next_step = now + step_wait(took, now, self.name)
        except Exception:
            log.exception("fast views failed to follow the room")
        finally:
            self._stepper = None

    def _step(self) -> None:
        """Follow the deltas on the event loop, in every fast view that can (:meth:`~.fast.FastPlan.follow`);
        the others are marked stale and read in full by the fast pump, in a worker thread."""
        state, seq = self._current()
        stale = False
        for sub in self._fast():
            if sub.stale or not sub.sent:
                stale = stale or sub.stale
                continue
            if not self._follow(sub, state, seq):
                sub.stale = stale = True
        if stale:
            self._fast_dirty = True
            self._kick()

    def _follow(self, sub: Subscription, state: State, seq: int) -> bool:
        """Move ``sub`` to ``seq`` from the deltas' rows and send its update if it changed; False
        when it needs a full read."""
        try:
            result = sub.fast.follow(state, seq, self._touched)
        except (NeedsRead, NotServable):
            return False  # the full read decides (NotServable there leaves for Perspective)
        except Exception:
            log.exception("view %s of %s could not follow the room", sub.name, sub.session.client)
            return False
        if result is not None and seq >= sub.fast_seq:
            sub.fast_seq = seq
            self._deliver(sub, result, "update", seq=seq)
        return True

    async def _run_fast_pump(self) -> None:
        """Read in full every stale fast view (every fast view after a schema change), until none is.

        Runs beside the Perspective pump, without the room's views lock: a fast
        view never waits for Perspective. A stale view first tries to follow
        again, from the full read that made it stale, if one finished since.
        A view whose snapshot is not sent yet is left to its ``subscribe``;
        views leaving the fast path are handed to a task that takes the lock.
        """
        try:
            while self._fast_dirty and not self._closed:
                self._fast_dirty = False
                demoted = [s for s in self.subs.values() if s.demoted]
                for sub in demoted:
                    sub.demoted = False
                    self.spawn(self._demote_locked(sub))
                kind, self._fast_kind = self._fast_kind, "update"
                subs = [s for s in self._fast() if s.sent and (s.stale or kind == "snapshot")]
                if kind == "update":
                    state, seq = self._current()
                    subs = [s for s in subs if not self._follow(s, state, seq)]
                for sub in self._fast():
                    sub.stale = False
                await self._update_fast(kind, only=subs)
        except Exception:
            log.exception("fast views failed to follow the room")
        finally:
            self._fast_pump = None
            self._kick()

    async def _demote_locked(self, sub: Subscription) -> None:
        async with self._lock:
            if self.subs.get(sub.key) is sub:
                await self._demote(sub)

    async def _read_fast(self, subs: list[Subscription]) -> tuple[list[Result], int]:
        """Read each of ``subs`` over the room's current frame (one worker-thread job); and the seq."""
        state, seq = self._current()
        self.full_reads += len(subs)
        plans = [s.fast for s in subs]
        touched = list(self._touched)

        def work() -> list[Result]:
            out: list[Result] = []
            for plan in plans:
                try:
                    out.append(plan.read(state.frame, seq, touched, state))  # type: ignore[union-attr]
                except NotServable as e:
                    out.append(e)
            return out

        return await asyncio.to_thread(work), seq

    async def _open_fast(self, sub: Subscription, re: Any) -> bool:
        """Serve ``sub``'s first snapshot from the frame; False if the engine cannot (Perspective then)."""
        (result,), seq = await self._read_fast([sub])
        if isinstance(result, NotServable):
            sub.fast = None
            return False
        sub.fast_seq = seq
        self._deliver(sub, result, "snapshot", re=re, seq=seq)
        if self._current()[1] > seq:
            self._step_soon()  # ticks came during the read: follow them without waiting for the next
        return True

    async def _update_fast(self, kind: str = "update", only: list[Subscription] | None = None) -> None:
        """One read of every fast view (after the ticks since the last one), delivered as ``kind``.

        Cheap views (grouped, and plain ones without a sort or filter) are read
        in one job and delivered first; each costly one (a top-k or a filter
        over every row) in a job of its own after them, so a grouped view does
        not wait for a sorted one's read.
        """
        subs = only if only is not None else self._fast()
        cheap = [s for s in subs if _cheap(s.fast)]
        batches = [cheap] if cheap else []
        batches += [[s] for s in subs if not _cheap(s.fast)]
        for batch in batches:
            batch = [s for s in batch if s.fast is not None and self.subs.get(s.key) is s]  # after an await
            if batch:
                await self._update_some(kind, batch)

    async def _update_some(self, kind: str, subs: list[Subscription]) -> None:
        results, seq = await self._read_fast(subs)
        for sub, result in zip(subs, results, strict=True):
            if self.subs.get(sub.key) is not sub:
                continue
            if isinstance(result, NotServable):
                log.info("view %s of %s leaves the fast path: %s", sub.name, sub.session.client, result)
                sub.fast = None
                self.spawn(self._demote_locked(sub))
                continue
            if seq < sub.fast_seq or sub.fast is None:
                continue  # a newer read was sent meanwhile (a snapshot), or it left the fast path
            sub.fast_seq = seq
            if kind == "snapshot":
                sub.last = None
            self._deliver(sub, result, kind, seq=seq)

    def _replan(self) -> None:
        """After a schema change: re-plan each fast view (its config was rewritten); mark the ones lost."""
        for sub in self._fast():
            sub.fast = self._plan(sub) if sub.closing is None else None
            if sub.fast is None:
                sub.demoted = True
        self._fast_dirty = True
        self._fast_kind = "snapshot"  # with the rewritten config (renamed columns followed)

    async def _demote(self, sub: Subscription) -> None:
        """Serve ``sub`` with Perspective from now on: a Perspective snapshot is its next message."""
        sub.fast, sub.demoted, sub.last = None, False, None
        await self._open_perspective(sub, None)
