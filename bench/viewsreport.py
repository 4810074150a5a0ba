"""The views group's verdicts (summary rows) and sections 5, 6, 6b and 6c of ``RESULTS.md``.

The goals are issue 11's: send → view p99 ≤ 30 ms for grouped and viewport
views and ≤ 100 ms for the sorted plain view, under 1k edits/s on 1M rows;
RSS of server + views process ≤ 2× the frame's Arrow size for a room with no
views (snapshot cache included) and ≤ 4× with its table and 10 views; another
room's ack p99 within 1.2× while a runaway view burns the views process, the
runaway refused within its budget; every view's fresh snapshot within 10 s
of the views process being killed.
"""

from __future__ import annotations

import math

from .common import Stats
from .targets import Verdict
from .viewmemory import MEMORY_COLUMNS, MEMORY_VIEWS, STEP_CLIENT, STEP_VIEWS_UP, view_step
from .views import (
    TARGET_BARE_RATIO,
    TARGET_FRESH_S,
    TARGET_MEMORY_RATIO,
    TARGET_RUNAWAY_RATIO,
    MemoryResult,
    PhaseResult,
    ViewsResult,
    view_target_ms,
)
from .viewsmd import fmt, growth, kill_md, mb, memory_md, ms, num, refused, runaway_md, runs, status

__all__ = ["views_verdicts", "views_sections"]

_VIEW_LABELS = {
    "grouped": "grouped view (sum of price by region)",
    "grouped_max": "grouped view served by Perspective (`high`, its max, of price by region)",
    "plain": "plain view (100-row viewport: rids 0–99)",
    "sorted": "plain view sorted by price desc (100-row viewport)",
}
_PHASE_SHORT = {"base": "A", "plain": "B", "sorted": "C", "perspective": "D"}


def _p(lat: object, q: str) -> str:
    s = getattr(lat, q, None)
    return ms(s.median) if isinstance(s, Stats) and s.n else "-"


def _reflected(ph: PhaseResult, name: str) -> tuple[int, int]:
    """(edits measured, edits never reflected) for view ``name``, over all runs."""
    lat = ph.lat.get(f"send→{name}")
    if lat is None:
        return 0, 0
    return lat.total_n + lat.total_missing, lat.total_missing


# ---------------------------------------------------------------- verdicts


def views_verdicts(r: ViewsResult) -> list[Verdict]:
    return [*_latency_verdicts(r), *_memory_verdicts(r.memory), *_fault_verdicts(r)]


def _latency_verdicts(r: ViewsResult) -> list[Verdict]:
    out: list[Verdict] = []
    lr = r.latency
    base = lr.phases.get("base")
    floor = base.lat.get("send→delta") if base is not None else None
    for key, ph in lr.phases.items():
        for name in ph.views:
            s, a = ph.lat.get(f"send→{name}"), ph.lat.get(f"ack→{name}")
            if s is None or not s.p99.n:
                continue
            goal = view_target_ms(name)
            total, missing = _reflected(ph, name)
            clean = missing == 0 and not ph.checks_failed
            refl = f"{100 * (total - missing) / total:.1f} % reflected" if total else "none measured"
            fl = floor.p99.median if floor is not None and floor.p99.n else math.nan
            out.append(
                Verdict(
                    f"{_PHASE_SHORT[key]}: {_VIEW_LABELS[name]}, {lr.rows:,} rows, 1k edits/s:"
                    " edit sent → subscriber's view, p99",
                    f"{ms(s.p99.median)} ms ({refl})",
                    f"send → delta without views (A) {ms(fl)} ms; ack → view {_p(a, 'p99')} ms",
                    f"{fmt(s.p99.median / fl, 1)}× A" if fl > 0 else "-",
                    "(reported beside)" if goal is None else f"≤ {goal:g} ms, 100 % reflected",
                    goal is not None and s.p99.median <= goal and clean,
                    info=goal is None,
                )
            )
    return out


