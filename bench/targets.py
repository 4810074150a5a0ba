"""The issue-9 targets: verdicts (rows of the summary table) and the sections they add.

Every goal is a ratio to a baseline measured in the same run:

* fan-out (``--memory``): p99 at N=50 ≤ 1.5× ``websockets.broadcast``, p99
  ahead of pycrdt-websocket at every N, p50 at N=1 ≤ pycrdt-websocket's, and
  server CPU per delivered message at N=50 ≤ 1.5× broadcast; the durable
  figures are reported beside, with the fsync's share;
* sustained (both modes): batched 100-cell sets ≥ 0.25× echo, 1-cell
  messages ≥ 0.4× echo, and durable ≥ 0.8× ``--memory`` for both;
* client: applying a 1-cell delta ≤ 50 µs at every row count, and a
  ``set_cells`` round trip p50 ≤ 1.2× a lean protocol peer's.

The storage targets (join ≤ 2× ``pl.read_parquet``, recovery ≥ 100k WAL
entries/s) are rendered by :mod:`bench.report` with the rest of the group.
"""

from __future__ import annotations

from dataclasses import dataclass

from .common import median
from .fanout import BROADCAST, COFRAME, COFRAME_DURABLE, PYCRDT, FanoutResult
from .pyclient import TARGET_APPLY_US, TARGET_RT_RATIO, ClientResult
from .sustained import SustainedResult

__all__ = [
    "Verdict",
    "TARGET_P99_RATIO",
    "TARGET_CPU_RATIO",
    "TARGET_BATCHED_ECHO",
    "TARGET_SINGLE_ECHO",
    "TARGET_DURABLE_RATIO",
    "fanout_verdicts",
    "sustained_verdicts",
    "client_verdicts",
    "durable_fanout_md",
    "client_md",
]

TARGET_P99_RATIO = 1.5  # fan-out p99 at N=50, × broadcast
TARGET_CPU_RATIO = 1.5  # server CPU per delivered message at N=50, × broadcast
TARGET_BATCHED_ECHO = 0.25  # batched 100-cell sets, × the echo floor
TARGET_SINGLE_ECHO = 0.4  # 1-cell messages, × the echo floor
TARGET_DURABLE_RATIO = 0.8  # durable throughput, × --memory


@dataclass(slots=True)
class Verdict:
    """One target: what was measured against what, and whether it was met (``info``: no goal)."""

    what: str
    measured: str
    baseline: str
    ratio: str
    target: str
    met: bool
    info: bool = False

    @property
    def status(self) -> str:
        if self.info:
            return "(info)"
        return "MET" if self.met else "**MISSED**"


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _share(mem: float, dur: float) -> str:
    """The fsync's share of a durable latency: (durable − memory) / durable."""
    return f"{max(0.0, dur - mem) / dur:.0%}" if dur > 0 else "-"


# ---------------------------------------------------------------- fan-out


