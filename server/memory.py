"""Returning freed memory to the system after clients leave (glibc ``malloc_trim``).

A burst of joins makes big short-lived buffers (welcome snapshots, their
frames in each socket's buffer). Once those clients have gone, Python and
Arrow have freed them, but glibc keeps most of the freed pages in its heaps,
so the server's RSS stays high (4 GB after 200 joiners of a 200k-row room
left, here). ``malloc_trim(0)`` gives those pages back (the same server went
back to its level before the joins).

:class:`Trimmer` runs it after connections close: once, ``delay`` seconds
after the last close of a burst, and at most once every ``every`` seconds,
in a thread of its own (the call releases the GIL). It does nothing where
the C library is not glibc.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import resource
import threading
import time
from collections.abc import Callable

__all__ = ["Trimmer", "malloc_trim", "limit_address_space"]

log = logging.getLogger("coframe.memory")


def _glibc_trim() -> Callable[[], object] | None:
    """``malloc_trim(0)`` of the process's C library, or None when that is not glibc."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (ValueError, OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


malloc_trim = _glibc_trim()
"""``malloc_trim(0)`` on glibc (returns freed heap pages to the system); None elsewhere."""


class Trimmer:
    """Runs ``trim`` after a burst of closes: ``delay`` s after the last one, at most every ``every`` s."""

    def __init__(
        self,
        trim: Callable[[], object] | None = malloc_trim,
        *,
        delay: float = 1.0,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trim = trim
        self.delay = delay
        self.every = every
        self._clock = clock
        self._last = -float("inf")  # when the last trim started
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        self.trims = 0

    def soon(self) -> None:
        """A connection closed: trim once the burst is over (needs a running loop)."""
        if self._trim is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        now = self._clock()
        wait = max(self.delay, self._last + self.every - now)
        self._timer = asyncio.get_running_loop().call_later(wait, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._running:  # the previous trim still runs: try again later
            self.soon()
            return
        self._running = True
        self._last = self._clock()
        threading.Thread(target=self._run, name="coframe-malloc-trim", daemon=True).start()

    def _run(self) -> None:
        assert self._trim is not None
        started = time.perf_counter()
        try:
            self._trim()
        finally:
            self._running = False
        self.trims += 1
        log.info("returned freed memory to the system (malloc_trim, %.3fs)", time.perf_counter() - started)

    def close(self) -> None:
        """Cancel a pending trim (the server is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _address_space() -> int:
    """This process's address space in bytes (0 where /proc is not available)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def limit_address_space(memory_bytes: int) -> None:
    """Limit this process's address space (``RLIMIT_AS``) to its size now plus ``memory_bytes``.

    For worker processes (expressions, views) after their start-up: an
    allocation over the limit fails, and the native library aborts the
    worker, not the server.
    """
    limit = _address_space() + memory_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