def _memory_verdicts(m: MemoryResult) -> list[Verdict]:
    out: list[Verdict] = []
    base = m.steps.get(STEP_VIEWS_UP)
    if not m.arrow_bytes or base is None or not base.n:
        return out
    arrow = f"frame as Arrow {fmt(m.arrow_bytes / 1e6, 1)} MB"
    bare = growth(m.steps.get(STEP_CLIENT), base)
    if not math.isnan(bare):
        out.append(
            Verdict(
                f"memory of a {m.rows:,}-row room with no views, after a Python client joined (snapshot"
                " cache included), server + views process",
                f"{mb(bare)} MB",
                arrow,
                f"{fmt(bare / m.arrow_bytes, 1)}×",
                f"≤ {TARGET_BARE_RATIO:g}× the Arrow size",
                bare / m.arrow_bytes <= TARGET_BARE_RATIO,
            )
        )
    last = view_step(len(MEMORY_VIEWS))
    full = growth(m.steps.get(last), base)
    if not math.isnan(full):
        srv = growth(m.server.get(last), m.server.get(STEP_VIEWS_UP))
        vws = growth(m.views.get(last), m.views.get(STEP_VIEWS_UP))
        start = m.views[STEP_VIEWS_UP].median if STEP_VIEWS_UP in m.views else math.nan
        out.append(
            Verdict(
                f"memory of a {m.rows:,}-row room with {len(MEMORY_VIEWS)} views"
                f" ({len(MEMORY_COLUMNS)} columns used; a Perspective table if any needs one),"
                " server + views process",
                f"{mb(full)} MB (server {mb(srv)}, views process {mb(vws)})",
                f"{arrow}; the views process's start-up ({mb(start)} MB) not counted:"
                f" with it {fmt((full + start) / m.arrow_bytes, 1)}×",
                f"{fmt(full / m.arrow_bytes, 1)}×",
                f"≤ {TARGET_MEMORY_RATIO:g}× the Arrow size",
                full / m.arrow_bytes <= TARGET_MEMORY_RATIO,
            )
        )
    return out


def _fault_verdicts(r: ViewsResult) -> list[Verdict]:
    out: list[Verdict] = []
    ra, cfg = r.runaway, r.config
    if ra.ratio.n:
        out.append(
            Verdict(
                f"a runaway view in one room ({ra.rows:,} rows, `--views-timeout {ra.budget:g}`): another"
                " room's ack p99 while it runs",
                f"{ms(ra.during_p99.median)} ms",
                f"the same run before the runaway {ms(ra.base_p99.median)} ms",
                f"{fmt(ra.ratio.median)}× (median of runs)",
                f"≤ {TARGET_RUNAWAY_RATIO:g}×",
                ra.ratio.median <= TARGET_RUNAWAY_RATIO,
            )
        )
    if ra.close_s.n:
        limit = ra.budget + cfg.runaway_margin
        answers = ", ".join(f"{k} ×{v}" for k, v in ra.answers.items())
        out.append(
            Verdict(
                "the runaway view refused within its budget: its subscribe → the answer",
                f"{fmt(ra.close_s.median)} s ({answers})",
                f"budget (`--views-timeout`) {ra.budget:g} s",
                f"{fmt(ra.close_s.median / ra.budget)}× the budget",
                f"`too_expensive` or `closed` ≤ {limit:g} s",
                refused(ra.answers) and max(ra.close_s.runs) <= limit,
            )
        )
    k = r.kill
    if k.fresh_s.n:
        ok = (
            not any(math.isnan(x) for x in k.fresh_s.runs)
            and k.fresh_s.median <= TARGET_FRESH_S
            and not k.closed
            and not k.checks_failed
        )
        out.append(
            Verdict(
                f"views process SIGKILLed under 1k edits/s, {k.rows:,} rows, 3 views: SIGKILL → every view's"
                " fresh snapshot",
                f"{fmt(k.fresh_s.median)} s (worst run {fmt(max(k.fresh_s.runs))} s)"
                + (f"; {len(k.closed)} view(s) closed instead of rebuilt" if k.closed else ""),
                f"subscribing the 3 views {fmt(k.open_s.median, 1)} s",
                "-",
                f"≤ {TARGET_FRESH_S:g} s, content checks pass",
                ok,
            )
        )
    return out


