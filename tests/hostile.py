"""The harness of the hostile tests (issue 10): a real server, an attacker, a healthy client.

``tests/test_hostile*.py`` replay attacks against a ``coframe serve``
subprocess that runs under an address-space limit (``RLIMIT_AS``), so that a
regression fails the test instead of the kernel killing CI. While an attack
runs, a healthy client in another room pings and edits in a closed loop; the
report says what that client saw and how the server's memory moved.

For each attack a test checks (:meth:`Report.check`):

- the healthy client's ping and op p99 stay under 250 ms;
- the server's RSS grows by at most 500 MB during the attack, and is back
  within 100 MB of its level before, 10 s after the attacker has gone;
- the attacked room's state is unchanged (a fresh joiner's frame equals the
  frame before the attack), when the test names the room.

The attacker's own outcome (its error code, or its close code) is the test's
to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from client import connect
from tests.procs import ServerProcess, start_server

__all__ = ["HostileServer", "Report", "hostile_server", "under_attack", "rss_bytes", "HEALTHY", "MB"]

MB = 1024 * 1024
AS_LIMIT = 6 * 1024 * MB  # the server's address space (RLIMIT_AS)
HEALTHY = "healthy"  # the healthy client's dataset
P99_LIMIT = 0.250
GROWTH_LIMIT = 500 * MB
RETURN_LIMIT = 100 * MB
RETURN_WITHIN = 10.0
TRIMMED = r"returned freed memory to the system"  # the server's log line after each trim


def _record(report: Report) -> None:
    """Append the report to ``$COFRAME_HOSTILE_LOG`` (JSON lines) when set: ``bench/hostile.py`` reads it."""
    path = os.environ.get("COFRAME_HOSTILE_LOG")
    if not path:
        return
    row = {
        "name": report.name,
        "ping_p99_ms": 1e3 * report.p99(report.ping_s),
        "op_p99_ms": 1e3 * report.p99(report.op_s),
        "round_trips": len(report.op_s),
        "rss_before_mb": report.rss_before / MB,
        "rss_growth_mb": (report.rss_peak - report.rss_before) / MB,
        "rss_after_mb": (report.rss_after - report.rss_before) / MB,
        "returned_after_s": report.returned_after_s,
        "errors": report.errors,
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (all threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class HostileServer:
    proc: ServerProcess
    data_dir: Path

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def http(self) -> str:
        return self.proc.http

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)


def _limit_address_space() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


@contextlib.asynccontextmanager
async def hostile_server(tmp_path: Path, *args: str) -> AsyncIterator[HostileServer]:
    """``coframe serve`` on a fresh data directory under ``RLIMIT_AS``, with the demo
    ``sales`` (20,000 rows) and a small ``healthy`` dataset for the healthy client."""
    healthy = tmp_path / "healthy.parquet"
    pl.DataFrame({"n": list(range(1000)), "s": [f"r{i}" for i in range(1000)]}).write_parquet(healthy)
    data = tmp_path / "data"
    proc = await start_server(
        "--demo-rows", "20000", "--dataset", f"{HEALTHY}={healthy}", *args,
        data_dir=data, preexec_fn=_limit_address_space,
    )  # fmt: skip
    try:
        yield HostileServer(proc, data)
    finally:
        await proc.stop()


@dataclass
class Report:
    """What the healthy client and the server's memory did during one attack."""

    name: str
    ping_s: list[float] = field(default_factory=list)
    op_s: list[float] = field(default_factory=list)
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0  # the first reading back within the limit, or the last one
    returned_after_s: float | None = None  # seconds after the attack until RSS was back
    frame_before: pl.DataFrame | None = None
    frame_after: pl.DataFrame | None = None
    errors: list[str] = field(default_factory=list)

    @staticmethod
    def p99(xs: list[float]) -> float:
        if not xs:
            return float("inf")
        ordered = sorted(xs)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def check(self) -> None:
        """Assert every bound of the hostile tests (module docstring)."""
        assert not self.errors, f"{self.name}: the healthy client failed: {self.errors}"
        assert self.ping_s and self.op_s, f"{self.name}: the healthy client made no round trip"
        ping, op = self.p99(self.ping_s), self.p99(self.op_s)
        assert ping < P99_LIMIT and op < P99_LIMIT, f"{self.name}: healthy p99 ping {ping:.3f}s, op {op:.3f}s"
        growth = self.rss_peak - self.rss_before
        assert growth <= GROWTH_LIMIT, f"{self.name}: RSS grew by {growth / MB:.0f} MB during the attack"
        back = self.rss_after - self.rss_before
        assert back <= RETURN_LIMIT, (
            f"{self.name}: RSS still {back / MB:.0f} MB above its level before, {RETURN_WITHIN:g}s after"
        )
        if self.frame_before is not None:
            assert self.frame_after is not None and self.frame_after.equals(self.frame_before), (
                f"{self.name}: the attacked room's state changed"
            )