def fanout_verdicts(r: FanoutResult) -> list[Verdict]:
    out: list[Verdict] = []
    bl = r.systems.get(BROADCAST)
    cf = r.systems.get(COFRAME)
    py = r.systems.get(PYCRDT)
    dur = r.systems.get(COFRAME_DURABLE)
    n = r.config.cpu_readers
    if cf is not None and bl is not None and n in cf.p99_ms and n in bl.p99_ms:
        c, b = cf.p99_ms[n].median, bl.p99_ms[n].median
        out.append(
            Verdict(
                f"fan-out p99, 1 writer → {n} readers, 1-cell edits (`--memory`)",
                f"{_f(c)} ms",
                f"`websockets.broadcast` {_f(b)} ms",
                f"{_f(c / b)}×",
                f"≤ {TARGET_P99_RATIO:g}× broadcast",
                c <= TARGET_P99_RATIO * b,
            )
        )
    if cf is not None and py is not None:
        ns = [k for k in r.config.readers if k in cf.p99_ms and k in py.p99_ms]
        if ns:
            ratios = {k: cf.p99_ms[k].median / py.p99_ms[k].median for k in ns}
            out.append(
                Verdict(
                    "fan-out p99 at every N (`--memory`) vs pycrdt-websocket",
                    ", ".join(f"N={k} {_f(cf.p99_ms[k].median)} ms" for k in ns),
                    ", ".join(f"N={k} {_f(py.p99_ms[k].median)} ms" for k in ns),
                    ", ".join(f"{_f(x)}×" for x in ratios.values()),
                    "< 1× pycrdt-websocket at every N",
                    all(x < 1.0 for x in ratios.values()),
                )
            )
        if 1 in cf.p50_ms and 1 in py.p50_ms:
            c, p = cf.p50_ms[1].median, py.p50_ms[1].median
            out.append(
                Verdict(
                    "fan-out p50 with 1 reader (`--memory`)",
                    f"{_f(c)} ms",
                    f"pycrdt-websocket {_f(p)} ms",
                    f"{_f(c / p)}×",
                    "≤ 1× pycrdt-websocket",
                    c <= p,
                )
            )
    if cf is not None and bl is not None and cf.cpu_us.n and bl.cpu_us.n:
        c, b = cf.cpu_us.median, bl.cpu_us.median
        out.append(
            Verdict(
                f"server CPU per delivered message, N={n} (`--memory`)",
                f"{_f(c, 1)} µs",
                f"`websockets.broadcast` {_f(b, 1)} µs",
                f"{_f(c / b)}×",
                f"≤ {TARGET_CPU_RATIO:g}× broadcast",
                c <= TARGET_CPU_RATIO * b,
            )
        )
    if dur is not None and bl is not None:
        for k in (1, n):
            if k not in dur.p99_ms or k not in bl.p99_ms:
                continue
            mem = f"; `--memory` p50 {_f(cf.p50_ms[k].median)}" if cf is not None and k in cf.p50_ms else ""
            share = (
                f"; fsync's share of p50 {_share(cf.p50_ms[k].median, dur.p50_ms[k].median)}"
                if cf is not None and k in cf.p50_ms
                else ""
            )
            out.append(
                Verdict(
                    f"fan-out, 1 writer → {k} reader(s), default durable mode (reported beside)",
                    f"p50 {_f(dur.p50_ms[k].median)} ms, p99 {_f(dur.p99_ms[k].median)} ms",
                    f"broadcast p99 {_f(bl.p99_ms[k].median)} ms{mem} ms{share}",
                    f"{_f(dur.p99_ms[k].median / bl.p99_ms[k].median)}× broadcast p99",
                    "(beside the `--memory` targets)",
                    True,
                    info=True,
                )
            )
    return out


