"""Sections 6, 6b and 6c of ``RESULTS.md`` (the views group), and the group's formatting helpers.

6 is the memory of a room with live views (server and views process, apart
and summed), 6b a runaway view against another room's acks, 6c the views
process killed under load. :mod:`bench.viewsreport` holds the verdicts and
section 5.
"""

from __future__ import annotations

import math

from .common import Stats, median
from .viewfaults import OTHER, RUNAWAY_EXPR
from .viewmemory import (
    MEMORY_COLUMNS,
    MEMORY_VIEWS,
    PERSPECTIVE_VIEW,
    STEP_CLIENT,
    STEP_PERSPECTIVE,
    STEP_ROOM,
    STEP_START,
    STEP_VIEWS_UP,
    view_step,
)
from .views import (
    TARGET_BARE_RATIO,
    TARGET_FRESH_S,
    TARGET_MEMORY_RATIO,
    TARGET_RUNAWAY_RATIO,
    MemoryResult,
    ViewsResult,
)

__all__ = [
    "memory_md",
    "runaway_md",
    "kill_md",
    "refused",
    "growth",
    "fmt",
    "num",
    "ms",
    "mb",
    "runs",
    "status",
]


def fmt(x: float, digits: int = 2) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def num(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:,.0f}"


def ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def mb(x: float) -> str:
    return f"{x / 1e6:,.0f}"


def runs(s: Stats, digits: int = 0, scale: float = 1.0) -> str:
    return ", ".join("-" if math.isnan(x) else f"{x * scale:,.{digits}f}" for x in s.runs) or "-"


def status(met: bool) -> str:
    return "MET" if met else "**MISSED**"


def growth(step: Stats | None, base: Stats | None) -> float:
    """Median over runs of (reading at ``step`` − reading at ``base``), bytes (NaN if either is missing)."""
    if step is None or base is None or not step.n or not base.n:
        return math.nan
    return median([a - b for a, b in zip(step.runs, base.runs, strict=False)])


def refused(answers: dict[str, int]) -> bool:
    return bool(answers) and all(a in ("error too_expensive", "view closed") for a in answers)


