"""Render ``bench/RESULTS.md`` from the benchmark results."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass, field

import psutil

from .common import median
from .fanout import FanoutResult, SystemResult
from .profiling import Profile
from .sustained import SustainedResult

__all__ = ["Machine", "Verdict", "Report", "machine_info", "render", "fanout_verdicts", "sustained_verdicts"]

PACKAGES = (
    "polars",
    "pyarrow",
    "uvicorn",
    "websockets",
    "starlette",
    "msgpack",
    "numpy",
    "pycrdt",
    "pycrdt-websocket",
    "py-spy",
    "psutil",
)
BASELINE = "websockets.broadcast"
PYCRDT = "pycrdt-websocket"
TARGET_P99_RATIO = 1.5
TARGET_CPU_US = 10.0
TARGET_CELLS = 200_000.0
TARGET_MSGS = 10_000.0


@dataclass(frozen=True, slots=True)
class Machine:
    date: str
    cpu: str
    cores: int
    ram_gib: float
    python: str
    packages: dict[str, str]


@dataclass(slots=True)
class Verdict:
    """One target: what was measured against what, and whether it was met."""

    what: str
    measured: str
    baseline: str
    ratio: str
    target: str
    met: bool

    @property
    def status(self) -> str:
        return "MET" if self.met else "**MISSED**"


@dataclass(slots=True)
class Report:
    machine: Machine
    command: str
    quick: bool
    fanout: FanoutResult | None = None
    sustained: SustainedResult | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> Machine:
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = "not installed"
    return Machine(
        date=dt.datetime.now(dt.UTC).strftime("%a %b %d %H:%M:%S UTC %Y"),
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        ram_gib=psutil.virtual_memory().total / 2**30,
        python=sys.version.split()[0],
        packages=versions,
    )


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _n(x: float) -> str:
    return f"{x:,.0f}"


# ---------------------------------------------------------------- verdicts


def fanout_verdicts(r: FanoutResult) -> list[Verdict]:
    cf, bl = r.systems["coframe"], r.systems[BASELINE]
    out = []
    n = r.config.cpu_readers
    if n in cf.p99_ms and n in bl.p99_ms:
        c, b = cf.p99_ms[n].median, bl.p99_ms[n].median
        out.append(
            Verdict(
                f"fan-out p99 latency, 1 writer → {n} readers",
                f"{_f(c)} ms",
                f"{_f(b)} ms",
                f"{_f(c / b)}×",
                f"≤ {TARGET_P99_RATIO}× baseline",
                c <= TARGET_P99_RATIO * b,
            )
        )
    if cf.cpu_us.n and bl.cpu_us.n:
        c, b = cf.cpu_us.median, bl.cpu_us.median
        out.append(
            Verdict(
                f"server CPU per delivered message (N={n})",
                f"{_f(c, 1)} µs",
                f"{_f(b, 1)} µs",
                f"{_f(c / b)}×",
                f"≤ {TARGET_CPU_US:g} µs",
                c <= TARGET_CPU_US,
            )
        )
    return out


def sustained_verdicts(r: SustainedResult) -> list[Verdict]:
    w = r.workloads
    out = []
    if "coframe batched" in w:
        c, e = w["coframe batched"].cells_per_s.median, w["echo batched"].cells_per_s.median
        out.append(
            Verdict(
                f"sustained batched edits ({r.config.batch_cells}-cell sets, 1M rows)",
                f"{_n(c)} cells/s",
                f"echo {_n(e)} cells/s; Polars scatter {_n(r.scatter_cells_per_s)} cells/s",
                f"{_f(c / e, 3)}× echo; {_f(c / r.scatter_cells_per_s, 3)}× scatter",
                f"≥ {_n(TARGET_CELLS)} cells/s",
                c >= TARGET_CELLS,
            )
        )
    if "coframe single-op" in w:
        c, e = w["coframe single-op"].msgs_per_s.median, w["echo single-op"].msgs_per_s.median
        out.append(
            Verdict(
                "sustained single-op messages (1-cell sets, 1M rows)",
                f"{_n(c)} msgs/s",
                f"echo {_n(e)} msgs/s",
                f"{_f(c / e, 3)}× echo",
                f"≥ {_n(TARGET_MSGS)} msgs/s",
                c >= TARGET_MSGS,
            )
        )
    return out


# ---------------------------------------------------------------- rendering


def _fanout_md(r: FanoutResult) -> str:
    cfg = r.config
    cf, bl = r.systems["coframe"], r.systems[BASELINE]
    py = r.systems.get(PYCRDT)
    lines = [
        "## 1. Fan-out latency (1 writer → N readers, 1-cell `set`)",
        "",
        f"Demo room of {cfg.rows:,} rows. Closed loop: one edit in flight, the next sent as soon as the"
        " last reader has the previous delta and the writer has its ack. Latency = writer's send →"
        " the LAST reader has received and msgpack-decoded the delta envelope with that seq."
        f" {cfg.edits} timed edits per run after {cfg.warmup} warm-up edits; each figure is the median"
        f" over {cfg.runs} runs of that run's percentile. Baseline: raw `websockets.broadcast` server"
        f" relaying a delta-shaped msgpack map of the same size as coframe's delta ({r.delta_bytes}"
        " bytes) to the same peers (the writer included, plus an ack); systems interleaved run by run.",
        "",
        "| N readers | coframe p50 ms | coframe p99 ms | baseline p50 ms | baseline p99 ms"
        " | p99 ratio | edits/s coframe / baseline | target | status | runs |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for n in cfg.readers:
        if n not in cf.p99_ms:
            continue
        ratio = cf.p99_ms[n].median / bl.p99_ms[n].median
        target, status = "—", "—"
        if n == cfg.cpu_readers:
            target = f"p99 ≤ {TARGET_P99_RATIO}× baseline"
            status = "MET" if ratio <= TARGET_P99_RATIO else "**MISSED**"
        lines.append(
            f"| {n} | {_f(cf.p50_ms[n].median)} | {_f(cf.p99_ms[n].median)} | {_f(bl.p50_ms[n].median)}"
            f" | {_f(bl.p99_ms[n].median)} | {_f(ratio)}× | {_n(cf.rate[n].median)} / {_n(bl.rate[n].median)}"
            f" | {target} | {status} | {cf.p99_ms[n].n} |"
        )
    lines.append("")

    def per_run(s: SystemResult) -> str:
        return "; ".join(f"N={n}: {', '.join(_f(x) for x in s.p99_ms[n].runs)}" for n in s.p99_ms)

    lines.append(f"Per-run p99 (ms), coframe: {per_run(cf)}. Baseline: {per_run(bl)}.")
    n = cfg.cpu_readers
    if n in cf.p99_ms and n in bl.p99_ms:
        pairs = [c / b for c, b in zip(cf.p99_ms[n].runs, bl.p99_ms[n].runs, strict=False) if b > 0]
        if pairs:
            lines.append(
                f"Per-run p99 ratios at N={n} (coframe and baseline measured back to back in each run):"
                f" {', '.join(f'{x:.2f}×' for x in pairs)}; median {_f(median(pairs))}×."
            )
    if py is not None and py.p99_ms:
        lines += [
            "",
            "Optional second reference, pycrdt-websocket (DESIGN.md's other reference), same peers and"
            f" method; each edit is a 1-key `Y.Map` update ({r.yjs_update_bytes} bytes as broadcast),"
            " and readers read the y-protocol type bytes instead of a msgpack map:",
            "",
            "| N readers | pycrdt-websocket p50 ms | pycrdt-websocket p99 ms | coframe p99 / pycrdt p99"
            " | runs |",
            "|---:|---:|---:|---:|---:|",
        ]
        for n in cfg.readers:
            if n in py.p99_ms and n in cf.p99_ms:
                lines.append(
                    f"| {n} | {_f(py.p50_ms[n].median)} | {_f(py.p99_ms[n].median)}"
                    f" | {_f(cf.p99_ms[n].median / py.p99_ms[n].median)}× | {py.p99_ms[n].n} |"
                )
    return "\n".join(lines) + "\n"


def _cpu_md(r: FanoutResult) -> str:
    cfg = r.config
    n = cfg.cpu_readers
    names = [k for k in ("coframe", BASELINE, PYCRDT) if k in r.systems and r.systems[k].cpu_us.n]
    if "coframe" not in names or BASELINE not in names:
        return ""
    cf, bl = r.systems["coframe"], r.systems[BASELINE]
    c, b = cf.cpu_us.median, bl.cpu_us.median
    status = "MET" if c <= TARGET_CPU_US else "**MISSED**"
    extra = [k for k in names if k not in ("coframe", BASELINE)]
    lines = [
        "## 3. Server CPU per delivered message",
        "",
        f"Server process CPU time (user+sys, all threads, from /proc/PID/task/*/schedstat) over the"
        f" timed edits of each N={n} fan-out run, divided by edits × {n} readers (the writer's own copy"
        " of the delta and its ack are not counted as deliveries, for any server). On loopback the"
        " sender's kernel time usually includes the receiving side's TCP work too, so the floor is"
        " higher than it would be across a network.",
        "",
        "| | coframe | websockets.broadcast | ratio | target | status | runs |"
        + "".join(f" {k} |" for k in extra),
        "|---|---:|---:|---:|---|---|---:|" + "---:|" * len(extra),
        f"| CPU µs per delivered message, N={n} | {_f(c, 1)} | {_f(b, 1)} | {_f(c / b)}×"
        f" | ≤ {TARGET_CPU_US:g} µs | {status} | {cf.cpu_us.n} |"
        + "".join(f" {_f(r.systems[k].cpu_us.median, 1)} |" for k in extra),
    ]
    if cf.sys_share.n and bl.sys_share.n:
        lines.append(
            f"| of which kernel (system) time | {cf.sys_share.median:.0%} | {bl.sys_share.median:.0%}"
            " | | | | |"
            + "".join(
                f" {r.systems[k].sys_share.median:.0%} |" if r.systems[k].sys_share.n else " |" for k in extra
            )
        )
    ns = [k for k in cfg.readers if k in cf.cpu_edit_us]
    lines += [
        "",
        "Where it goes: server CPU per edit at each N (median µs), and the marginal cost of one more"
        " reader, (CPU per edit at the largest N − at the smallest N) / (difference in N).",
        "",
        "| | " + " | ".join(f"N={k}" for k in ns) + " | marginal µs per reader |",
        "|---|" + "---:|" * (len(ns) + 1),
    ]
    for name in names:
        s = r.systems[name]
        have = [k for k in ns if k in s.cpu_edit_us]
        if len(have) >= 2:
            lo, hi = have[0], have[-1]
            marginal = (s.cpu_edit_us[hi].median - s.cpu_edit_us[lo].median) / (hi - lo)
            cells = " | ".join(_f(s.cpu_edit_us[k].median, 0) for k in have)
            lines.append(f"| {name}, µs per edit | {cells} | {_f(marginal, 1)} |")
    return "\n".join(lines) + "\n"


def _sustained_md(r: SustainedResult) -> str:
    cfg = r.config
    w = r.workloads
    lines = [
        "## 2. Sustained edits into one 1M-row room",
        "",
        f"`--demo-rows {cfg.rows}`. {cfg.bots} bots (raw protocol peers), each keeping {cfg.window} unacked"
        f" `op` messages in flight; column `price`, float values. {cfg.warmup:g} s warm-up, then acks"
        f" counted over {cfg.measure:g} s, then the window drains; median over {cfg.runs} runs."
        " Rids are drawn at random for every message (independently, so a few cells are concurrent"
        " overwrites of another bot's in-flight write and are reported in the ack), except in the"
        " *disjoint* row, where messages walk one random permutation of all rows (no overlap)."
        " Baselines: the raw `websockets` echo server with the same bots and messages (acks only: the"
        " floor of this load generator plus the transport), and Polars clone + `Series.scatter` of"
        f" {cfg.scatter_cells:,} random cells into a 1M-row Float64 column in-process"
        f" ({_f(r.scatter_us_per_cell.median, 3)} µs/cell → {_n(r.scatter_cells_per_s)} cells/s).",
        "",
        "| workload | coframe | echo baseline | ratio to echo | ratio to Polars scatter | target | status"
        " | runs |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    rows = [
        ("coframe batched", "echo batched", "cells", TARGET_CELLS),
        ("coframe single-op", "echo single-op", "msgs", TARGET_MSGS),
        ("coframe batched, disjoint rids", "echo batched", "cells", None),
    ]
    for name, base, unit, target in rows:
        if name not in w:
            continue
        stat = w[name].cells_per_s if unit == "cells" else w[name].msgs_per_s
        bstat = w[base].cells_per_s if unit == "cells" else w[base].msgs_per_s
        c, b = stat.median, bstat.median
        scatter = f"{_f(c / r.scatter_cells_per_s, 3)}×" if unit == "cells" else "—"
        if target is None:
            tgt, status = "(info)", "—"
        else:
            tgt = f"≥ {_n(target)} {unit}/s"
            status = "MET" if c >= target else "**MISSED**"
        lines.append(
            f"| {name.removeprefix('coframe ')} ({unit}/s) | {_n(c)} | {_n(b)} | {_f(c / b, 3)}× | {scatter}"
            f" | {tgt} | {status} | {stat.n} |"
        )
    lines += [
        "",
        "| workload | server CPU (cores) | deltas/s per bot | errors | per-run figures |",
        "|---|---:|---:|---|---|",
    ]
    for name, wl in w.items():
        runs = wl.cells_per_s.runs if "batched" in name else wl.msgs_per_s.runs
        errs = ", ".join(f"{k}: {v}" for k, v in wl.errors.items()) or "none"
        lines.append(
            f"| {name} | {_f(wl.cpu_util.median)} | {_f(wl.deltas_per_s.median, 1)} | {errs}"
            f" | {', '.join(_n(x) for x in runs)} |"
        )
    return "\n".join(lines) + "\n"


def render(rep: Report) -> str:
    m = rep.machine
    verdicts: list[Verdict] = []
    if rep.fanout is not None:
        verdicts += fanout_verdicts(rep.fanout)
    if rep.sustained is not None:
        verdicts += sustained_verdicts(rep.sustained)
    pk = ", ".join(f"{k} {v}" for k, v in m.packages.items())
    out = [
        "# coframe benchmark results",
        "",
        f"- Date: {m.date}",
        f"- Machine: {m.cpu}, {m.cores} cores, {m.ram_gib:.1f} GiB RAM; Python {m.python}",
        f"- Packages: {pk}",
        f"- Command: `{rep.command}`" + (" (quick smoke run: fewer, shorter runs)" if rep.quick else ""),
        "- Method: each server runs in its own subprocess on 127.0.0.1 (coframe via `coframe serve`,"
        " log level warning); the load generator runs in the benchmark process (one asyncio loop, lean"
        " sans-I/O WebSocket peers, the same code against coframe and the baselines). Figures are"
        " medians over runs; every target is also given as a ratio to a baseline measured in the"
        " same run. The machine is small and shared, so expect run-to-run noise (per-run figures"
        " are listed).",
        "",
        "## Summary",
        "",
        "| target | measured | baseline (same run) | ratio | target | status |",
        "|---|---:|---:|---:|---|---|",
    ]
    for v in verdicts:
        out.append(f"| {v.what} | {v.measured} | {v.baseline} | {v.ratio} | {v.target} | {v.status} |")
    out.append("")
    if rep.fanout is not None:
        out.append(_fanout_md(rep.fanout))
    if rep.sustained is not None:
        out.append(_sustained_md(rep.sustained))
    if rep.fanout is not None:
        out.append(_cpu_md(rep.fanout))
    if rep.profiles:
        out += [
            "## Profiles of the missed targets",
            "",
            "Each profile was taken under the same load right after the measured runs (py-spy,"
            " non-blocking). What they show, with in-process timings of the hot spots, is written up"
            " in `bench/README.md` (\"Findings\").",
            "",
        ]
        for p in rep.profiles.values():
            out.append(p.markdown())
    if rep.notes:
        out += ["## Findings", ""]
        out += [f"- {n}" for n in rep.notes]
        out.append("")
    return "\n".join(out).rstrip() + "\n"