def durable_fanout_md(r: FanoutResult) -> str:
    """Section 1b: the same fan-out in the default durable mode, beside ``--memory``."""
    cf, dur = r.systems.get(COFRAME), r.systems.get(COFRAME_DURABLE)
    if dur is None or not dur.p99_ms:
        return ""
    lines = [
        "## 1b. Fan-out in the default durable mode (WAL fsync before every ack)",
        "",
        "The same closed loop, the same peers, interleaved with the other systems in every run: coframe"
        " on a fresh temporary `--data-dir` (SQLite catalog, `synchronous=FULL`), so each edit is acked"
        " and broadcast only after its WAL entry is fsynced. The latency targets are those of `--memory`"
        " (section 1); these are reported beside them. *fsync's share* = (durable − `--memory`) /"
        " durable, per percentile: the part of the durable latency the WAL adds.",
        "",
        "| N readers | `--memory` p50 ms | durable p50 ms | fsync's share of p50 | `--memory` p99 ms"
        " | durable p99 ms | fsync's share of p99 | durable server CPU µs per edit | runs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in r.config.readers:
        if n not in dur.p99_ms:
            continue
        d50, d99 = dur.p50_ms[n].median, dur.p99_ms[n].median
        have = cf is not None and n in cf.p99_ms
        m50 = cf.p50_ms[n].median if have and cf is not None else float("nan")
        m99 = cf.p99_ms[n].median if have and cf is not None else float("nan")
        cpu = dur.cpu_edit_us[n].median if n in dur.cpu_edit_us else float("nan")
        lines.append(
            f"| {n} | {_f(m50)} | {_f(d50)} | {_share(m50, d50) if have else '-'} | {_f(m99)} | {_f(d99)}"
            f" | {_share(m99, d99) if have else '-'} | {_f(cpu, 0)} | {dur.p99_ms[n].n} |"
        )
    per_run = "; ".join(f"N={n}: {', '.join(_f(x) for x in dur.p50_ms[n].runs)}" for n in dur.p50_ms)
    lines += ["", f"Per-run durable p50 (ms): {per_run}."]
    per_run = "; ".join(f"N={n}: {', '.join(_f(x) for x in dur.p99_ms[n].runs)}" for n in dur.p99_ms)
    lines.append(f"Per-run durable p99 (ms): {per_run}.")
    if dur.cpu_us.n:
        lines.append(
            f"Durable server CPU per delivered message at N={r.config.cpu_readers}:"
            f" {_f(dur.cpu_us.median, 1)} µs."
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- sustained


def sustained_verdicts(r: SustainedResult) -> list[Verdict]:
    w = r.workloads
    out: list[Verdict] = []
    b = r.config.batch_cells
    for what, unit, goal in (
        ("batched", "cells", TARGET_BATCHED_ECHO),
        ("single-op", "msgs", TARGET_SINGLE_ECHO),
    ):
        echo = w.get(f"echo {what}")
        if echo is None:
            continue
        e = echo.cells_per_s.median if unit == "cells" else echo.msgs_per_s.median
        label = (
            f"batched {b}-cell sets into a 1M-row room, {r.config.bots} bots"
            if what == "batched"
            else (f"single-op: 1-cell op messages into a 1M-row room, {r.config.bots} bots")
        )
        mem = w.get(f"coframe {what}")
        for mode in ("memory", "durable"):
            wl = w.get(f"coframe {what}" if mode == "memory" else f"coframe {what} ({mode})")
            if wl is None:
                continue
            c = wl.cells_per_s.median if unit == "cells" else wl.msgs_per_s.median
            tag = "`--memory`" if mode == "memory" else "default durable mode"
            out.append(
                Verdict(
                    f"sustained {label} ({tag})",
                    f"{_n(c)} {unit}/s",
                    f"echo {_n(e)} {unit}/s",
                    f"{_f(c / e, 3)}× echo",
                    f"≥ {goal:g}× echo",
                    c >= goal * e,
                )
            )
            if mode == "durable" and mem is not None:
                m = mem.cells_per_s.median if unit == "cells" else mem.msgs_per_s.median
                out.append(
                    Verdict(
                        f"sustained {label}: durable vs `--memory`",
                        f"{_n(c)} {unit}/s",
                        f"`--memory` {_n(m)} {unit}/s",
                        f"{_f(c / m)}×",
                        f"≥ {TARGET_DURABLE_RATIO:g}× `--memory`",
                        c >= TARGET_DURABLE_RATIO * m,
                    )
                )
    return out


# ---------------------------------------------------------------- client


def client_verdicts(r: ClientResult) -> list[Verdict]:
    out: list[Verdict] = []
    for rows, a in r.apply.items():
        if not a.apply_us.n:
            continue
        c, s = a.apply_us.median, a.scatter_us.median
        out.append(
            Verdict(
                f"Python client applying a 1-cell delta, {rows:,} rows (`Mirror.apply`)",
                f"{_f(c, 1)} µs",
                f"clone + scatter of 1 cell {_f(s, 1)} µs; decode {_f(a.decode_us.median, 1)} µs",
                f"{_f(c / s)}× clone + scatter",
                f"≤ {TARGET_APPLY_US:g} µs",
                c <= TARGET_APPLY_US and not a.check,
            )
        )
        out.append(
            Verdict(
                f"Python client applying a 1-cell delta and reading `room.frame`, {rows:,} rows",
                f"{_f(a.read_us.median, 1)} µs",
                f"clone + scatter of 1 cell {_f(s, 1)} µs",
                f"{_f(a.read_us.median / s)}× clone + scatter",
                "(reported beside)",
                True,
                info=True,
            )
        )
    rt = r.roundtrip
    if rt.client_p50_ms.n and rt.peer_p50_ms.n:
        c, p = rt.client_p50_ms.median, rt.peer_p50_ms.median
        out.append(
            Verdict(
                f"Python client `set_cells` round trip p50, no other clients, `--memory`, {rt.rows:,} rows",
                f"{_f(c)} ms",
                f"lean protocol peer {_f(p)} ms",
                f"{_f(c / p)}×",
                f"≤ {TARGET_RT_RATIO:g}× the lean peer",
                c <= TARGET_RT_RATIO * p,
            )
        )
    return out


def _runs(xs: list[float], digits: int = 1) -> str:
    return ", ".join(f"{x:.{digits}f}" for x in xs) or "-"


def client_md(r: ClientResult) -> str:
    cfg = r.config
    lines = [
        "## 7. The Python client",
        "",
        "### 7.1 Applying a 1-cell delta to the mirror",
        "",
        f"A `--memory` server with `--demo-rows N`; a raw peer joins with a full snapshot and records every"
        f" frame while a writer peer sends {cfg.deltas:,} 1-cell `set` edits of `price` closed-loop (one"
        " delta per edit). Then in this process, with the client's mirror (`client.mirror.Mirror`:"
        " `load` of the decoded welcome, `apply` of each decoded `Delta`): *apply* times `mirror.apply`"
        " alone; *apply + read* times `mirror.apply` then `mirror.frame` (what `room.frame` returns) on a"
        " second mirror, so deferred work is paid where it is read. *decode* is `decode_server` of the"
        " frame (not part of either). Per run: the median (and p99) over all deltas, fresh mirrors;"
        f" figures are medians over {cfg.runs} runs. Baseline: Polars `clone` + `scatter` of one cell"
        " into an N-row Float64 column (the full-column copy), timed in every run.",
        "",
        "| rows | apply p50 µs | apply p99 µs | apply + read p50 µs | apply + read p99 µs | decode µs"
        " | clone + scatter µs | target | status | runs |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for rows, a in r.apply.items():
        if not a.apply_us.n:
            continue
        ok = a.apply_us.median <= TARGET_APPLY_US and not a.check
        lines.append(
            f"| {rows:,} | {_f(a.apply_us.median, 1)} | {_f(a.apply_p99_us.median, 1)}"
            f" | {_f(a.read_us.median, 1)} | {_f(a.read_p99_us.median, 1)} | {_f(a.decode_us.median, 1)}"
            f" | {_f(a.scatter_us.median, 1)} | apply ≤ {TARGET_APPLY_US:g} µs"
            f" | {'MET' if ok else '**MISSED**'} | {a.apply_us.n} |"
        )
    lines.append("")
    for rows, a in r.apply.items():
        lines.append(
            f"{rows:,} rows: {a.deltas:,} deltas of {a.delta_bytes} bytes (median); per-run apply p50"
            f" {_runs(a.apply_us.runs)} µs; apply + read p50 {_runs(a.read_us.runs)} µs; content check:"
            f" {a.check or 'every written value present'}."
        )
    for rows, a in r.apply.items():
        if a.profile:
            lines += [
                "",
                f"Where the time goes at {rows:,} rows (the target was missed): cProfile of `Mirror.apply`"
                f" over the {a.deltas:,} decoded deltas, by own time:",
                "",
                "```",
                a.profile,
                "```",
            ]
    rt = r.roundtrip
    if rt.client_p50_ms.n or rt.peer_p50_ms.n:
        ratio = (
            f"{_f(rt.client_p50_ms.median / rt.peer_p50_ms.median)}×"
            if rt.client_p50_ms.n and rt.peer_p50_ms.n
            else "-"
        )
        ok = (
            rt.client_p50_ms.n
            and rt.peer_p50_ms.n
            and (rt.client_p50_ms.median <= TARGET_RT_RATIO * rt.peer_p50_ms.median)
        )
        lines += [
            "",
            f"### 7.2 `set_cells` round trip, no other clients (`--memory`, {rt.rows:,} rows)",
            "",
            '`await room.set_cells([rid], "price", value)` of the Python client (`client.connect`),'
            " against a lean protocol peer (`bench.common.Peer`: msgpack `op` → `ack`) sending the same"
            " op to the same server. Only one of them is connected at a time (each joins, warms up with"
            f" {cfg.rt_warmup} edits, sends {cfg.rt_edits} timed edits closed-loop, leaves); the order"
            f" alternates run by run; medians over {rt.client_p50_ms.n} runs of each run's percentile.",
            "",
            "| | p50 ms | p99 ms | p50 ratio | target | status |",
            "|---|---:|---:|---:|---|---|",
            f"| lean protocol peer | {_f(median(rt.peer_p50_ms.runs))} | {_f(median(rt.peer_p99_ms.runs))}"
            " | 1.00× | | |",
            f"| Python client `set_cells` | {_f(median(rt.client_p50_ms.runs))}"
            f" | {_f(median(rt.client_p99_ms.runs))} | {ratio} | ≤ {TARGET_RT_RATIO:g}× the lean peer"
            f" | {'MET' if ok else '**MISSED**'} |",
            "",
            f"Per-run p50 (ms): client {_runs(rt.client_p50_ms.runs, 2)}; lean peer"
            f" {_runs(rt.peer_p50_ms.runs, 2)}.",
        ]
    return "\n".join(lines) + "\n"
