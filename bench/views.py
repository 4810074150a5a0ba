"""Benchmark group ``views`` (issue 11's targets): live Perspective views in the views process.

coframe computes views in a **views process** of its own, a child of the
server (``server/perspective/worker.py``). The group has four parts:

5. **View latency under 1k edits/s on a 1M-row room** (this module, with
   the load of :mod:`bench.viewload`). A writer peer sends 1-cell ``set``
   edits of ``price`` at a fixed rate, paced by a monotonic schedule (open
   loop). A subscriber peer (same process, same clock) holds live views.
   For each edit acked as seq N: *send → view* (the target: the edit sent →
   the subscriber receiving the first ``view`` message of that view with
   ``seq >= N``), *ack → view* (from the writer's ack), and the same for the
   subscriber's ``delta``. Phases on the same connections of a fresh
   ``coframe serve --memory``: A. no views (the floor); B. a grouped view
   (``group_by`` region, ``sum`` of price) and a plain view with a 100-row
   viewport (rids 0..99); C. the plain view replaced by one sorted by price
   descending. Goals: B's two views and C's grouped view p99 ≤ 30 ms, C's
   sorted view p99 ≤ 100 ms (send → view). One edit in ``plain_every`` is
   made to change the plain view; the plain views are measured on those.
   After each phase the run waits (bounded) until every edit is reflected,
   then checks each view's content against the expected state.
6. **Memory** (:mod:`bench.viewmemory`): RSS of the server **and** its views
   process, after start, after the views process started (a view of a
   10-row room), after the room loaded, after a Python client joined (the
   room with no views, snapshot cache included: ≤ 2× the frame's Arrow
   size) and after each of 10 views using 7 distinct columns (≤ 4×).
6b. **A runaway view** (:mod:`bench.viewfaults`): a view whose expression
   runs far over ``--views-timeout`` in one room while a writer edits
   another room closed-loop: that room's ack p99 stays within 1.2× of the
   same run's baseline, and the runaway is refused within its budget.
6c. **The views process killed** (:mod:`bench.viewfaults`): SIGKILL under
   1k edits/s on a 1M-row room; every view gets a fresh snapshot within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .common import ServerProcess, Stats, coframe_argv, free_port, percentile
from .viewload import GROUPED, GROUPED_MAX, PLAIN, SORTED, Expected, Phase, ViewLoad, ViewLog

__all__ = [
    "ViewsConfig",
    "ViewsResult",
    "LatencyResult",
    "PhaseResult",
    "Lat",
    "MemoryResult",
    "RunawayResult",
    "KillResult",
    "ViewsBench",
    "ViewLoad",
    "Live",
    "PHASES",
    "TARGET_VIEW_P99_MS",
    "TARGET_SORTED_P99_MS",
    "TARGET_MEMORY_RATIO",
    "TARGET_BARE_RATIO",
    "TARGET_RUNAWAY_RATIO",
    "TARGET_FRESH_S",
    "view_target_ms",
    "missed_phases",
    "tempdir",
]

TARGET_VIEW_P99_MS = 30.0  # grouped and viewport views: send → view p99
TARGET_SORTED_P99_MS = 100.0  # the sorted plain view: send → view p99
TARGET_MEMORY_RATIO = 4.0  # room with its table and 10 views, × the frame's Arrow size
TARGET_BARE_RATIO = 2.0  # room with no views (snapshot cache included), × the Arrow size
TARGET_RUNAWAY_RATIO = 1.2  # another room's ack p99 during a runaway, × without
TARGET_FRESH_S = 10.0  # views process killed: every view's fresh snapshot within this

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ViewsConfig:
    """Sizes and repetitions of the views group."""

    runs: int = 3
    rows: int = 1_000_000
    rate: float = 1000.0  # edits/s, open loop
    warmup: float = 1.0  # s of unmeasured edits at the start of each phase
    measure: float = 10.0  # s of measured edits per phase
    drain: float = 20.0  # s to wait at most, after a phase, for every edit to be reflected
    plain_every: int = 10  # one edit in this many is a plain edit
    viewport: int = 100
    sorted_phase: bool = True  # phase C (grouped + sorted plain view)
    mem_runs: int = 3
    mem_rows: int = 1_000_000
    settle: int = 5  # round trips before each RSS reading
    settle_every: float = 0.1  # s between round trips while RSS settles
    settle_window: float = 2.0  # s over which RSS must be stable ...
    settle_mb: float = 2.0  # ... within this many MB
    settle_max: float = 20.0  # s at most per reading
    runaway_runs: int = 3
    runaway_rows: int = 20_000  # the runaway's room (the demo)
    other_rows: int = 1_000  # the other room (a CSV written here), edited closed-loop
    runaway_budget: float = 2.0  # --views-timeout of that server
    runaway_margin: float = 0.5  # s over the budget the refusal may take
    runaway_base: float = 5.0  # s of baseline acks before the runaway
    kill_runs: int = 3
    kill_rows: int = 1_000_000
    kill_before: float = 2.0  # s of load between the views' snapshots and the SIGKILL
    kill_after: float = 1.0  # s of load after every view's fresh snapshot
    kill_limit: float = 60.0  # s to wait at most for the fresh snapshots
    profile_s: int = 6


# ---------------------------------------------------------------- phases and views

PHASES = (
    Phase("base", "A. no views (no Perspective table)", (), "rids"),
    Phase("plain", "B. grouped + plain view", (GROUPED, PLAIN), "rids"),
    Phase("sorted", "C. grouped + sorted plain view", (GROUPED, SORTED), "max"),
    Phase("perspective", "D. grouped high (Perspective's max) + plain view", (GROUPED_MAX, PLAIN), "raise"),
)


def view_target_ms(view: str) -> float | None:
    """The send → view p99 goal of a phase view: 100 ms for the sorted one, none (reported
    beside) for the grouped max that Perspective serves, else 30 ms."""
    if view == GROUPED_MAX[0]:
        return None
    return TARGET_SORTED_P99_MS if view == SORTED[0] else TARGET_VIEW_P99_MS


# ---------------------------------------------------------------- results


@dataclass(slots=True)
class Lat:
    """One latency, per run: p50 and p99 in ms, how many edits were measured, how many were missing."""

    p50: Stats = field(default_factory=Stats)
    p99: Stats = field(default_factory=Stats)
    n: Stats = field(default_factory=Stats)
    missing: Stats = field(default_factory=Stats)

    def add(self, ms: list[float], missing: int) -> None:
        self.p50.add(percentile(ms, 50))
        self.p99.add(percentile(ms, 99))
        self.n.add(len(ms))
        self.missing.add(missing)

    @property
    def total_n(self) -> int:
        return int(sum(self.n.runs))

    @property
    def total_missing(self) -> int:
        return int(sum(self.missing.runs))


@dataclass(slots=True)
class PhaseResult:
    key: str
    label: str
    views: tuple[str, ...]
    rate: Stats = field(default_factory=Stats)  # edits/s sent in the measured window
    sent: Stats = field(default_factory=Stats)  # edits sent in the measured window
    plain_sent: Stats = field(default_factory=Stats)
    lag_p99_ms: Stats = field(default_factory=Stats)  # load generator: send time - scheduled time, p99
    cpu: Stats = field(default_factory=Stats)  # server CPU over the window, in cores
    views_cpu: Stats = field(default_factory=Stats)  # the views process's CPU over the window, in cores
    deltas_per_s: Stats = field(default_factory=Stats)  # deltas the subscriber received per second
    updates_per_s: dict[str, Stats] = field(default_factory=dict)  # view messages per second, per view
    # "send→ack", "ack→delta", "send→delta", "ack→<view>", "send→<view>"
    lat: dict[str, Lat] = field(default_factory=dict)
    open_s: dict[str, Stats] = field(default_factory=dict)  # subscribe → snapshot, per view
    errors: Counter[str] = field(default_factory=Counter)
    checks_ok: int = 0
    checks_failed: list[str] = field(default_factory=list)

    def latency(self, key: str) -> Lat:
        return self.lat.setdefault(key, Lat())


@dataclass(slots=True)
class LatencyResult:
    rows: int = 0
    start_s: Stats = field(default_factory=Stats)  # server spawn → /healthz answers
    phases: dict[str, PhaseResult] = field(default_factory=dict)


@dataclass(slots=True)
class MemoryResult:
    rows: int = 0
    arrow_bytes: int = 0  # the room frame (normalized, with _rid) as Arrow
    arrow_bytes_raw: int = 0  # demo_sales(rows).to_arrow(), without _rid
    arrow_bytes_used: int = 0  # the same, only the columns the views use (MEMORY_COLUMNS) and _rid
    steps: dict[str, Stats] = field(default_factory=dict)  # label -> RSS bytes, server + views process
    server: dict[str, Stats] = field(default_factory=dict)  # label -> RSS bytes of the server alone
    views: dict[str, Stats] = field(default_factory=dict)  # label -> RSS bytes of the views process
    view_open_s: dict[str, Stats] = field(default_factory=dict)  # label -> subscribe → snapshot, s
    view_rows: dict[str, int] = field(default_factory=dict)  # label -> the view's total row count
    first: dict[str, Stats] = field(default_factory=dict)  # label -> RSS bytes (total) at the first read
    settle_s: dict[str, Stats] = field(default_factory=dict)  # label -> seconds until RSS was stable

    def step(self, label: str) -> Stats:
        return self.steps.setdefault(label, Stats())


@dataclass(slots=True)
class RunawayResult:
    """6b: the other room's acks before and during a runaway view, and how fast it was refused."""

    rows: int = 0
    other_rows: int = 0
    budget: float = 0.0
    base_p50: Stats = field(default_factory=Stats)  # ms, the other room's send → ack before the runaway
    base_p99: Stats = field(default_factory=Stats)
    base_n: Stats = field(default_factory=Stats)
    during_p50: Stats = field(default_factory=Stats)  # ms, edits sent between the subscribe and its answer
    during_p99: Stats = field(default_factory=Stats)
    during_n: Stats = field(default_factory=Stats)
    after_p99: Stats = field(default_factory=Stats)  # ms, from the answer to the other view's fresh snapshot
    after_n: Stats = field(default_factory=Stats)
    ratio: Stats = field(default_factory=Stats)  # during p99 / base p99, per run
    close_s: Stats = field(default_factory=Stats)  # the runaway's subscribe → its refusal
    recover_s: Stats = field(default_factory=Stats)  # the refusal → the room's other view rebuilt
    views_cpu: Stats = field(default_factory=Stats)  # the views process's CPU in the window, cores
    answers: Counter[str] = field(default_factory=Counter)  # what the runaway's subscribe got
    reason: str = ""  # the first refusal's message
    errors: Counter[str] = field(default_factory=Counter)  # the writer's rejected edits


