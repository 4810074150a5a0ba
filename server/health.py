"""What ``/healthz`` and ``/readyz`` report (README "HTTP API", docs/architecture.md "Health").

- **Event-loop lag**: :class:`LagMonitor`, a small task, sleeps ``interval``
  seconds at a time and records how late it wakes. The lag reported is the
  largest of the recent samples and of how overdue the monitor is now (a loop
  blocked right now makes the probe itself late, and the monitor overdue).
- **Stuck workers**: threads of a :class:`~server.workers.TrackedExecutor`
  (the loop's default executor, the SQLite thread, the chunk pool) busy with
  one piece of work for longer than ``worker_stuck_after``.
- **Shutting down**: set on SIGTERM (:mod:`server.serve`); ``/readyz`` then
  answers 503 so that a load balancer stops sending clients.

``/healthz`` is liveness: 503 when the lag is over ``health_max_lag`` or a
worker is stuck. It never touches storage. ``/readyz`` is readiness: 200
only when a cheap catalog query answers and the server is not shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from .settings import Settings
from .workers import Busy, TrackedExecutor, busy_workers

__all__ = ["Health", "LagMonitor"]


class LagMonitor:
    """Measures the event loop's lag with one task that wakes every ``interval`` seconds."""

    def __init__(self, interval: float = 0.1, window: float = 2.0) -> None:
        self.interval = interval
        self._samples: deque[tuple[float, float]] = deque()  # (when, lag)
        self._window = window
        self._due: float | None = None  # when the monitor should wake next
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="coframe:loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._due = None

    async def _run(self) -> None:
        while True:
            self._due = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)  # the period of the measurement, not a wait for an event
            now = time.monotonic()
            self._samples.append((now, max(0.0, now - self._due)))
            while self._samples and self._samples[0][0] < now - self._window:
                self._samples.popleft()

    def lag(self) -> float:
        """Seconds the loop is behind: the worst recent sample, or how overdue the monitor is now."""
        now = time.monotonic()
        worst = max((lag for when, lag in self._samples if when >= now - self._window), default=0.0)
        overdue = 0.0 if self._due is None else max(0.0, now - self._due)
        return max(worst, overdue)


class Health:
    """The server's liveness and readiness, from its loop, workers and shutdown state."""

    def __init__(self, settings: Settings) -> None:
        self.max_lag = settings.health_max_lag
        self.stuck_after = settings.worker_stuck_after
        self.monitor = LagMonitor()
        self.shutting_down = False
        self.executor: TrackedExecutor | None = None  # the loop's default executor, once installed
        self._previous: Any = None

    # ------------------------------------------------------------ lifespan

    async def start(self) -> None:
        """Install a tracked default executor on the running loop and start the lag monitor."""
        loop = asyncio.get_running_loop()
        self.executor = TrackedExecutor(thread_name_prefix="coframe-worker")
        loop.set_default_executor(self.executor)
        self.monitor.start()

    async def stop(self) -> None:
        """Stop the monitor; abandon the default executor (never wait on a stuck worker).

        The loop gets a fresh, empty default executor, so whatever still runs
        on this loop (and ``asyncio.run``'s final shutdown) does not wait on
        the old one's threads either.
        """
        await self.monitor.stop()
        if self.executor is not None:
            self.executor.abandon()
            with contextlib.suppress(RuntimeError):  # the loop is closing
                asyncio.get_running_loop().set_default_executor(
                    TrackedExecutor(thread_name_prefix="coframe-worker")
                )
            self.executor = None

    # ------------------------------------------------------------ checks

    def stuck(self) -> list[Busy]:
        """Tracked threads busy with one piece of work for longer than ``worker_stuck_after``."""
        return [b for b in busy_workers() if b.seconds > self.stuck_after]

    def live(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``: (healthy, report)."""
        lag = self.monitor.lag()
        busy = busy_workers()
        stuck = [b for b in busy if b.seconds > self.stuck_after]
        problems = []
        if lag > self.max_lag:
            problems.append(f"event loop {lag:.3f}s behind (limit {self.max_lag:g}s)")
        if stuck:
            problems.append(f"{len(stuck)} worker(s) busy for over {self.stuck_after:g}s")
        report: dict[str, Any] = {
            "status": "unhealthy" if problems else "ok",
            "loop_lag_s": round(lag, 4),
            "workers_busy": len(busy),
            "workers_stuck": [b.to_json() for b in stuck],
            "shutting_down": self.shutting_down,
        }
        if problems:
            report["problems"] = problems
        return not problems, report
