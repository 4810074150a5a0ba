"""py-spy profiles of a server process while a workload runs, and their top-N summaries.

Used when a target is missed (the brief: "do not hide it"). py-spy samples
the server at 100 Hz in non-blocking mode, first as collapsed stacks
(``--format raw``, for the text summary; speedscope and flamegraph.pl read
it too), then as a flamegraph SVG, each while the same workload runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .common import BENCH_DIR, PROFILE_DIR

__all__ = ["Profile", "py_spy_path", "profile_while", "summarize_raw"]

Workload = Callable[[asyncio.Event], Awaitable[object]]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


@dataclass(slots=True)
class Profile:
    """Where one profile was written, and its summary."""

    name: str
    raw: Path | None = None
    svg: Path | None = None
    samples: int = 0
    top_self: list[tuple[str, float]] = field(default_factory=list)  # "leaf ← coframe call site"
    top_total: list[tuple[str, float]] = field(default_factory=list)  # coframe functions, inclusive
    error: str | None = None

    def markdown(self, n: int = 10) -> str:
        """The summary as Markdown for RESULTS.md."""
        if self.error:
            return f"Profile `{self.name}`: not taken ({self.error}).\n"
        rel = [p.relative_to(BENCH_DIR.parent).as_posix() for p in (self.raw, self.svg) if p is not None]
        lines = [
            f"Profile `{self.name}`: {self.samples} samples of the server's non-idle threads (100 Hz);"
            f" files {', '.join(f'`{r}`' for r in rel)} (collapsed stacks and flamegraph).",
            "",
            "| # | self % | leaf function ← deepest coframe frame | inclusive % | coframe function |",
            "|---|---:|---|---:|---|",
        ]
        for i in range(min(n, max(len(self.top_self), len(self.top_total)))):
            s = self.top_self[i] if i < len(self.top_self) else ("", 0.0)
            t = self.top_total[i] if i < len(self.top_total) else ("", 0.0)
            lines.append(f"| {i + 1} | {s[1]:.1f} | `{s[0]}` | {t[1]:.1f} | `{t[0]}` |")
        return "\n".join(lines) + "\n"


def py_spy_path() -> str | None:
    """The py-spy executable beside this Python, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


_PROJECT = ("server/", "protocol/", "client/")
_ROOTS = {"server/cli.py"}  # the event loop's root frame: in every stack, says nothing


def _parse(frame: str) -> tuple[str, str, str]:
    """(function, file, line) of one py-spy frame ``func (file:line)``."""
    m = _FRAME.match(frame)
    if not m:
        return frame, "", ""
    return m.group("func"), m.group("file"), m.group("line") or ""


def summarize_raw(text: str, n: int = 10) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """Parse py-spy's collapsed stacks; return (samples, top self %, top inclusive %).

    *Self* is keyed by the leaf function plus the deepest coframe frame above
    it (file:line), which says which line of coframe spent the time.
    *Inclusive* counts coframe functions only (frames under ``server/``,
    ``protocol/``, ``client/``), since the event loop frames are in every stack.
    """
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [_parse(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += c
        leaf = f"{frames[-1][0]} ({frames[-1][1]})"
        site = next((f for f in reversed(frames) if f[1].startswith(_PROJECT)), None)
        key = leaf if site is None or site == frames[-1] else f"{leaf} ← {site[1]}:{site[2]}"
        self_c[key] += c
        for fn in {f"{f[0]} ({f[1]})" for f in frames if f[1].startswith(_PROJECT) and f[1] not in _ROOTS}:
            total_c[fn] += c
    if samples == 0:
        return 0, [], []

    def top(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, 100.0 * v / samples) for k, v in c.most_common(n)]

    return samples, top(self_c), top(total_c)


async def _record(exe: str, pid: int, out: Path, fmt: str, duration: int, workload: Workload) -> str:
    """Run py-spy for ``duration`` s while ``workload`` runs; return py-spy's output."""
    proc = await asyncio.create_subprocess_exec(
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(duration),
        "--rate",
        "100",
        "--nonblocking",
        "--format",
        fmt,
        "-o",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(workload(stop))
    try:
        async with asyncio.timeout(duration + 60):
            output, _ = await proc.communicate()
    finally:
        stop.set()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(task, 30)
    return output.decode(errors="replace")


async def profile_while(name: str, pid: int, workload: Workload, duration: int = 8) -> Profile:
    """Profile ``pid`` while ``workload(stop)`` runs (it must return soon after ``stop`` is set)."""
    prof = Profile(name)
    exe = py_spy_path()
    if exe is None:
        prof.error = "py-spy is not installed (pip install -e '.[bench]')"
        return prof
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    raw = PROFILE_DIR / f"{name}.txt"
    svg = PROFILE_DIR / f"{name}.svg"
    out = await _record(exe, pid, raw, "raw", duration, workload)
    if not raw.exists():
        prof.error = f"py-spy failed: {out.strip()[-300:]}"
        return prof
    prof.raw = raw
    prof.samples, prof.top_self, prof.top_total = summarize_raw(raw.read_text())
    await _record(exe, pid, svg, "flamegraph", duration, workload)
    if svg.exists():
        prof.svg = svg
    return prof
