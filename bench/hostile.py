"""The hostile soak: every attack replay of ``tests/test_hostile*.py``, round after round.

The tests replay each attack once against a real server under ``RLIMIT_AS``
while a healthy client works in another room (tests/hostile.py has the
harness and the bounds). This soak runs them again and again for a while, so
that what one round leaves behind (memory not returned, a worker not
replaced, a queue not drained) shows up in the next ones, and writes
``bench/results/hostile.md``: per attack, the rounds it passed, the healthy
client's worst ping and op p99, the worst RSS growth during the attack and
the RSS above its level before at the first reading back under the bound
(sampled every 0.1 s; the reading at 10 s if it never got there).

Run on demand (not in CI)::

    .venv/bin/python -m bench.hostile --minutes 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

__all__ = ["main"]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "results" / "hostile.md"


def _round(log: Path) -> tuple[int, float]:
    """One round of every hostile replay; returns (pytest's exit code, seconds)."""
    env = {**os.environ, "COFRAME_HOSTILE_LOG": str(log)}
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_hostile*.py"))
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    return done.returncode, time.monotonic() - t0


def _summary(rows: list[dict[str, object]], rounds: list[tuple[int, float]], minutes: float) -> str:
    by: dict[str, list[dict[str, object]]] = defaultdict(list)
    for r in rows:
        by[str(r["name"])].append(r)
    failed = sum(1 for code, _ in rounds if code)
    lines = [
        "# Hostile soak",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {platform.machine()},"
        f" {os.cpu_count()} cores; Python {platform.python_version()}",
        f"- {len(rounds)} round(s) of every `tests/test_hostile*.py` replay in {minutes:.1f} min;"
        f" rounds with a failed test: {failed}",
        "- Bounds (tests/hostile.py): healthy ping and op p99 < 250 ms; RSS growth during the attack"
        " <= 500 MB; RSS back within 100 MB of before, 10 s after the attacker left.",
        "",
        "| attack | replays | healthy ping p99, worst ms | op p99, worst ms | RSS growth, worst MB"
        " | RSS above before when back under the bound (or at 10 s), worst MB | healthy-client errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rs in sorted(by.items()):
        keys = ("ping_p99_ms", "op_p99_ms", "rss_growth_mb", "rss_after_mb")
        worst = {k: max(float(r[k]) for r in rs) for k in keys}  # type: ignore[arg-type]
        errors = sum(len(r["errors"]) for r in rs)  # type: ignore[arg-type]
        lines.append(
            f"| {name} | {len(rs)} | {worst['ping_p99_ms']:.1f} | {worst['op_p99_ms']:.1f}"
            f" | {worst['rss_growth_mb']:.0f} | {worst['rss_after_mb']:.0f} | {errors} |"
        )
    per_round = ", ".join(f"{c} ({s:.0f} s)" for c, s in rounds)
    lines += ["", f"Per round (pytest exit code, seconds): {per_round}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep replaying (default 10)")
    parser.add_argument("--rounds", type=int, default=0, help="stop after this many rounds (0: by time)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "reports.jsonl"
        log.touch()
        rounds: list[tuple[int, float]] = []
        deadline = time.monotonic() + 60 * args.minutes
        while time.monotonic() < deadline and not (args.rounds and len(rounds) >= args.rounds):
            rounds.append(_round(log))
            print(f"round {len(rounds)}: exit {rounds[-1][0]}, {rounds[-1][1]:.0f} s", flush=True)
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(_summary(rows, rounds, sum(sec for _, sec in rounds) / 60), encoding="utf-8")
    print(f"wrote {OUT}")
    return 1 if any(code for code, _ in rounds) else 0


if __name__ == "__main__":
    raise SystemExit(main())
