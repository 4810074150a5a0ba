"""Entry point: ``python -m bench.run [--quick] [--only fanout|sustained] [--no-profile]``.

Runs the benchmarks of DESIGN.md "Performance targets" (issue 2, §8):

1. fan-out latency, 1 writer → N readers (:mod:`bench.fanout`);
2. sustained edits into a 1M-row room (:mod:`bench.sustained`);
3. server CPU per delivered message (measured during 1, at N=50).

Each server runs in its own subprocess on a free 127.0.0.1 port and is
killed on exit; the load generator runs here. For every missed target a
py-spy profile of the server is taken under the same load and summarized in
``bench/RESULTS.md``, which this run (re)writes. The full run takes about
6–8 minutes on 2 cores; ``--quick`` is a shorter smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from types import FrameType

from .common import (
    BENCH_DIR,
    PROFILE_DIR,
    ServerProcess,
    baseline_argv,
    coframe_argv,
    free_ports,
    pycrdt_argv,
    running,
)
from .fanout import BROADCAST, COFRAME, PYCRDT, FanoutConfig, System, run_fanout
from .profiling import profile_while
from .report import Report, fanout_verdicts, machine_info, render, sustained_verdicts
from .sustained import SustainedConfig, Swarm, run_sustained

__all__ = ["main"]

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def _configs(quick: bool) -> tuple[FanoutConfig, SustainedConfig, int]:
    """(fan-out config, sustained config, profile seconds)."""
    if quick:
        return (
            FanoutConfig(runs=3, edits=150, warmup=20),
            SustainedConfig(runs=3, warmup=0.5, measure=2.0, scatter_reps=50),
            4,
        )
    return FanoutConfig(), SustainedConfig(), 8


# ---------------------------------------------------------------- benchmarks


def _check_logs(rep: Report, servers: list[ServerProcess]) -> None:
    """Report errors a server logged during the run (a server bug is a finding, not noise)."""
    for srv in servers:
        lines = srv.problems()
        if lines:
            shown = "; ".join(f"`{ln.strip()[:160]}`" for ln in lines)
            rep.notes.append(f"server `{srv.name}` logged errors during the run: {shown}")


def _have_pycrdt_websocket() -> bool:
    try:
        import pycrdt.websocket  # noqa: F401
    except ImportError:
        return False
    return True


async def _fanout(rep: Report, cfg: FanoutConfig, profile_s: int) -> None:
    p_cf, p_bl, p_py = free_ports(3)
    servers: dict[str, ServerProcess] = {}
    with contextlib.ExitStack() as stack:
        servers = {
            COFRAME: stack.enter_context(running("coframe", coframe_argv(p_cf, cfg.rows), p_cf)),
            BROADCAST: stack.enter_context(running("broadcast", baseline_argv(p_bl), p_bl)),
        }
        if cfg.pycrdt and _have_pycrdt_websocket():
            servers[PYCRDT] = stack.enter_context(running("pycrdt", pycrdt_argv(p_py), p_py))
        elif cfg.pycrdt:
            rep.notes.append("pycrdt-websocket is not installed: its optional fan-out baseline was skipped")
        cf = servers[COFRAME]
        log("fan-out: " + ", ".join(f"{k} pid {v.pid}" for k, v in servers.items()) + f"; {cfg.rows:,} rows")
        result, systems = await run_fanout(servers, cfg, log)
        rep.fanout = result
        try:
            missed = [v for v in fanout_verdicts(result) if not v.met]
            if missed and profile_s:
                n = cfg.readers[-1]
                log(f"fan-out: {len(missed)} target(s) missed; profiling coframe at N={n}")
                system = systems[COFRAME]
                rep.profiles["fanout"] = await profile_while(
                    f"fanout_n{n}_coframe", cf.pid, _edit_until(system), profile_s
                )
        finally:
            for s in systems.values():
                s.close()
    _check_logs(rep, list(servers.values()))


def _edit_until(system: System):  # -> Workload
    async def work(stop: asyncio.Event) -> None:
        async with asyncio.timeout(300):
            for _ in range(1_000_000):
                if stop.is_set():
                    return
                await system.one_edit()

    return work


async def _sustained(rep: Report, cfg: SustainedConfig, profile_s: int) -> None:
    p_cf, p_bl = free_ports(2)
    cf = ServerProcess("coframe", coframe_argv(p_cf, cfg.rows), p_cf)
    bl = ServerProcess("echo", baseline_argv(p_bl), p_bl)
    with cf, bl:
        log(f"sustained: coframe pid {cf.pid} ({cfg.rows:,} rows), baseline pid {bl.pid}")
        result, swarms = await run_sustained(cf, bl, cfg, log)
        rep.sustained = result
        try:
            swarm = swarms["coframe"]
            for v in sustained_verdicts(result):
                if v.met or not profile_s:
                    continue
                batched = "batched" in v.what
                name = "sustained_batched_coframe" if batched else "sustained_single_op_coframe"
                log(f"sustained: missed '{v.what}'; profiling coframe")
                swarm.use(cfg.batch_cells if batched else 1)
                rep.profiles[name] = await profile_while(name, cf.pid, _churn(swarm), profile_s)
        finally:
            for s in swarms.values():
                s.close()
    _check_logs(rep, [cf, bl])


def _churn(swarm: Swarm):  # -> Workload
    async def work(stop: asyncio.Event) -> None:
        await swarm.churn(stop)

    return work


# ---------------------------------------------------------------- main


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the ``with running(...)`` blocks: servers are killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (fewer, shorter runs)")
    parser.add_argument("--only", choices=["fanout", "sustained"], action="append", help="run only these")
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy profiles of missed targets")
    parser.add_argument("--runs", type=int, default=None, help="override the number of runs per figure")
    parser.add_argument("--no-pycrdt", action="store_true", help="skip the pycrdt-websocket baseline")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)

    fan_cfg, sus_cfg, profile_s = _configs(args.quick)
    if args.runs is not None:
        fan_cfg, sus_cfg = replace(fan_cfg, runs=args.runs), replace(sus_cfg, runs=args.runs)
    if args.no_profile:
        profile_s = 0
    if args.no_pycrdt:
        fan_cfg = replace(fan_cfg, pycrdt=False)
    only = set(args.only or ["fanout", "sustained"])
    command = "python -m bench.run" + (" " + " ".join(sys.argv[1:] if argv is None else argv)).rstrip()
    rep = Report(machine_info(), command.strip(), args.quick)
    if profile_s:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        for old in PROFILE_DIR.glob("*"):
            if old.suffix in (".svg", ".txt"):
                old.unlink()
    failed = False
    steps = [("fanout", _fanout, fan_cfg), ("sustained", _sustained, sus_cfg)]
    for name, fn, cfg in steps:
        if name not in only:
            continue
        log(f"{name}: start")
        try:
            asyncio.run(fn(rep, cfg, profile_s))  # type: ignore[arg-type]
        except Exception as e:
            failed = True
            log(f"{name}: FAILED: {e!r}")
            traceback.print_exc()
            rep.notes.append(f"benchmark `{name}` failed: `{e!r}` (see the run's output)")
        log(f"{name}: done")
    args.out.write_text(render(rep))
    log(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