@dataclass(slots=True)
class KillResult:
    """6c: the views process SIGKILLed under load; time until every view had a fresh snapshot."""

    rows: int = 0
    fresh_s: Stats = field(default_factory=Stats)  # SIGKILL → the last view's fresh snapshot
    per_view: dict[str, Stats] = field(default_factory=dict)  # SIGKILL → that view's fresh snapshot
    behind: Stats = field(default_factory=Stats)  # edits acked but not in a fresh snapshot (worst view)
    age_s: Stats = field(default_factory=Stats)  # a fresh snapshot's receipt − the ack of its last edit
    ack_before_p99: Stats = field(default_factory=Stats)  # ms, the room's send → ack before the kill
    ack_during_p99: Stats = field(default_factory=Stats)  # ms, between the kill and the last snapshot
    open_s: Stats = field(default_factory=Stats)  # subscribing the 3 views before the kill, s
    restarted: int = 0  # runs in which a new views process was running afterwards
    closed: list[str] = field(default_factory=list)  # views the server closed instead of rebuilding
    checks_ok: int = 0
    checks_failed: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class ViewsResult:
    config: ViewsConfig
    latency: LatencyResult = field(default_factory=LatencyResult)
    memory: MemoryResult = field(default_factory=MemoryResult)
    runaway: RunawayResult = field(default_factory=RunawayResult)
    kill: KillResult = field(default_factory=KillResult)
    notes: list[str] = field(default_factory=list)


