"""The policy group's verdict (summary row) and section 8 of ``RESULTS.md``."""

from __future__ import annotations

from .policydata import POLICIES
from .policyfanout import NONE_SIDE, POLICIES_SIDE, PolicyResult
from .targets import Verdict

__all__ = ["TARGET_POLICY_RATIO", "policy_verdicts", "policy_md"]

TARGET_POLICY_RATIO = 1.3  # p99 with 5 policies, × the same fan-out without policies


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _runs(xs: list[float], digits: int = 2) -> str:
    return ", ".join(f"{x:.{digits}f}" for x in xs) or "-"


def policy_verdicts(r: PolicyResult) -> list[Verdict]:
    pol, none = r.sides.get(POLICIES_SIDE), r.sides.get(NONE_SIDE)
    if pol is None or none is None or not pol.p99_ms.n or not none.p99_ms.n:
        return []
    p, n = pol.p99_ms.median, none.p99_ms.median
    cp, cn = pol.cpu_edit_us.median, none.cpu_edit_us.median
    readers = len(POLICIES) * r.config.readers_per_user
    return [
        Verdict(
            f"fan-out p99, 1 writer → {readers} readers over {len(POLICIES)} row/column policies"
            " (default durable mode, tokens)",
            f"{_f(p)} ms",
            f"the same {readers} readers without policies {_f(n)} ms",
            f"{_f(p / n)}×",
            f"≤ {TARGET_POLICY_RATIO:g}× no policies",
            p <= TARGET_POLICY_RATIO * n,
        ),
        Verdict(
            f"server CPU per edit, {readers} readers over {len(POLICIES)} policies (reported beside)",
            f"{_f(cp, 0)} µs",
            f"no policies {_f(cn, 0)} µs",
            f"{_f(cp / cn)}×",
            "(beside the p99 target)",
            True,
            info=True,
        ),
    ]


def policy_md(r: PolicyResult) -> str:
    """Section 8: the two sides, the policies, the checks."""
    cfg = r.config
    pol, none = r.sides.get(POLICIES_SIDE), r.sides.get(NONE_SIDE)
    if pol is None or none is None or not pol.p99_ms.n or not none.p99_ms.n:
        return ""
    readers = len(POLICIES) * cfg.readers_per_user
    ratio = pol.p99_ms.median / none.p99_ms.median
    lines = [
        f"## 8. Fan-out under row and column policies (issue 12): {readers} readers over {len(POLICIES)}"
        " policies vs none",
        "",
        f"Two `coframe serve --auth token` servers in the default durable configuration (a temporary"
        f" `--data-dir`, SQLite catalog), each on a copy of one data directory prepared with the operator"
        f" CLI (`coframe user add`, `coframe grant`, `coframe token create`): the demo `sales` room,"
        f" {cfg.rows:,} rows. *Policies*: {readers} readers sign in (`?token=`) as the {len(POLICIES)}"
        f" users below, {cfg.readers_per_user} connections each, whose viewer grants each carry a row"
        f" predicate and hidden columns ({len(POLICIES)} distinct audiences). *None*: {readers} readers"
        f" sign in as {len(POLICIES)} users whose viewer grants carry no policy. The writer is an editor"
        " without a policy on both. Closed loop as in section 1: one 1-cell `set` of `price` on a random"
        " rid in flight; latency = the writer's send → the LAST reader received and msgpack-decoded the"
        " delta of that seq (every reader gets a delta per seq; under a policy it may carry no row, and"
        f" each reader checks its seqs are contiguous). {cfg.edits} timed edits per run and side after"
        f" {cfg.warmup} warm-up edits; the sides alternate, the order rotating every run; figures are"
        f" medians over {pol.p99_ms.n} runs of each run's percentile. Server CPU: all threads"
        " (schedstat) over the timed edits, per edit. The servers' autocommit runs as in production"
        " (60 s), on both sides.",
        "",
        "| readers | p50 ms | p99 ms | p99 ratio | target | status | server CPU µs per edit | edits/s"
        " | runs |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|",
        f"| {readers}, no policies | {_f(none.p50_ms.median)} | {_f(none.p99_ms.median)} | 1.00× | | |"
        f" {_f(none.cpu_edit_us.median, 0)} | {none.rate.median:,.0f} | {none.p99_ms.n} |",
        f"| {readers}, {len(POLICIES)} policies | {_f(pol.p50_ms.median)} | {_f(pol.p99_ms.median)}"
        f" | {_f(ratio)}× | p99 ≤ {TARGET_POLICY_RATIO:g}× no policies"
        f" | {'MET' if ratio <= TARGET_POLICY_RATIO else '**MISSED**'} | {_f(pol.cpu_edit_us.median, 0)}"
        f" | {pol.rate.median:,.0f} | {pol.p99_ms.n} |",
        "",
        f"Per-run p50 (ms): policies {_runs(pol.p50_ms.runs)}; none {_runs(none.p50_ms.runs)}.",
        f"Per-run p99 (ms): policies {_runs(pol.p99_ms.runs)}; none {_runs(none.p99_ms.runs)}.",
    ]
    pairs = [a / b for a, b in zip(pol.p99_ms.runs, none.p99_ms.runs, strict=False) if b > 0]
    if pairs:
        lines.append(
            f"Per-run p99 ratios (the two sides back to back): {', '.join(f'{x:.2f}×' for x in pairs)}."
        )
    lines.append(
        f"Per-run server CPU per edit (µs): policies {_runs(pol.cpu_edit_us.runs, 0)};"
        f" none {_runs(none.cpu_edit_us.runs, 0)}."
    )
    lines += [
        "",
        f"| policy user ({cfg.readers_per_user} readers) | rows | hidden | share of rows"
        " | delta bytes (median) | checked edits it saw |",
        "|---|---|---|---:|---:|---:|",
    ]
    for p in POLICIES:
        share = f"{r.shares[p.user]:.0%}" if p.user in r.shares else "-"
        lines.append(
            f"| `{p.user}` | `{p.rows}` | {', '.join(f'`{c}`' for c in p.hide)} | {share}"
            f" | {r.delta_bytes.get(p.user, 0)} | {r.visible_edits.get(p.user, 0) // cfg.readers_per_user} |"
        )
    plain = r.delta_bytes.get(f"{NONE_SIDE}: no policy")
    if plain is not None:
        lines.append(f"| no policy (5 users) | - | - | 100% | {plain} | all |")
    lines += [
        "",
        f"Checks (fail the group on any violation): one delta in {cfg.sample_every} of every reader,"
        " decoded with `protocol.decode_server` after each run: no hidden column in the upserts, every"
        " upserted row satisfies the reader's predicate, the edited row is upserted exactly when the"
        " room's own snapshot (the writer's welcome) says the predicate admits it, with the written"
        " `price` (unless hidden), nothing deleted; each policy's first reader's welcome snapshot"
        " holds exactly the admitted rows and no hidden column. This run:"
        f" {r.checked_deltas:,} delta copies and {r.checked_rows:,} upserted rows checked, no violation;"
        f" data directory prepared in {r.prepare_s:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
