"""Render ``bench/RESULTS.md`` from the benchmark results.

Each benchmark group (``fanout``, ``sustained``, ``storage``, ``views``, ``client``,
``policy``) renders its own section file, ``bench/results/<group>.md``: its summary rows, its sections,
its profiles and its findings, each part under an HTML comment marker.
``RESULTS.md`` is then assembled from every section file present, so a run of
one group (``--only storage``) replaces that group's figures and keeps the
others', each with the date and command it was measured by.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .common import BENCH_DIR, Stats, median
from .fanout import COFRAME_DURABLE, FanoutResult, SystemResult
from .policyfanout import PolicyResult
from .policyreport import policy_md, policy_verdicts
from .profiling import Profile
from .pyclient import ClientResult
from .storage import (
    TARGET_COMMIT_BYTES_SHARE,
    TARGET_COMMIT_MS,
    TARGET_JOIN_RATIO,
    TARGET_WAL_RATIO,
    StorageResult,
)
from .sustained import SustainedResult
from .targets import (
    TARGET_BATCHED_ECHO,
    TARGET_CPU_RATIO,
    TARGET_DURABLE_RATIO,
    TARGET_P99_RATIO,
    TARGET_SINGLE_ECHO,
    Verdict,
    client_md,
    client_verdicts,
    durable_fanout_md,
    fanout_verdicts,
    sustained_verdicts,
)
from .views import ViewsResult
from .viewsreport import views_sections, views_verdicts

__all__ = [
    "GROUPS",
    "RESULTS_DIR",
    "Machine",
    "Verdict",
    "Report",
    "Section",
    "machine_info",
    "render",
    "write_sections",
    "assemble",
    "fanout_verdicts",
    "sustained_verdicts",
    "storage_verdicts",
    "views_verdicts",
    "client_verdicts",
    "policy_verdicts",
]

GROUPS = ("fanout", "sustained", "storage", "views", "client", "policy")
RESULTS_DIR = BENCH_DIR / "results"

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
    "perspective-python",
)
BASELINE = "websockets.broadcast"
PYCRDT = "pycrdt-websocket"
TARGET_RECOVERY_RATE = 100_000.0  # WAL entries/s (issue 9)


@dataclass(frozen=True, slots=True)
class Machine:
    date: str
    cpu: str
    cores: int
    ram_gib: float
    python: str
    packages: dict[str, str]


@dataclass(slots=True)
class Report:
    """What one ``bench.run`` measured; ``profiles`` are keyed ``<group>...``."""

    machine: Machine
    command: str
    quick: bool
    fanout: FanoutResult | None = None
    sustained: SustainedResult | None = None
    storage: StorageResult | None = None
    views: ViewsResult | None = None
    client: ClientResult | None = None
    policy: PolicyResult | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)  # by group
    ran: list[str] = field(default_factory=list)  # groups this run attempted

    def note(self, group: str, text: str) -> None:
        self.notes.setdefault(group, []).append(text)


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


# ---------------------------------------------------------------- rendering


def _fanout_md(r: FanoutResult) -> str:
    cfg = r.config
    key = "coframe" if "coframe" in r.systems else COFRAME_DURABLE
    cf, bl = r.systems[key], r.systems[BASELINE]
    py = r.systems.get(PYCRDT)
    mode = "`--memory`" if key == "coframe" else "the default durable mode"
    lines = [
        "## 1. Fan-out latency (1 writer → N readers, 1-cell `set`)",
        "",
        f"coframe with {mode}; demo room of {cfg.rows:,} rows. Closed loop: one edit in flight, the next"
        " sent as soon as the last reader has the previous delta and the writer has its ack. Latency ="
        " writer's send → the LAST reader has received and msgpack-decoded the delta envelope with that seq."
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
            target = f"p99 ≤ {TARGET_P99_RATIO:g}× baseline"
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
            "Optional second reference, pycrdt-websocket (the other reference implementation), same peers and"
            f" method; each edit is a 1-key `Y.Map` update ({r.yjs_update_bytes} bytes as broadcast),"
            " and readers read the y-protocol type bytes instead of a msgpack map:",
            "",
            "| N readers | pycrdt-websocket p50 ms | pycrdt-websocket p99 ms | coframe p50 / pycrdt p50"
            " | coframe p99 / pycrdt p99 | target | status | runs |",
            "|---:|---:|---:|---:|---:|---|---|---:|",
        ]
        for n in cfg.readers:
            if n in py.p99_ms and n in cf.p99_ms:
                r50 = cf.p50_ms[n].median / py.p50_ms[n].median
                r99 = cf.p99_ms[n].median / py.p99_ms[n].median
                tgt, ok = "p99 < 1×", r99 < 1.0
                if n == 1:
                    tgt, ok = "p99 < 1×, p50 ≤ 1×", ok and r50 <= 1.0
                lines.append(
                    f"| {n} | {_f(py.p50_ms[n].median)} | {_f(py.p99_ms[n].median)} | {_f(r50)}×"
                    f" | {_f(r99)}× | {tgt} | {'MET' if ok else '**MISSED**'} | {py.p99_ms[n].n} |"
                )
        per_run = "; ".join(f"N={n}: {', '.join(_f(x) for x in py.p99_ms[n].runs)}" for n in py.p99_ms)
        lines += ["", f"Per-run p99 (ms), pycrdt-websocket: {per_run}."]
    return "\n".join(lines) + "\n"


def _cpu_md(r: FanoutResult) -> str:
    cfg = r.config
    n = cfg.cpu_readers
    names = [
        k for k in ("coframe", BASELINE, COFRAME_DURABLE, PYCRDT) if k in r.systems and r.systems[k].cpu_us.n
    ]
    if "coframe" not in names or BASELINE not in names:
        return ""
    cf, bl = r.systems["coframe"], r.systems[BASELINE]
    c, b = cf.cpu_us.median, bl.cpu_us.median
    status = "MET" if c <= TARGET_CPU_RATIO * b else "**MISSED**"
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
        f" | ≤ {TARGET_CPU_RATIO:g}× broadcast | {status} | {cf.cpu_us.n} |"
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
        "Each workload runs against coframe with `--memory` and in the default durable mode (a"
        " temporary `--data-dir`, SQLite catalog: a tick's batches are acked once their WAL entries are"
        " fsynced; autocommit defaults), interleaved with the echo baseline and rotated run by run.",
        "",
        "| workload | coframe | echo baseline | ratio to echo | ratio to Polars scatter | target | status"
        " | runs |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    rows = [
        ("coframe batched", "echo batched", "cells", TARGET_BATCHED_ECHO),
        ("coframe batched (durable)", "echo batched", "cells", TARGET_BATCHED_ECHO),
        ("coframe single-op", "echo single-op", "msgs", TARGET_SINGLE_ECHO),
        ("coframe single-op (durable)", "echo single-op", "msgs", TARGET_SINGLE_ECHO),
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
            tgt = f"≥ {target:g}× echo"
            status = "MET" if c >= target * b else "**MISSED**"
        lines.append(
            f"| {name.removeprefix('coframe ')} ({unit}/s) | {_n(c)} | {_n(b)} | {_f(c / b, 3)}× | {scatter}"
            f" | {tgt} | {status} | {stat.n} |"
        )
    for what, unit in (("batched", "cells"), ("single-op", "msgs")):
        mem, dur = w.get(f"coframe {what}"), w.get(f"coframe {what} (durable)")
        if mem is None or dur is None:
            continue
        m = mem.cells_per_s.median if unit == "cells" else mem.msgs_per_s.median
        d = dur.cells_per_s.median if unit == "cells" else dur.msgs_per_s.median
        lines.append(
            f"| {what}, durable vs `--memory` ({unit}/s) | {_n(d)} | `--memory` {_n(m)} | {_f(d / m)}×"
            f" | — | ≥ {TARGET_DURABLE_RATIO:g}× `--memory` | {_status(d >= TARGET_DURABLE_RATIO * m)}"
            f" | {dur.cells_per_s.n} |"
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


# ---------------------------------------------------------------- storage (issue 3)


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def storage_verdicts(r: StorageResult) -> list[Verdict]:
    out: list[Verdict] = []
    c = r.commit
    if c.parquet_bytes.n:
        full = c.parquet_bytes.median
        base = f"`write_parquet` {_n(full)} B, {_f(c.parquet_ms.median, 0)} ms"
        for label, b, t in (
            ("storage layer", c.layer_bytes, c.layer_ms),
            ("end to end", c.e2e_bytes, c.e2e_ms),
        ):
            if not b.n:
                continue
            share = b.median / full
            out.append(
                Verdict(
                    f"commit of a 1-cell change, {c.rows:,}×10: bytes written ({label})",
                    f"{_n(b.median)} B ({_pct(share)})",
                    base,
                    f"{_f(share, 3)}×",
                    f"≤ {TARGET_COMMIT_BYTES_SHARE:.0%} of the full Parquet bytes",
                    share <= TARGET_COMMIT_BYTES_SHARE,
                )
            )
            out.append(
                Verdict(
                    f"commit of a 1-cell change, {c.rows:,}×10: time ({label})",
                    f"{_f(t.median, 1)} ms",
                    base,
                    f"{_f(t.median / c.parquet_ms.median, 3)}×",
                    f"≤ {TARGET_COMMIT_MS:g} ms",
                    t.median <= TARGET_COMMIT_MS,
                )
            )
    j = r.join
    if j.warm_ms.n and j.read_parquet_ms.n:
        ratio = j.warm_ms.median / j.read_parquet_ms.median
        out.append(
            Verdict(
                f"new client joins a {j.rows:,}×10 room (room loaded; `connect()` → usable mirror)",
                f"{_n(j.warm_ms.median)} ms",
                f"`pl.read_parquet` {_f(j.read_parquet_ms.median, 0)} ms",
                f"{_f(ratio, 1)}×",
                f"≤ {TARGET_JOIN_RATIO:g}× the read",
                ratio <= TARGET_JOIN_RATIO,
            )
        )
    rc = r.recovery
    if rc.ops and rc.open_s.n:
        rate = rc.ops / rc.open_s.median
        whole = f"; restart → welcome {_f(rc.restart_s.median, 2)} s" if rc.restart_s.n else ""
        rec = f"; in-process `recover()` {_n(rc.ops / rc.recover_s.median)}/s" if rc.recover_s.n else ""
        out.append(
            Verdict(
                f"WAL recovery of {rc.ops:,} entries ({rc.rows:,}-row room): listening → first welcome",
                f"{_n(rate)} entries/s ({_f(rc.open_s.median, 2)} s)",
                f"(absolute){whole}{rec}",
                "-",
                f"≥ {_n(TARGET_RECOVERY_RATE)} entries/s",
                rate >= TARGET_RECOVERY_RATE,
            )
        )
    t = r.throughput.systems
    if "memory" in t and "sqlite" in t:
        off = t["memory"].msgs_per_s.median
        for name in ("sqlite", "postgresql"):
            if name not in t:
                continue
            on = t[name].msgs_per_s.median
            out.append(
                Verdict(
                    f"acked 1-cell op messages/s, WAL on ({_CATALOG[name]}) vs off,"
                    f" {r.throughput.rows:,} rows",
                    f"{_n(on)} msgs/s",
                    f"`--memory` {_n(off)} msgs/s",
                    f"{_f(on / off)}×",
                    f"≥ {TARGET_WAL_RATIO:g}× WAL off",
                    on >= TARGET_WAL_RATIO * off,
                )
            )
    return out


_CATALOG = {"memory": "`--memory`, no WAL", "sqlite": "SQLite catalog", "postgresql": "PostgreSQL catalog"}


def _runs(s: Stats, digits: int = 0, scale: float = 1.0) -> str:
    return ", ".join(f"{x * scale:,.{digits}f}" for x in s.runs) or "-"


def _status(met: bool) -> str:
    return "MET" if met else "**MISSED**"


def _storage_md(r: StorageResult) -> str:
    cfg = r.config
    lines = [
        "## Storage (issue 3)",
        "",
        "Servers are `coframe serve --port 0` subprocesses (ready at their `coframe listening on` line),"
        " each on a fresh temporary `--data-dir` (SQLite catalog unless said otherwise). Every figure is"
        " the median of the runs listed; each baseline is measured in the same run. Demo dataset"
        " `sales` (10 columns: int64, date, 2 strings, int32, float64, float32, bool, string, datetime).",
        "",
    ]
    c = r.commit
    if c.parquet_bytes.n:
        full = c.parquet_bytes.median
        lines += [
            f"### 4.1 Commit of a 1-cell change on a {c.rows:,}×10 room",
            "",
            "*Storage layer*: `write_commit` in the benchmark process, one `price` cell changed, `dirty` ="
            " the range of its rid, `parent` = the full commit of the same frame; bytes = growth of the"
            " chunk directory (the chunk is fsynced). *End to end*: a client of a running server sends"
            " `set_cells` on one rid (acked, untimed), then `await room.commit()`; time = commit sent →"
            " `committed` reply (chunk write, manifest, branch move, WAL trim); bytes = growth of the"
            " server's chunk directory. Each run changes a rid in another chunk. Baseline: `df.write_parquet`"
            " of the same 10 columns to one plain file (default options, no fsync), timed in every run.",
            "",
            "| | bytes written | share of the plain file | time ms | target | status | runs |",
            "|---|---:|---:|---:|---|---|---:|",
            f"| baseline: `df.write_parquet`, whole frame | {_n(full)} | 100 % | {_f(c.parquet_ms.median, 1)}"
            f" | | | {c.parquet_ms.n} |",
            f"| (info) first commit: all {c.chunks} chunks, {cfg.rows:,} rows | {_n(c.full_commit_bytes)}"
            f" | {_pct(c.full_commit_bytes / full)} | {_f(c.full_commit_ms, 1)} | | | 1 |",
        ]
        for label, b, t in (
            ("storage layer", c.layer_bytes, c.layer_ms),
            ("end to end", c.e2e_bytes, c.e2e_ms),
        ):
            if not b.n:
                continue
            share = b.median / full
            ok = share <= TARGET_COMMIT_BYTES_SHARE and t.median <= TARGET_COMMIT_MS
            lines.append(
                f"| 1-cell commit, {label} | {_n(b.median)} | {_pct(share)} | {_f(t.median, 1)}"
                f" | ≤ {TARGET_COMMIT_BYTES_SHARE:.0%} and ≤ {TARGET_COMMIT_MS:g} ms | {_status(ok)}"
                f" | {t.n} |"
            )
        lines += [
            "",
            f"Per-run ms: storage layer {_runs(c.layer_ms, 1)}; end to end {_runs(c.e2e_ms, 1)};"
            f" `write_parquet` {_runs(c.parquet_ms, 1)}. Per-run bytes: storage layer {_runs(c.layer_bytes)};"
            f" end to end {_runs(c.e2e_bytes)}.",
        ]
        if c.e2e_error:
            lines.append(f"End-to-end commit failed: `{c.e2e_error}`.")
        lines.append("")
    j = r.join
    if j.read_parquet_ms.n:
        rp = j.read_parquet_ms.median

        def row(label: str, s: Stats, target: str = "", status: str = "") -> str:
            if not s.n:
                return f"| {label} | - | - | {target} | {status} | 0 |"
            return f"| {label} | {_n(s.median)} | {_f(s.median / rp, 1)}× | {target} | {status} | {s.n} |"

        warm_ok = j.warm_ms.n > 0 and j.warm_ms.median <= TARGET_JOIN_RATIO * rp
        lines += [
            f"### 4.2 A new client joining a {j.rows:,}×10 room",
            "",
            'Time from `Room.open()` (what `async with connect(url, "sales") as room` runs) to its return'
            f" with `room.frame` holding {j.rows:,} rows. *Warm*: the room is already loaded (another client"
            " is in it). *Cold*: the first client after a server start, so the room's recovery (head commit"
            " read from its chunks, empty WAL) is included. The raw-peer row is information: a"
            " `bench.common.Peer` (no WebSocket extension) joining the same loaded room, then the same"
            " `decode_server` + `Mirror.load` as the client. Baseline: `pl.read_parquet` of the plain file"
            " of 4.1, in every run.",
            "",
            "| | ms | ratio to `read_parquet` | target | status | runs |",
            "|---|---:|---:|---|---|---:|",
            row("baseline: `pl.read_parquet`, whole frame", j.read_parquet_ms),
            row(
                "client join, room loaded (warm)",
                j.warm_ms,
                f"≤ {TARGET_JOIN_RATIO:g}× the read",
                _status(warm_ok),
            ),
            row("client join, first after a server start (cold, incl. recovery)", j.cold_ms),
            row("(info) raw peer without permessage-deflate: join + decode + mirror", j.raw_ms),
            row("(info) raw peer: connect → welcome frame received", j.raw_wire_ms),
            "",
            f"Welcome: {j.welcome_bytes / 1e6:.1f} MB as sent (msgpack envelope with an Arrow IPC snapshot)."
            f" WebSocket extension the client negotiated: `{j.extensions or '-'}`. Server CPU per warm"
            f" client join {_f(j.server_cpu_s.median, 2)} s, per raw-peer join"
            f" {_f(j.raw_server_cpu_s.median, 2)} s."
            f" Per-run ms: warm {_runs(j.warm_ms)}; cold {_runs(j.cold_ms)}; raw {_runs(j.raw_ms)};"
            f" `read_parquet` {_runs(j.read_parquet_ms)}.",
            "",
        ]
    rc = r.recovery
    if rc.ops:
        lines += [
            f"### 4.3 Recovery of a room with {rc.ops:,} WAL entries ({rc.rows:,}-row room)",
            "",
            f"{cfg.push_peers} raw peers, {cfg.push_window} batches in flight each, pushed {rc.ops:,} 1-cell"
            f" `set` batches (one WAL entry each) in {_f(rc.push_s, 1)} s ({_n(rc.ops / rc.push_s)} acked"
            f" batches/s; errors: {dict(rc.push_errors) or 'none'}) into a server started with"
            " `--autocommit-ops 1000000 --autocommit-seconds 100000`, so none was committed; catalog"
            f" files on disk afterwards {rc.wal_bytes / 1e6:.1f} MB. The server was killed with SIGKILL and"
            " restarted (then killed again, so every run recovers the same WAL). Restart → welcome: from"
            " the spawn to the first peer's `welcome` (`hello` with `since` = the last acked seq, so no"
            " snapshot is sent; the room loads on that first join). `recover()`: the same call the server"
            " makes, in the benchmark process, on the same data directory.",
            "",
            "| | seconds | WAL entries/s | runs |",
            "|---|---:|---:|---:|",
        ]

        def rrow(label: str, s: Stats, rate: bool = True) -> str:
            if not s.n:
                return f"| {label} | - | - | 0 |"
            per = _n(rc.ops / s.median) if rate and s.median > 0 else ""
            return f"| {label} | {_f(s.median, 2)} | {per} | {s.n} |"

        replay = Stats([a - b for a, b in zip(rc.recover_s.runs, rc.open_branch_s.runs, strict=False)])
        lines += [
            rrow("restart → first welcome", rc.restart_s),
            rrow("  of which: process start → listening", rc.listen_s, rate=False),
            rrow("  of which: listening → welcome (room recovery + join)", rc.open_s),
            rrow("in-process `recover()`", rc.recover_s),
            rrow("  of which: head commit + WAL read (`open_branch`)", rc.open_branch_s, rate=False),
            rrow("  of which: replay (the rest)", replay),
            "",
            f"Per-run seconds: restart → welcome {_runs(rc.restart_s, 2)};"
            f" `recover()` {_runs(rc.recover_s, 2)}."
            f" Last acked seq {rc.last_seq:,}; welcome seq after each restart:"
            f" {', '.join(f'{x:,}' for x in rc.welcome_seqs) or '-'}; entries replayed by `recover()`:"
            f" {', '.join(f'{x:,}' for x in rc.replayed) or '-'}.",
            "",
        ]
    t = r.throughput
    if t.systems:
        off = t.systems["memory"].msgs_per_s.median if "memory" in t.systems else float("nan")
        lines += [
            f"### 4.4 Acked op throughput, WAL on vs off ({t.rows:,}-row room)",
            "",
            f"The single-op load of benchmark 2: {cfg.bots} bots (raw peers), each with {cfg.window} unacked"
            f" 1-cell `set` messages in flight, random rids, column `price`; {cfg.warmup:g} s warm-up, acks"
            f" counted over {cfg.measure:g} s, then a drain; servers interleaved, order rotated every run."
            " With a catalog, a tick's batches are acked only after their WAL entries are committed in one"
            " transaction (SQLite `synchronous=FULL`; PostgreSQL on 127.0.0.1).",
            "",
            "| server | msgs/s | ratio to `--memory` | target | status | server CPU (cores)"
            " | deltas/s per bot"
            " | load generator CPU (cores) | errors | per-run msgs/s |",
            "|---|---:|---:|---|---|---:|---:|---:|---|---|",
        ]
        for name, w in t.systems.items():
            v = w.msgs_per_s.median
            if name == "memory":
                tgt, st, ratio = "(baseline)", "", "1.00×"
            else:
                tgt, st, ratio = (
                    f"≥ {TARGET_WAL_RATIO:g}×",
                    _status(v >= TARGET_WAL_RATIO * off),
                    f"{_f(v / off)}×",
                )
            gen = t.gen_cpu[name].median if name in t.gen_cpu else float("nan")
            errs = ", ".join(f"{k}: {n}" for k, n in w.errors.items()) or "none"
            lines.append(
                f"| {_CATALOG[name]} | {_n(v)} | {ratio} | {tgt} | {st} | {_f(w.cpu_util.median)}"
                f" | {_f(w.deltas_per_s.median, 1)} | {_f(gen)} | {errs} | {_runs(w.msgs_per_s)} |"
            )
        if t.pg_error:
            lines += ["", f"PostgreSQL row skipped: `{t.pg_error}`."]
        lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- section files and RESULTS.md


_MARK = re.compile(r"^<!-- (header|summary|body|profiles|notes)(?: (.*?))? -->$")


@dataclass(slots=True)
class Section:
    """One group's part of RESULTS.md, as stored in ``bench/results/<group>.md``."""

    group: str
    header: dict[str, str]  # date, command, machine
    summary: list[str] = field(default_factory=list)  # rows of the summary table
    bodies: list[tuple[str, str]] = field(default_factory=list)  # (order key, markdown)
    profiles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        h = "; ".join(f"{k}={v.replace(';', ',')}" for k, v in self.header.items())
        out = [
            f"<!-- header {h} -->",
            "<!-- summary -->",
            *self.summary,
        ]
        for key, md in self.bodies:
            out += [f"<!-- body {key} -->", md.rstrip()]
        out.append("<!-- profiles -->")
        for p in self.profiles:
            out.append(p.rstrip())
        out.append("<!-- notes -->")
        out += [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"

    @classmethod
    def from_text(cls, group: str, text: str) -> Section:
        sec = cls(group, {})
        part, arg, buf = "", "", []

        def close() -> None:
            chunk = "\n".join(buf).strip("\n")
            if part == "summary":
                sec.summary = [ln for ln in chunk.splitlines() if ln.startswith("|")]
            elif part == "body" and chunk:
                sec.bodies.append((arg, chunk + "\n"))
            elif part == "profiles" and chunk:
                sec.profiles = [p.strip() + "\n" for p in re.split(r"\n(?=Profile `)", chunk) if p.strip()]
            elif part == "notes":
                sec.notes = [ln[2:] for ln in chunk.splitlines() if ln.startswith("- ")]

        for line in text.splitlines():
            m = _MARK.match(line)
            if m is None:
                buf.append(line)
                continue
            close()
            part, arg, buf = m.group(1), m.group(2) or "", []
            if part == "header":
                for kv in arg.split("; "):
                    k, _, v = kv.partition("=")
                    sec.header[k.strip()] = v.strip()
        close()
        return sec


def _machine_line(m: Machine) -> str:
    return f"{m.cpu}, {m.cores} cores, {m.ram_gib:.1f} GiB RAM; Python {m.python}"


def _sections(rep: Report) -> list[Section]:
    """The section of every group that ran in ``rep``."""
    quick = " (quick smoke run: fewer, shorter runs)" if rep.quick else ""
    header = {
        "date": rep.machine.date,
        "command": f"`{rep.command}`{quick}",
        "machine": _machine_line(rep.machine),
    }
    out: list[Section] = []
    for group in rep.ran:
        sec = Section(group, dict(header))
        if group == "fanout" and rep.fanout is not None:
            sec.summary = [_verdict_row(v) for v in fanout_verdicts(rep.fanout)]
            sec.bodies = [
                ("1", _fanout_md(rep.fanout)),
                ("1b", durable_fanout_md(rep.fanout)),
                ("3", _cpu_md(rep.fanout)),
            ]
        elif group == "sustained" and rep.sustained is not None:
            sec.summary = [_verdict_row(v) for v in sustained_verdicts(rep.sustained)]
            sec.bodies = [("2", _sustained_md(rep.sustained))]
        elif group == "storage" and rep.storage is not None:
            sec.summary = [_verdict_row(v) for v in storage_verdicts(rep.storage)]
            sec.bodies = [("4", _storage_md(rep.storage))]
        elif group == "views" and rep.views is not None:
            sec.summary = [_verdict_row(v) for v in views_verdicts(rep.views)]
            sec.bodies = views_sections(rep.views)
        elif group == "client" and rep.client is not None:
            sec.summary = [_verdict_row(v) for v in client_verdicts(rep.client)]
            sec.bodies = [("7", client_md(rep.client))]
        elif group == "policy" and rep.policy is not None:
            sec.summary = [_verdict_row(v) for v in policy_verdicts(rep.policy)]
            sec.bodies = [("8", policy_md(rep.policy))]
        sec.profiles = [p.markdown() for k, p in rep.profiles.items() if k.startswith(group)]
        sec.notes = list(rep.notes.get(group, []))
        out.append(sec)
    return out


def _verdict_row(v: Verdict) -> str:
    return f"| {v.what} | {v.measured} | {v.baseline} | {v.ratio} | {v.target} | {v.status} |"


def write_sections(rep: Report, directory: Path = RESULTS_DIR) -> list[Path]:
    """Write ``<group>.md`` for every group that ran; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for sec in _sections(rep):
        path = directory / f"{sec.group}.md"
        path.write_text(sec.to_text())
        paths.append(path)
    return paths


def assemble(machine: Machine, directory: Path = RESULTS_DIR) -> str:
    """RESULTS.md from every section file in ``directory`` (groups in :data:`GROUPS` order)."""
    secs = [
        Section.from_text(g, (directory / f"{g}.md").read_text())
        for g in GROUPS
        if (directory / f"{g}.md").exists()
    ]
    pk = ", ".join(f"{k} {v}" for k, v in machine.packages.items())
    out = [
        "# coframe benchmark results",
        "",
        f"- Assembled: {machine.date}, from the section files in `bench/results/` (one per benchmark"
        " group; a run with `--only GROUP` replaces that group's file and keeps the others).",
        "- Groups: "
        + "; ".join(
            f"**{s.group}** measured {s.header.get('date', '?')} by {s.header.get('command', '?')}"
            for s in secs
        ),
        f"- Machine: {_machine_line(machine)}",
        f"- Packages: {pk}",
        "- Method: each server runs in its own subprocess on 127.0.0.1 (coframe via `coframe serve`,"
        " log level warning); the load generator runs in the benchmark process (one asyncio loop, lean"
        " sans-I/O WebSocket peers, the same code against coframe and the baselines). Figures are"
        " medians over runs; every target is also given as a ratio to a baseline measured in the"
        " same run. The machine is small and shared, so expect run-to-run noise (per-run figures"
        " are listed).",
    ]
    here = _machine_line(machine).replace(";", ",")  # as a section header stores it
    other = {s.header.get("machine") for s in secs} - {here, None}
    if other:
        out.append(f"- Note: some groups were measured on another machine: {', '.join(sorted(other))}")
    out += [
        "",
        "## Summary",
        "",
        "| target | measured | baseline (same run) | ratio | target | status |",
        "|---|---:|---:|---:|---|---|",
    ]
    for s in secs:
        out += s.summary
    out.append("")
    bodies = sorted((key, i, md) for i, s in enumerate(secs) for key, md in s.bodies)
    out += [md.rstrip() + "\n" for _, _, md in bodies]
    profiles = [p for s in secs for p in s.profiles]
    if profiles:
        out += [
            "## Profiles of the missed targets",
            "",
            "Each profile was taken under the same load right after the measured runs (py-spy,"
            " non-blocking). What they show, with in-process timings of the hot spots, is written up"
            ' in `bench/README.md` ("Findings").',
            "",
        ]
        out += [p.rstrip() + "\n" for p in profiles]
    notes = [(s.group, n) for s in secs for n in s.notes]
    if notes:
        out += ["## Findings", ""]
        out += [f"- {g}: {n}" for g, n in notes]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render(rep: Report, directory: Path = RESULTS_DIR) -> str:
    """Write the section files of the groups that ran, then assemble RESULTS.md's text."""
    write_sections(rep, directory)
    return assemble(rep.machine, directory)