def memory_md(r: ViewsResult) -> str:
    cfg, m = r.config, r.memory
    base = m.steps.get(STEP_VIEWS_UP)
    if not m.arrow_bytes or base is None or not base.n:
        return ""
    lines = [
        f"## 6. Memory of a {m.rows:,}-row room with live views: server + views process",
        "",
        "Resident set size (psutil) of the `coframe serve` process and of its views process (its child"
        " running `server.perspective.worker`), apart and summed. The data directory is prepared by one"
        " earlier start, which commits the demo and a 10-row dataset; each run restarts the server on"
        " it, so no dataset is in memory until a room loads. Readings, in order: after start (no views"
        " process yet); after a Python client of the 10-row room subscribed one view with an expression"
        " (which Perspective serves: the views process's start-up, the *base* of the room figures);"
        " after a raw peer resumed into the room"
        " (`hello` with `since`: the room loads, no snapshot is encoded); after a Python client joined"
        " (`connect()`: full snapshot, which the server caches per state: the room with no views);"
        f" after each of {len(MEMORY_VIEWS)} `room.subscribe_view` calls (each returns with the view's"
        f" snapshot; together they use {len(MEMORY_COLUMNS)} columns, {', '.join(MEMORY_COLUMNS)}, and"
        " the room's table holds only those). Each reading starts after"
        f" {cfg.settle} round trips (`/healthz` or `ping`); RSS is then read between further round"
        f" trips every {cfg.settle_every:g} s until the total moved by at most {cfg.settle_mb:g} MB over"
        f" {cfg.settle_window:g} s (at most {cfg.settle_max:g} s); the reading is the median of the last"
        " 3 reads. *Transient* = the first read − the settled reading. *Room* = total − the base"
        " reading; ratio = room / the room frame's Arrow size (`frame_to_arrow` of the normalized demo"
        f" frame, with `_rid`: {fmt(m.arrow_bytes / 1e6, 1)} MB; without `_rid`"
        f" {fmt(m.arrow_bytes_raw / 1e6, 1)} MB; only the {len(MEMORY_COLUMNS)} columns the views use,"
        f" with `_rid`: {fmt(m.arrow_bytes_used / 1e6, 1)} MB). Median over {base.n} run(s).",
        "",
        "| reading | server MB | views process MB | total MB | room MB | room / Arrow size | target"
        " | status | transient MB | settled after s | runs |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    labels = [STEP_START, STEP_VIEWS_UP, STEP_ROOM, STEP_CLIENT]
    labels += [view_step(i) for i in range(1, len(MEMORY_VIEWS) + 1)] + [STEP_PERSPECTIVE]
    goals = {STEP_CLIENT: TARGET_BARE_RATIO, view_step(len(MEMORY_VIEWS)): TARGET_MEMORY_RATIO}
    for label in labels:
        s = m.steps.get(label)
        if s is None or not s.n:
            continue
        room = growth(s, base)
        roomy = label not in (STEP_START, STEP_VIEWS_UP)
        tgt, st = "", ""
        if label in goals:
            tgt, st = f"≤ {goals[label]:g}×", status(room / m.arrow_bytes <= goals[label])
        transient = max(0.0, growth(m.first.get(label), s))
        settled = m.settle_s.get(label)
        lines.append(
            f"| {label} | {mb(m.server[label].median)} | {mb(m.views[label].median)} | {mb(s.median)}"
            f" | {mb(room) if roomy else ''} | {fmt(room / m.arrow_bytes, 1) + '×' if roomy else ''}"
            f" | {tgt} | {st} | {mb(transient)} | {fmt(settled.median, 1) if settled else '-'} | {s.n} |"
        )
    lines += _breakdown_md(m)
    return "\n".join(lines) + "\n"


def _breakdown_md(m: MemoryResult) -> list[str]:
    last = view_step(len(MEMORY_VIEWS))
    if last not in m.steps:
        return []
    srv = growth(m.server.get(last), m.server.get(STEP_VIEWS_UP))
    srv_bare = growth(m.server.get(STEP_CLIENT), m.server.get(STEP_VIEWS_UP))
    vws = growth(m.views.get(last), m.views.get(STEP_VIEWS_UP))
    start = m.views[STEP_VIEWS_UP].median
    a = m.arrow_bytes
    lines = [
        "",
        f"**Breakdown with the {len(MEMORY_VIEWS)} views** (median of the per-run"
        f" differences to the base): the server process {mb(srv)} MB ({fmt(srv / a, 1)}× the Arrow"
        f" size; {mb(srv_bare)} MB of it with no views, so the views added {mb(srv - srv_bare)} MB to"
        f" the server); the views process {mb(vws)} MB over its start-up ({fmt(vws / a, 1)}×: no view"
        " here needs a Perspective table, so it holds none for this room; the reading beside shows what"
        " the first Perspective-served view costs). The views process's start-up (interpreter,"
        f" Perspective, a 10-row table) is {mb(start)} MB, paid once per node whatever the rooms;"
        f" counted in, the room would be {fmt((srv + vws + start) / a, 1)}×.",
        "",
        "Each view: its config, its total row count, subscribe → snapshot, and the RSS it added to each"
        " process (median over runs of the difference to the reading before it).",
        "",
        "| # | view | rows | subscribe → snapshot s | server MB added | views process MB added |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    prev = STEP_CLIENT
    for i, (label, _kw) in enumerate(MEMORY_VIEWS, 1):
        step = view_step(i)
        if step not in m.steps:
            break
        o = m.view_open_s.get(label)
        lines.append(
            f"| {i} | {label} | {m.view_rows.get(label, 0):,} | {fmt(o.median, 2) if o else '-'}"
            f" | {mb(growth(m.server.get(step), m.server.get(prev)))}"
            f" | {mb(growth(m.views.get(step), m.views.get(prev)))} |"
        )
        prev = step
    label, _ = PERSPECTIVE_VIEW
    if STEP_PERSPECTIVE in m.steps:
        o = m.view_open_s.get(label)
        lines.append(
            f"| beside | {label} | {m.view_rows.get(label, 0):,} | {fmt(o.median, 2) if o else '-'}"
            f" | {mb(growth(m.server.get(STEP_PERSPECTIVE), m.server.get(prev)))}"
            f" | {mb(growth(m.views.get(STEP_PERSPECTIVE), m.views.get(prev)))} |"
        )
    per_run = "; ".join(
        f"{label.split(' (')[0].split(':')[0]}: {runs(m.server[label], 0, 1e-6)} +"
        f" {runs(m.views[label], 0, 1e-6)}"
        for label in (STEP_START, STEP_VIEWS_UP, STEP_CLIENT, view_step(1), last, STEP_PERSPECTIVE)
        if label in m.server
    )
    lines += ["", f"Per-run RSS (MB), server + views process: {per_run}."]
    return lines


def runaway_md(r: ViewsResult) -> str:
    ra, cfg = r.runaway, r.config
    if not ra.close_s.n:
        return ""
    limit = ra.budget + cfg.runaway_margin
    lines = [
        "## 6b. A runaway view in one room, acks in another",
        "",
        f"`coframe serve --memory --demo-rows {ra.rows} --views-timeout {ra.budget:g} --dataset"
        f" {OTHER}=<a {ra.other_rows:,}-row CSV>`, a fresh server per run. A writer peer on `{OTHER}`"
        " sends 1-cell `set` edits closed-loop (the next edit leaves as the last one's ack arrives) and"
        " times send → ack. A subscriber peer on `sales` first opens a grouped `high` view"
        " (Perspective's max, which only it serves: so the views"
        " process"
        f" runs and the table is built); after {cfg.runaway_base:g} s of baseline acks it subscribes"
        f' `columns: ["r"]`, `expressions: {{"r": \'{RUNAWAY_EXPR}\'}}` (1M iterations per row ×'
        f" {ra.rows:,} rows: far over the budget). *During* = the edits sent between that subscribe and"
        " its answer; *after* = from the answer until the grouped view's fresh snapshot (the views of"
        " `sales` rebuilt in a new views process). Ratio per run: p99 during / p99 before; medians over"
        f" {ra.close_s.n} run(s).",
        "",
        "| measure | median | per run | target | status |",
        "|---|---:|---|---|---|",
        f"| `{OTHER}`: send → ack p50 before, ms | {ms(ra.base_p50.median)} | {runs(ra.base_p50, 2)} | | |",
        f"| `{OTHER}`: send → ack p99 before, ms | {ms(ra.base_p99.median)} | {runs(ra.base_p99, 2)} | | |",
        f"| `{OTHER}`: send → ack p50 during the runaway, ms | {ms(ra.during_p50.median)}"
        f" | {runs(ra.during_p50, 2)} | | |",
        f"| `{OTHER}`: send → ack p99 during the runaway, ms | {ms(ra.during_p99.median)}"
        f" | {runs(ra.during_p99, 2)} | | |",
        f"| `{OTHER}`: p99 during / before | {fmt(ra.ratio.median)}× | {runs(ra.ratio, 2)}"
        f" | ≤ {TARGET_RUNAWAY_RATIO:g}× | {status(ra.ratio.median <= TARGET_RUNAWAY_RATIO)} |",
        f"| `{OTHER}`: acks before / during / after (per run) | - | {runs(ra.base_n)} / {runs(ra.during_n)}"
        f" / {runs(ra.after_n)} | | |",
        f"| the runaway's subscribe → its answer, s | {fmt(ra.close_s.median)} | {runs(ra.close_s, 2)}"
        f" | `too_expensive`/`closed` ≤ {limit:g} s"
        f" | {status(refused(ra.answers) and max(ra.close_s.runs) <= limit)} |",
        f"| the answer → `sales`'s grouped view rebuilt (fresh snapshot), s | {fmt(ra.recover_s.median)}"
        f" | {runs(ra.recover_s, 2)} | | |",
        f"| `{OTHER}`: send → ack p99 meanwhile, ms | {ms(ra.after_p99.median)} | {runs(ra.after_p99, 2)}"
        " | | |",
        f"| the views process's CPU during the runaway, cores | {fmt(ra.views_cpu.median)}"
        f" | {runs(ra.views_cpu, 2)} | | |",
        "",
        f"Answers to the runaway's subscribe: {', '.join(f'`{k}` ×{v}' for k, v in ra.answers.items())}."
        + (f" Its message: “{ra.reason}”." if ra.reason else "")
        + (f" Rejected edits: {dict(ra.errors)}." if ra.errors else ""),
    ]
    return "\n".join(lines) + "\n"


def kill_md(r: ViewsResult) -> str:
    k, cfg = r.kill, r.config
    if not k.fresh_s.n:
        return ""
    views = " | ".join(f"{n} s" for n in k.per_view)
    lines = [
        f"## 6c. The views process killed under {cfg.rate:,.0f} edits/s ({k.rows:,}-row room)",
        "",
        f"`coframe serve --memory --demo-rows {k.rows}`, a fresh server per run, the load of section 5"
        " (writer and subscriber peers, open loop) with three views: grouped (`high`, Perspective's"
        " max, of price by region,"
        " served by Perspective),"
        f" plain with a {cfg.viewport}-row viewport (rids 0–{cfg.viewport - 1}), and plain sorted by"
        f" price desc. Every edit writes a new maximum price, so the grouped and the sorted views"
        f" change with each one (a grouped max only changes then); every {cfg.plain_every}th writes"
        f" it into rids 0–{cfg.viewport - 1}, so it changes the plain view too."
        f" {cfg.kill_before:g} s into the load the views"
        " process (the server's child running `server.perspective.worker`) gets SIGKILL; the figure is"
        " SIGKILL → the subscriber received, for every view, a message reflecting the room as of the"
        " kill or later (`seq` ≥ the highest acked at the kill): a Perspective view's fresh `snapshot`"
        " (no `re`) once its table is rebuilt, or the next `update` of a view served from the room's"
        " frame (plain views: the kill does not touch them)."
        f" The load goes on {cfg.kill_after:g} s more, the run waits until every edit is"
        " reflected, and each view's content is checked against the expected state. *Behind* = edits"
        " the writer had acked that a fresh snapshot did not reflect when it arrived, and *age* = its"
        " arrival − the ack of the last edit it reflects (the worst view of the run): the table is"
        " rebuilt from the room's state when the rebuild starts; the edits after it follow as updates.",
        "",
        f"| run | every view fresh s | {views} | behind (edits) | age s | room's send → ack p99 before, ms"
        " | … between SIGKILL and the last snapshot, ms |",
        "|---:|---:|" + "---:|" * len(k.per_view) + "---:|---:|---:|---:|",
    ]
    for i in range(k.fresh_s.n):
        per = " | ".join(fmt(s.runs[i]) if i < s.n else "-" for s in k.per_view.values())
        lines.append(
            f"| {i + 1} | {fmt(k.fresh_s.runs[i])} | {per} | {num(k.behind.runs[i])} | {fmt(k.age_s.runs[i])}"
            f" | {ms(k.ack_before_p99.runs[i])} | {ms(k.ack_during_p99.runs[i])} |"
        )
    ok = k.fresh_s.median <= TARGET_FRESH_S and not k.closed and not k.checks_failed
    lines += [
        "",
        f"Median: every view fresh after {fmt(k.fresh_s.median)} s (goal ≤ {TARGET_FRESH_S:g} s):"
        f" {status(ok)}."
        + (
            f" In {sum(math.isnan(x) for x in k.fresh_s.runs)} run(s) not every view got a fresh snapshot"
            f" (within {cfg.kill_limit:g} s, or the server closed it)."
            if any(math.isnan(x) for x in k.fresh_s.runs)
            else ""
        )
        + f" Subscribing the three views before the kill took {runs(k.open_s, 1)} s."
        f" A new views process was running afterwards in {k.restarted} of {k.fresh_s.n} run(s)."
        f" Content checks: {k.checks_ok} passed, {len(k.checks_failed)} failed"
        + (f" ({'; '.join(f'`{x}`' for x in k.checks_failed[:5])})" if k.checks_failed else "")
        + ". Views closed instead of rebuilt: "
        + ("; ".join(f"`{x}`" for x in k.closed) if k.closed else "none")
        + "."
        + (f" Errors: {dict(k.errors)}." if k.errors else ""),
    ]
    return "\n".join(lines) + "\n"