def missed_phases(r: ViewsResult) -> list[str]:
    """Keys of the phases with a view whose send → view p99 is over its goal."""
    out = []
    for key, ph in r.latency.phases.items():
        for name in ph.views:
            lat = ph.lat.get(f"send→{name}")
            goal = view_target_ms(name)
            if lat is not None and lat.p99.n and goal is not None and not lat.p99.median <= goal:
                if key not in out:
                    out.append(key)
    return out


# ---------------------------------------------------------------- the benchmark


@contextlib.contextmanager
def tempdir(tag: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"bench-views-{tag}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass(slots=True)
class Live:
    """The last latency run's server and load, left running for profiles (then retired)."""

    server: ServerProcess
    load: ViewLoad


class ViewsBench:
    """Runs the views group; every server it starts is stopped by :meth:`retire` or :meth:`close`."""

    def __init__(self, cfg: ViewsConfig, log: Log = print) -> None:
        self.cfg = cfg
        self.log = log
        self.result = ViewsResult(cfg)
        self.servers: list[ServerProcess] = []
        self.problems: list[tuple[str, list[str]]] = []

    def retire(self, srv: ServerProcess) -> None:
        srv.stop()
        lines = srv.problems()
        if lines:
            self.problems.append((srv.name, lines))
        if srv in self.servers:
            self.servers.remove(srv)

    def close(self) -> None:
        for srv in list(self.servers):
            with contextlib.suppress(Exception):
                self.retire(srv)

    # ------------------------------------------------------------ 5. latency

    async def latency(self) -> Live:
        """Benchmark 5; returns the last run's server and load, still running."""
        cfg, r = self.cfg, self.result.latency
        r.rows = cfg.rows
        phases = [p for p in PHASES if cfg.sorted_phase or p.key != "sorted"]
        for p in phases:
            r.phases.setdefault(p.key, PhaseResult(p.key, p.label, tuple(n for n, _ in p.views)))
        live: Live | None = None
        for run in range(cfg.runs):
            if live is not None:
                live.load.close()
                self.retire(live.server)
            port = free_port()
            srv = ServerProcess(f"coframe-views-{run}", [*coframe_argv(port, cfg.rows), "--memory"], port)
            self.servers.append(srv)
            t = time.perf_counter()
            srv.start(timeout=300)
            r.start_s.add(time.perf_counter() - t)
            expected = await asyncio.to_thread(Expected, cfg.rows)
            load = ViewLoad(srv.url, cfg.rows, cfg, expected, seed=run)
            live = Live(srv, load)
            await load.open()
            self.log(f"  views run {run + 1}/{cfg.runs}: server pid {srv.pid}, {cfg.rows:,} rows")
            for p in phases:
                await self._phase(live, p, r.phases[p.key])
        assert live is not None
        return live

    async def _phase(self, live: Live, phase: Phase, res: PhaseResult) -> None:
        cfg, load, srv = self.cfg, live.load, live.server
        for name, dt in (await load.use(phase)).items():
            res.open_s.setdefault(name, Stats()).add(dt)
        await load.pace(cfg.warmup, phase.plain)
        d0, v0 = len(load.sub.delta_seq), {n: len(load.sub.views.get(n, ViewLog()).seq) for n in load.views}
        cpu0, vcpu0, t0 = srv.cpu_seconds(), srv.views_cpu_seconds(), time.perf_counter()
        edits = await load.pace(cfg.measure, phase.plain)
        wall = time.perf_counter() - t0
        cpu, vcpu = srv.cpu_seconds() - cpu0, srv.views_cpu_seconds() - vcpu0
        d1, v1 = len(load.sub.delta_seq), {n: len(load.sub.views.get(n, ViewLog()).seq) for n in load.views}
        drained = await load.drain(edits, cfg.drain)
        res.rate.add(len(edits) / wall)
        res.sent.add(len(edits))
        res.plain_sent.add(sum(load.plain[i] for i in edits))
        res.lag_p99_ms.add(percentile([(load.send_t[i] - load.sched_t[i]) * 1e3 for i in edits], 99))
        res.cpu.add(cpu / wall)
        res.views_cpu.add(max(0.0, vcpu) / wall)
        res.deltas_per_s.add((d1 - d0) / wall)
        for n in load.views:
            res.updates_per_s.setdefault(n, Stats()).add((v1[n] - v0[n]) / wall)
        res.errors.update(load.writer.errors)
        res.errors.update(load.sub.errors)
        load.writer.errors.clear()
        load.sub.errors.clear()
        acked = [i for i in edits if load.seq[i]]
        res.latency("send→ack").add(
            [(load.ack_t[i] - load.send_t[i]) * 1e3 for i in acked], len(edits) - len(acked)
        )
        a, s, miss = load.latencies(edits, (load.sub.delta_seq, load.sub.delta_t))
        res.latency("ack→delta").add(a, miss)
        res.latency("send→delta").add(s, miss)
        for name, config in phase.views:
            vl = load.sub.views.get(name, ViewLog())
            grouped = bool(config.get("group_by"))
            a, s, miss = load.latencies(edits, (vl.seq, vl.t), plain_only=not grouped)
            res.latency(f"ack→{name}").add(a, miss)
            res.latency(f"send→{name}").add(s, miss)
            last = max((load.seq[i] for i in acked), default=0)
            if not drained:
                res.checks_failed.append(f"{name}: not every edit was reflected within {cfg.drain:g} s")
            elif grouped and vl.seq and vl.seq[-1] != last:
                res.checks_failed.append(
                    f"{name}: last update at seq {vl.seq[-1]}, last edit acked as {last}"
                )
            else:
                why = load.expected.check(name, config, vl.last, cfg.viewport)
                if why is None:
                    res.checks_ok += 1
                else:
                    res.checks_failed.append(why)

        def fig(key: str, q: str = "p99") -> float:
            return getattr(res.lat[key], q).runs[-1]

        views = ", ".join(
            f"{n} ack→view p50 {fig(f'ack→{n}', 'p50'):.1f} p99 {fig(f'ack→{n}'):.1f}"
            f" send→view p99 {fig(f'send→{n}'):.1f} ms"
            for n, _ in phase.views
        )
        self.log(
            f"    {phase.label}: {len(edits) / wall:,.0f} edits/s, send→ack p99 {fig('send→ack'):.1f} ms,"
            f" ack→delta p99 {fig('ack→delta'):.1f} ms; {views or 'no views'}; server {cpu / wall:.2f}"
            f" cores, views process {max(0.0, vcpu) / wall:.2f}; deltas/s {(d1 - d0) / wall:.0f}"
            + ("" if drained else "; NOT DRAINED")
        )
