"""Entry point: ``python -m bench.run [--quick] [--only GROUP] [--modes memory,durable] [--no-profile]``.

Runs the benchmarks of the issues' performance targets, in six groups:

* ``fanout`` (issue 2): 1. fan-out latency, 1 writer → N readers, and
  3. server CPU per delivered message (:mod:`bench.fanout`);
* ``sustained`` (issue 2): 2. sustained edits into a 1M-row room
  (:mod:`bench.sustained`);
* ``storage`` (issue 3): commit of a 1-cell change, join of a 1M-row room,
  recovery of 100k WAL entries, and throughput with the WAL on vs off
  (:mod:`bench.storage`);
* ``views`` (issue 11's targets): live Perspective views of a 1M-row room
  under 1k edits/s (latency to the subscriber), the memory of the server
  and its views process with the room's table and 10 views, a runaway view
  against another room's acks, and the views process killed under load
  (:mod:`bench.views`, :mod:`bench.viewmemory`, :mod:`bench.viewfaults`);
* ``client`` (issue 9): the Python client's mirror applying a 1-cell delta
  at 10k and 1M rows, and its ``set_cells`` round trip against a lean
  protocol peer's (:mod:`bench.pyclient`);
* ``policy`` (issue 12): fan-out to 50 readers split over 5 row/column
  policies against the same 50 readers without policies, tokens required,
  default durable mode, with leak checks (:mod:`bench.policyfanout`).

Each server runs in its own subprocess on 127.0.0.1 and is killed on exit;
the load generator runs here. The fan-out and sustained groups run coframe
in both modes (``--modes``): with ``--memory`` (the latency targets) and in
the default durable configuration (a temporary data directory, SQLite
catalog), reported side by side; the issue-9 targets are ratios to
baselines of the same run (:mod:`bench.targets`). For every missed target a py-spy
profile of the server is taken under the same load. Each group writes its
section file ``bench/results/<group>.md``, and ``bench/RESULTS.md`` is
assembled from all of them, so ``--only storage`` keeps the issue-2 figures.
The full run takes about 25 minutes on 2 cores; ``--quick`` is a shorter
smoke run (about 6 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType

from .common import (
    BENCH_DIR,
    DURABLE,
    MEMORY,
    MODES,
    PROFILE_DIR,
    ServerProcess,
    baseline_argv,
    coframe_running,
    free_ports,
    pycrdt_argv,
    running,
    views_process,
)
from .fanout import BROADCAST, COFRAME, COFRAME_DURABLE, PYCRDT, FanoutConfig, System, run_fanout
from .policydata import prepared, serve_argv
from .policyfanout import NONE_SIDE, POLICIES_SIDE, PolicyConfig, PolicyResult, Side, run_policy
from .policyreport import policy_verdicts
from .profiling import profile_while
from .pyclient import ClientConfig, run_client
from .report import (
    GROUPS,
    Report,
    fanout_verdicts,
    machine_info,
    render,
    storage_verdicts,
    sustained_verdicts,
)
from .storage import StorageBench, StorageConfig, raw_join
from .sustained import SustainedConfig, Swarm, run_sustained
from .viewfaults import kill, runaway
from .viewmemory import memory
from .views import PHASES, ViewLoad, ViewsBench, ViewsConfig, missed_phases

__all__ = ["main"]

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def _configs(quick: bool) -> tuple[FanoutConfig, SustainedConfig, StorageConfig, int]:
    """(fan-out config, sustained config, storage config, profile seconds)."""
    if quick:
        return (
            FanoutConfig(runs=3, edits=150, warmup=20),
            SustainedConfig(runs=3, warmup=0.5, measure=2.0, scatter_reps=50),
            StorageConfig(runs=2, commits=3, cold_joins=2, wal_ops=20_000, measure=2.0, profile_s=3),
            4,
        )
    return FanoutConfig(), SustainedConfig(), StorageConfig(), 8


def _client_config(quick: bool) -> ClientConfig:
    if quick:
        return ClientConfig(runs=3, deltas=200, rt_edits=150, rt_warmup=20)
    return ClientConfig()


def _policy_config(quick: bool) -> PolicyConfig:
    if quick:
        return PolicyConfig(runs=2, edits=200, warmup=20, profile_s=4)
    return PolicyConfig()


def _views_config(quick: bool) -> ViewsConfig:
    if quick:
        return ViewsConfig(
            runs=1,
            rows=200_000,
            warmup=0.5,
            measure=3.0,
            mem_runs=1,
            mem_rows=200_000,
            runaway_runs=1,
            runaway_base=3.0,
            kill_runs=1,
            kill_rows=200_000,
            profile_s=3,
        )
    return ViewsConfig()


# ---------------------------------------------------------------- benchmarks


def _check_logs(rep: Report, group: str, servers: list[ServerProcess]) -> None:
    """Report errors a server logged during the run (a server bug is a finding, not noise)."""
    for srv in servers:
        _note_problems(rep, group, srv.name, srv.problems())


def _note_problems(rep: Report, group: str, name: str, lines: list[str]) -> None:
    if lines:
        shown = "; ".join(f"`{ln.strip()[:160]}`" for ln in lines)
        rep.note(group, f"server `{name}` logged errors during the run: {shown}")


def _have_pycrdt_websocket() -> bool:
    try:
        import pycrdt.websocket  # noqa: F401
    except ImportError:
        return False
    return True


async def _fanout(rep: Report, cfg: FanoutConfig, profile_s: int) -> None:
    p_cf, p_dur, p_bl, p_py = free_ports(4)
    servers: dict[str, ServerProcess] = {}
    with contextlib.ExitStack() as stack:
        if MEMORY in cfg.modes:
            servers[COFRAME] = stack.enter_context(coframe_running("coframe", p_cf, cfg.rows, MEMORY))
        if DURABLE in cfg.modes:
            servers[COFRAME_DURABLE] = stack.enter_context(
                coframe_running("coframe-durable", p_dur, cfg.rows, DURABLE)
            )
        servers[BROADCAST] = stack.enter_context(running("broadcast", baseline_argv(p_bl), p_bl))
        if cfg.pycrdt and _have_pycrdt_websocket():
            servers[PYCRDT] = stack.enter_context(running("pycrdt", pycrdt_argv(p_py), p_py))
        elif cfg.pycrdt:
            rep.note("fanout", "pycrdt-websocket is not installed: its optional fan-out baseline was skipped")
        log("fan-out: " + ", ".join(f"{k} pid {v.pid}" for k, v in servers.items()) + f"; {cfg.rows:,} rows")
        result, systems = await run_fanout(servers, cfg, log)
        rep.fanout = result
        try:
            missed = [v for v in fanout_verdicts(result) if not v.met]
            target = COFRAME if COFRAME in systems else COFRAME_DURABLE
            if missed and profile_s:
                n = cfg.readers[-1]
                log(f"fan-out: {len(missed)} target(s) missed; profiling {target} at N={n}")
                system = systems[target]
                rep.profiles["fanout"] = await profile_while(
                    f"fanout_n{n}_coframe", servers[target].pid, _edit_until(system), profile_s
                )
        finally:
            for s in systems.values():
                s.close()
    _check_logs(rep, "fanout", list(servers.values()))


def _edit_until(system: System):  # -> Workload
    async def work(stop: asyncio.Event) -> None:
        async with asyncio.timeout(300):
            for _ in range(1_000_000):
                if stop.is_set():
                    return
                await system.one_edit()

    return work


async def _sustained(rep: Report, cfg: SustainedConfig, profile_s: int) -> None:
    ports = free_ports(len(cfg.modes) + 1)
    with contextlib.ExitStack() as stack:
        coframes = {
            mode: stack.enter_context(
                coframe_running("coframe" if mode == MEMORY else f"coframe-{mode}", port, cfg.rows, mode)
            )
            for mode, port in zip(cfg.modes, ports, strict=False)
        }
        bl = stack.enter_context(running("echo", baseline_argv(ports[-1]), ports[-1]))
        log(
            "sustained: "
            + ", ".join(f"coframe {m} pid {s.pid}" for m, s in coframes.items())
            + f" ({cfg.rows:,} rows), baseline pid {bl.pid}"
        )
        result, swarms = await run_sustained(coframes, bl, cfg, log)
        rep.sustained = result
        try:
            for v in sustained_verdicts(result):
                if v.met or not profile_s or ("batched" not in v.what and "single-op" not in v.what):
                    continue
                durable = "durable" in v.what
                key = f"coframe-{DURABLE}" if durable else "coframe"
                if key not in swarms:
                    continue
                swarm = swarms[key]
                batched = "batched" in v.what
                name = (
                    "sustained_" + ("batched" if batched else "single_op") + ("_durable" if durable else "")
                )
                if name in rep.profiles:
                    continue
                log(f"sustained: missed '{v.what}'; profiling {key}")
                swarm.use(cfg.batch_cells if batched else 1)
                rep.profiles[name] = await profile_while(name, swarm.server.pid, _churn(swarm), profile_s)
        finally:
            for s in swarms.values():
                s.close()
        servers = [*coframes.values(), bl]
    _check_logs(rep, "sustained", servers)


def _churn(swarm: Swarm):  # -> Workload
    async def work(stop: asyncio.Event) -> None:
        await swarm.churn(stop)

    return work


async def _storage(rep: Report, cfg: StorageConfig, profile_s: int) -> None:
    """The storage group: each part runs even if an earlier one failed (the failure is noted)."""
    bench = StorageBench(cfg, log)
    rep.storage = bench.result
    prof_s = min(profile_s, cfg.profile_s) if profile_s else 0

    failures: list[str] = []

    async def part(what: str, fn: Callable[[], Awaitable[None]]) -> None:
        log(f"storage: {what}")
        try:
            await fn()
        except Exception as e:
            log(f"storage: {what} FAILED: {e!r}")
            traceback.print_exc()
            failures.append(what)
            rep.note("storage", f"`{what}` failed: `{e!r}` (see the run's output)")

    async def layer() -> None:
        bench.commit_layer()

    async def joins() -> None:
        srv = await bench.joins_and_commits()
        try:
            if prof_s:
                await _storage_join_profiles(rep, bench, srv.pid, srv.url, prof_s)
        finally:
            bench.retire(srv)

    async def throughput() -> None:
        systems = await bench.throughput()
        try:
            missed = [v for v in storage_verdicts(bench.result) if not v.met and "WAL on" in v.what]
            for v in missed if prof_s else []:
                name = "postgresql" if "PostgreSQL" in v.what else "sqlite"
                srv, swarm = systems[name]
                log(f"storage: missed '{v.what}'; profiling coframe ({name})")
                swarm.use(1)
                rep.profiles[f"storage_wal_{name}"] = await profile_while(
                    f"storage_wal_{name}", srv.pid, _churn(swarm), prof_s
                )
        finally:
            for srv, swarm in systems.values():
                swarm.close()
                bench.retire(srv)

    try:
        await part("1. commit of a 1-cell change, storage layer", layer)
        await part("2. joins of a 1M-row room, and 1. commits end to end", joins)
        await part("4. acked op throughput, WAL on vs off", throughput)
        await part("3. recovery of the WAL", bench.recovery)
    finally:
        await bench.aclose()
        for name, lines in bench.problems:
            _note_problems(rep, "storage", name, lines)
        for n in bench.result.notes:
            rep.note("storage", n)
    if failures:
        raise RuntimeError(f"{len(failures)} storage part(s) failed: {'; '.join(failures)}")


async def _storage_join_profiles(rep: Report, bench: StorageBench, pid: int, url: str, seconds: int) -> None:
    """Profiles of the commit and join misses, on the 1M-row server."""
    verdicts = [v for v in storage_verdicts(bench.result) if not v.met]
    if any("commit" in v.what for v in verdicts):
        log("storage: a commit target was missed; profiling coframe under set + commit")
        rep.profiles["storage_commit"] = await profile_while(
            "storage_commit", pid, bench.commit_workload(url), seconds
        )
    if any("joins" in v.what for v in verdicts):
        log("storage: the join target was missed; profiling coframe under client joins")
        rep.profiles["storage_join_client"] = await profile_while(
            "storage_join_client", pid, bench.join_workload(url), seconds
        )
        log("storage: profiling coframe under raw-peer joins (no permessage-deflate)")
        rep.profiles["storage_join_raw"] = await profile_while(
            "storage_join_raw", pid, _raw_joins(url), seconds
        )


def _raw_joins(url: str):  # -> Workload
    async def work(stop: asyncio.Event) -> None:
        for i in range(1000):
            if stop.is_set():
                return
            await raw_join(url, f"bench-profile-{i}")

    return work


async def _views(rep: Report, cfg: ViewsConfig, profile_s: int) -> None:
    """The views group: latency (profiles of missed phases), memory, runaway, kill; each part runs."""
    bench = ViewsBench(cfg, log)
    rep.views = bench.result
    prof_s = min(profile_s, cfg.profile_s) if profile_s else 0
    failures: list[str] = []

    async def part(what: str, fn: Callable[[], Awaitable[None]]) -> None:
        log(f"views: {what}")
        try:
            await fn()
        except Exception as e:
            log(f"views: {what} FAILED: {e!r}")
            traceback.print_exc()
            failures.append(what)
            rep.note("views", f"`{what}` failed: `{e!r}` (see the run's output)")

    async def latency() -> None:
        live = await bench.latency()
        try:
            for key in missed_phases(bench.result) if prof_s else []:
                phase = next(p for p in PHASES if p.key == key)
                log(f"views: a target of phase {phase.label!r} was missed; profiling coframe under its load")
                await live.load.use(phase)
                rep.profiles[f"views_{key}"] = await profile_while(
                    f"views_{key}", live.server.pid, _view_churn(live.load, phase.plain), prof_s
                )
                vp = views_process(live.server.pid)
                if vp is not None:  # where Perspective runs: the Python line of each native call
                    log(f"views: profiling the views process (pid {vp.pid}) under the same load")
                    rep.profiles[f"views_{key}_process"] = await profile_while(
                        f"views_{key}_process", vp.pid, _view_churn(live.load, phase.plain), prof_s
                    )
        finally:
            live.load.close()
            bench.retire(live.server)

    try:
        await part("5. view latency under 1k edits/s", latency)
        await part("6. memory of the server and its views process, table and 10 views", _bind(memory, bench))
        await part("6b. a runaway view against another room's acks", _bind(runaway, bench))
        await part("6c. the views process killed under load", _bind(kill, bench))
    finally:
        bench.close()
        for name, lines in bench.problems:
            _note_problems(rep, "views", name, lines)
        for n in bench.result.notes:
            rep.note("views", n)
    if failures:
        raise RuntimeError(f"{len(failures)} views part(s) failed: {'; '.join(failures)}")


async def _client(rep: Report, cfg: ClientConfig, profile_s: int) -> None:
    """The client group: in-process mirror applies, then the ``set_cells`` round trip."""
    result = await run_client(cfg, log)
    rep.client = result
    for n in result.notes:
        rep.note("client", n)


async def _policy(rep: Report, cfg: PolicyConfig, profile_s: int) -> None:
    """The policy group: prepare one data directory with the CLI, serve two copies, measure both sides."""
    res = PolicyResult(cfg)
    rep.policy = res
    t0 = time.monotonic()
    with (
        prepared((POLICIES_SIDE, NONE_SIDE), cfg.rows, log) as (dirs, tokens),
        contextlib.ExitStack() as stack,
    ):
        res.prepare_s = time.monotonic() - t0
        servers: dict[str, ServerProcess] = {}
        for name, port in zip((POLICIES_SIDE, NONE_SIDE), free_ports(2), strict=True):
            argv = serve_argv(port, cfg.rows, dirs[name])
            servers[name] = stack.enter_context(running(f"coframe-{name}", argv, port))
        log("policy: " + ", ".join(f"{k} pid {v.pid}" for k, v in servers.items()) + f"; {cfg.rows:,} rows")
        sides = await run_policy(servers, tokens, cfg, res, log)
        try:
            prof_s = min(profile_s, cfg.profile_s) if profile_s else 0
            if prof_s and any(not v.met for v in policy_verdicts(res)):
                log("policy: target missed; profiling the policies server under the same closed loop")
                side = sides[POLICIES_SIDE]
                rep.profiles["policy_fanout"] = await profile_while(
                    "policy_fanout", side.server.pid, _policy_edits(side), prof_s
                )
        finally:
            for s in sides.values():
                s.close()
    _check_logs(rep, "policy", list(servers.values()))
    for n in res.notes:
        rep.note("policy", n)


def _policy_edits(side: Side):  # -> Workload
    async def work(stop: asyncio.Event) -> None:
        async with asyncio.timeout(300):
            while not stop.is_set():
                await side.one_edit()

    return work


def _bind(fn: Callable[[ViewsBench], Awaitable[None]], bench: ViewsBench) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await fn(bench)

    return run


def _view_churn(load: ViewLoad, plain: str):  # -> Workload
    async def work(stop: asyncio.Event) -> None:
        await load.churn(stop, plain)

    return work


# ---------------------------------------------------------------- main


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the ``with running(...)`` blocks: servers are killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (fewer, shorter runs)")
    parser.add_argument("--only", choices=list(GROUPS), action="append", help="run only these (repeatable)")
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy profiles of missed targets")
    parser.add_argument("--runs", type=int, default=None, help="override the number of runs per figure")
    parser.add_argument("--no-pycrdt", action="store_true", help="skip the pycrdt-websocket baseline")
    parser.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL row of the storage group")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="coframe modes of the fan-out and sustained groups: memory, durable or both (default"
        " memory,durable; the latency targets need memory)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)

    fan_cfg, sus_cfg, sto_cfg, profile_s = _configs(args.quick)
    view_cfg = _views_config(args.quick)
    cli_cfg = _client_config(args.quick)
    pol_cfg = _policy_config(args.quick)
    modes = tuple(m for m in MODES if m in {x.strip() for x in args.modes.split(",")})
    if not modes:
        parser.error(f"--modes: expected a comma-separated subset of {', '.join(MODES)}")
    fan_cfg, sus_cfg = replace(fan_cfg, modes=modes), replace(sus_cfg, modes=modes)
    if args.runs is not None:
        fan_cfg, sus_cfg = replace(fan_cfg, runs=args.runs), replace(sus_cfg, runs=args.runs)
        sto_cfg = replace(sto_cfg, runs=args.runs)
        view_cfg = replace(
            view_cfg, runs=args.runs, mem_runs=args.runs, runaway_runs=args.runs, kill_runs=args.runs
        )
        cli_cfg = replace(cli_cfg, runs=args.runs)
        pol_cfg = replace(pol_cfg, runs=args.runs)
    if args.no_profile:
        profile_s = 0
    if args.no_pycrdt:
        fan_cfg = replace(fan_cfg, pycrdt=False)
    if args.no_pg:
        sto_cfg = replace(sto_cfg, pg=False)
    only = set(args.only or GROUPS)
    command = "python -m bench.run" + (" " + " ".join(sys.argv[1:] if argv is None else argv)).rstrip()
    rep = Report(machine_info(), command.strip(), args.quick)
    if profile_s:  # the old profiles of the groups that run now (the others' stay with their sections)
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        for old in PROFILE_DIR.glob("*"):
            if old.suffix in (".svg", ".txt") and old.name.startswith(tuple(only)):
                old.unlink()
    failed = False
    steps = [
        ("fanout", _fanout, fan_cfg),
        ("sustained", _sustained, sus_cfg),
        ("storage", _storage, sto_cfg),
        ("views", _views, view_cfg),
        ("client", _client, cli_cfg),
        ("policy", _policy, pol_cfg),
    ]
    for name, fn, cfg in steps:
        if name not in only:
            continue
        rep.ran.append(name)
        log(f"{name}: start")
        try:
            asyncio.run(fn(rep, cfg, profile_s))  # type: ignore[arg-type]
        except Exception as e:
            failed = True
            log(f"{name}: FAILED: {e!r}")
            traceback.print_exc()
            rep.note(name, f"benchmark `{name}` failed: `{e!r}` (see the run's output)")
        log(f"{name}: done")
    args.out.write_text(render(rep))
    log(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