async def _frame(url: str, dataset: str) -> pl.DataFrame:
    async with connect(url, dataset) as room:
        return room.frame


async def _healthy(url: str, report: Report, stop: asyncio.Event, working: asyncio.Event) -> None:
    """Ping and edit in a closed loop until ``stop``; ``working`` is set once it has joined."""
    try:
        async with connect(url, HEALTHY) as room:
            working.set()
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                await room.ping()
                t1 = time.perf_counter()
                await room.set_cells([i % 1000], "n", i)
                t2 = time.perf_counter()
                report.ping_s.append(t1 - t0)
                report.op_s.append(t2 - t1)
                i += 1
    except Exception as e:  # reported, and check() fails on it
        report.errors.append(f"{type(e).__name__}: {e}")
    finally:
        working.set()


async def _sample_rss(server: HostileServer, report: Report, stop: asyncio.Event) -> None:
    while not stop.is_set():
        report.rss_peak = max(report.rss_peak, server.rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)  # a sampling period, not a wait for an event


async def _memory_returned(server: HostileServer, report: Report) -> None:
    """Read RSS now, and after each of the server's trims until it is back within the bound.

    The server returns freed memory to the system (``malloc_trim``) a moment
    after connections close and logs it: each reading waits for that line,
    so nothing here waits on a clock, and RETURN_WITHIN bounds the whole.
    """
    gone = time.monotonic()
    seen = len(server.proc.log)
    report.rss_after = server.rss()
    while report.rss_after - report.rss_before > RETURN_LIMIT:
        left = RETURN_WITHIN - (time.monotonic() - gone)
        if left <= 0:
            return
        try:
            await server.proc.wait_log(TRIMMED, within=left, since=seen)
        except TimeoutError:
            report.rss_after = server.rss()
            return
        seen = len(server.proc.log)
        report.rss_after = server.rss()
    report.returned_after_s = time.monotonic() - gone


async def under_attack(
    server: HostileServer,
    name: str,
    attack: Callable[[], Awaitable[object]],
    *,
    room: str | None = None,
    limit: float = 120.0,
) -> Report:
    """Run ``attack`` while the healthy client works; measure (see :meth:`Report.check`).

    The attack starts once the healthy client has joined (so caps on
    connections cannot keep it out). ``attack`` must return once the
    attacker has gone (its sockets closed).
    With ``room``, that room's frame is compared before and after.
    """
    report = Report(name)
    if room is not None:
        report.frame_before = await _frame(server.url, room)
    report.rss_before = report.rss_peak = server.rss()
    stop, working = asyncio.Event(), asyncio.Event()
    healthy = asyncio.create_task(_healthy(server.url, report, stop, working))
    sampler = asyncio.create_task(_sample_rss(server, report, stop))
    try:
        async with asyncio.timeout(limit):
            await working.wait()  # a quick attack could otherwise end before the healthy client joined
            await attack()
    finally:
        stop.set()
        await asyncio.gather(healthy, sampler)
    await _memory_returned(server, report)
    if room is not None:
        report.frame_after = await _frame(server.url, room)
    _record(report)
    return report