# ---------------------------------------------------------------- sections


def views_sections(r: ViewsResult) -> list[tuple[str, str]]:
    """(order key, Markdown) of each section with figures."""
    out = [("5", _latency_md(r)), ("6", memory_md(r)), ("6b", runaway_md(r)), ("6c", kill_md(r))]
    return [(k, md) for k, md in out if md]


def _latency_md(r: ViewsResult) -> str:
    cfg, lr = r.config, r.latency
    if not lr.phases:
        return ""
    base = lr.phases.get("base")
    floor = base.lat.get("send→delta") if base is not None else None
    lines = [
        f"## 5. Live views under {cfg.rate:,.0f} edits/s ({lr.rows:,}-row room)",
        "",
        f"`coframe serve --memory --demo-rows {lr.rows}`, a fresh server per run; Perspective runs in"
        " the server's views process. A writer peer sends 1-cell `set` edits of `price` at"
        f" {cfg.rate:,.0f}/s, paced by a monotonic schedule (open loop, never waiting for acks); every"
        " value is unique, so every edit changes the grouped view. A subscriber peer (another"
        " connection, same process, same clock) holds the views. Every frame is timestamped on receipt."
        " For each edit acked as seq N: **send → view** = the writer sends the edit → the subscriber"
        " receives the first `view` message of that view with `seq` ≥ N (the target's measure);"
        " **ack → view** = the same from the writer's ack; the subscriber's `delta` is measured the"
        f" same way (the floor, same edits). Phases, on the same connections: **A** no views; **B** a"
        f" grouped view (`group_by` region, `sum` of price: computed from the room's frame) and a plain"
        f" view with a {cfg.viewport}-row viewport, unsorted (rids 0–{cfg.viewport - 1}); **C** the plain"
        " view replaced by one sorted by price descending; **D** (reported beside) B with the grouped"
        " view's aggregate a `high` (Perspective's own name for max), which only Perspective serves,"
        " in the views process. One edit in"
        f" {cfg.plain_every} is a *plain edit*, made to change the plain view (B and D: it writes one"
        f" of rids 0–{cfg.viewport - 1}; C: a new maximum price, so the row moves"
        " to the top); the plain views are measured on those edits only. Each phase: "
        f"{cfg.warmup:g} s of warm-up edits, {cfg.measure:g} s measured, then the run waits (at most"
        f" {cfg.drain:g} s) until every acked edit is reflected; one still not reflected is *missing*."
        " Then the final content of every view is checked against the expected state (the demo frame"
        f" rebuilt in the benchmark process plus every edit). Figures: p50 and p99 per run, median over"
        f" {cfg.runs} run(s). Goals (issue 11): send → view p99 ≤ 30 ms for the grouped and the"
        " viewport views, ≤ 100 ms for the sorted plain view.",
        "",
        "**Edit sent → received** (the goals). Ratio: p99 over the same run's phase-A send → delta"
        " (the room's path without views).",
        "",
        "| phase | what | p50 ms | p99 ms | p99 / A's send → delta | target | status | runs |",
        "|---|---|---:|---:|---:|---|---|---:|",
    ]
    for key, ph in lr.phases.items():
        items = [("send→ack", "send → writer's ack"), ("send→delta", "send → subscriber's delta")]
        items += [(f"send→{n}", f"send → {_VIEW_LABELS[n]}") for n in ph.views]
        for k, label in items:
            lat = ph.lat.get(k)
            if lat is None or not lat.p99.n:
                continue
            fl = floor.p99.median if floor is not None and floor.p99.n else math.nan
            ratio = f"{fmt(lat.p99.median / fl, 1)}×" if fl > 0 else "-"
            tgt, st = "", ""
            name = k.removeprefix("send→")
            if name in ph.views:
                _, missing = _reflected(ph, name)
                goal = view_target_ms(name)
                if goal is None:
                    tgt, st = "(reported beside)", "(info)"
                else:
                    ok = lat.p99.median <= goal and missing == 0 and not ph.checks_failed
                    tgt, st = f"p99 ≤ {goal:g} ms, 100 %", status(ok)
            lines.append(
                f"| {_PHASE_SHORT[key]} | {label} | {_p(lat, 'p50')} | {_p(lat, 'p99')} | {ratio}"
                f" | {tgt} | {st} | {lat.p99.n} |"
            )
    lines += [
        "",
        "**Writer's ack → subscriber's view** (beside: the room acks and broadcasts the tick's delta"
        " first, then hands it to the views; this is the views' own delay), with the subscriber's"
        " delta for the same edits:",
        "",
        "| phase | view | edits measured | missing | view p50 ms | view p99 ms | delta p50 ms"
        " | delta p99 ms | p99 view / delta | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, ph in lr.phases.items():
        d = ph.lat.get("ack→delta")
        for name in ph.views:
            a = ph.lat.get(f"ack→{name}")
            if a is None or d is None or not a.p99.n:
                continue
            total, missing = _reflected(ph, name)
            ratio = f"{fmt(a.p99.median / d.p99.median)}×" if d.p99.median > 0 else "-"
            lines.append(
                f"| {_PHASE_SHORT[key]} | {_VIEW_LABELS[name]} | {total:,} | {missing} | {_p(a, 'p50')}"
                f" | {_p(a, 'p99')} | {_p(d, 'p50')} | {_p(d, 'p99')} | {ratio} | {a.p99.n} |"
            )
    lines += _load_md(r)
    return "\n".join(lines) + "\n"


def _load_md(r: ViewsResult) -> list[str]:
    lr = r.latency
    lines = [
        "",
        "**The load, per phase** (medians over runs): the edit rate achieved in the measured window,"
        " the load generator's lateness against its schedule (p99), the CPU of the server and of its"
        " views process (all threads), deltas and view messages the subscriber received per second,"
        " rejected edits, and the content checks (every view's final content against the expected"
        " state).",
        "",
        "| phase | edits/s | edits per run (plain) | generator lag p99 ms | server CPU (cores)"
        " | views process CPU (cores) | deltas/s | view messages/s | errors | content checks"
        " | subscribe → snapshot s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for key, ph in lr.phases.items():
        if not ph.rate.n:
            continue
        ups = ", ".join(f"{n} {fmt(s.median, 1)}" for n, s in ph.updates_per_s.items()) or "-"
        errs = ", ".join(f"{k}: {n}" for k, n in ph.errors.items()) or "none"
        checks = f"{ph.checks_ok} passed" + (f", {len(ph.checks_failed)} FAILED" if ph.checks_failed else "")
        opened = ", ".join(f"{n} {runs(s, 2)}" for n, s in ph.open_s.items()) or "-"
        vcpu = fmt(ph.views_cpu.median) if ph.views_cpu.n else "-"
        lines.append(
            f"| {_PHASE_SHORT[key]} | {num(ph.rate.median)}"
            f" | {num(ph.sent.median)} ({num(ph.plain_sent.median)}) | {ms(ph.lag_p99_ms.median)}"
            f" | {fmt(ph.cpu.median)} | {vcpu} | {fmt(ph.deltas_per_s.median, 1)} | {ups}"
            f" | {errs} | {checks if ph.views else '-'} | {opened} |"
        )
    fails = [f for ph in lr.phases.values() for f in ph.checks_failed]
    per_run = []
    for key, ph in lr.phases.items():
        for name in ph.views:
            a, s = ph.lat.get(f"ack→{name}"), ph.lat.get(f"send→{name}")
            if a is not None and s is not None:
                per_run.append(
                    f"{_PHASE_SHORT[key]} {name}: send → view {runs(s.p99, 1)}; ack → view {runs(a.p99, 1)}"
                )
    lines += [
        "",
        f"Per-run p99 (ms): {'; '.join(per_run) or '-'}. Server start (spawn → `/healthz`):"
        f" {runs(lr.start_s, 1)} s. Subscribe → snapshot: the first subscribe of a run (B's grouped"
        " view) starts the views process and builds the room's table; a view that needs more columns"
        " than the table holds rebuilds it wider.",
    ]
    if fails:
        lines += ["", "Content check failures: " + "; ".join(f"`{f}`" for f in fails[:10]) + "."]
    return lines
