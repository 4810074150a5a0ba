"""Worker threads whose work the server can see: :class:`TrackedExecutor`.

Everything the server runs off the event loop goes through a
``ThreadPoolExecutor``: the loop's default one (``asyncio.to_thread``:
heavy ops, welcome encodings, diffs, Perspective), the SQLite thread and the
chunk pool. A :class:`TrackedExecutor` records, for each of its threads, what
it runs and since when, so ``/healthz`` can name a worker that has been busy
longer than ``worker_stuck_after`` (:mod:`server.health`), and shutdown can
abandon it instead of waiting for it (:func:`abandon_all`).
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["TrackedExecutor", "Busy", "busy_workers", "abandon_all"]

_EXECUTORS: weakref.WeakSet[TrackedExecutor] = weakref.WeakSet()


@dataclass(frozen=True, slots=True)
class Busy:
    """One thread running one piece of work."""

    thread: str
    work: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"thread": self.thread, "work": self.work, "busy_s": round(self.seconds, 3)}


def _describe(fn: Callable[..., Any]) -> str:
    """A readable name for submitted work (``asyncio.to_thread`` wraps it in a partial of Context.run)."""
    while isinstance(fn, functools.partial):
        inner = fn.func
        if getattr(inner, "__name__", "") == "run" and fn.args and callable(fn.args[0]):
            fn = fn.args[0]  # contextvars.Context.run(func, ...)
        else:
            fn = inner
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


class TrackedExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` that knows what each of its threads runs, and since when."""

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._busy: dict[int, tuple[str, str, float]] = {}  # thread id -> (thread, work, since)
        _EXECUTORS.add(self)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(self._run, fn, args, kwargs)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        me = threading.current_thread()
        self._busy[me.ident or 0] = (me.name, _describe(fn), time.monotonic())
        try:
            return fn(*args, **kwargs)
        finally:
            self._busy.pop(me.ident or 0, None)

    def busy(self, now: float | None = None) -> list[Busy]:
        """The threads running work now, longest first."""
        now = time.monotonic() if now is None else now
        running = dict(self._busy)  # one copy under the GIL: workers add and remove entries
        out = [Busy(thread, work, now - since) for thread, work, since in running.values()]
        return sorted(out, key=lambda b: -b.seconds)

    def abandon(self) -> None:
        """Stop taking work and cancel what waits, without waiting for running work."""
        self.shutdown(wait=False, cancel_futures=True)


def busy_workers(now: float | None = None) -> list[Busy]:
    """Every tracked thread of the process that runs work now, longest first."""
    now = time.monotonic() if now is None else now
    out = [b for ex in list(_EXECUTORS) for b in ex.busy(now)]
    return sorted(out, key=lambda b: -b.seconds)


def abandon_all() -> None:
    """Shutdown: every tracked executor stops taking work; none is waited for."""
    for ex in list(_EXECUTORS):
        ex.abandon()
