"""Benchmarks 6b and 6c of the views group: a runaway view, and the views process killed.

6b. **A runaway view in one room, acks in another.** One ``coframe serve
    --memory --demo-rows 20000 --views-timeout 2`` with two datasets: the
    demo ``sales`` and ``other`` (a small CSV written here, ``--dataset``).
    A writer peer on ``other`` sends 1-cell ``set`` edits closed-loop (the
    next edit leaves from the callback of the last ack) and records send →
    ack. A subscriber peer on ``sales`` first opens a cheap grouped ``max`` view (so
    the views process is running and the table built). After
    ``runaway_base`` s of baseline acks it subscribes a view whose
    expression loops 1M times per row (:data:`RUNAWAY_EXPR`, 20k rows: far
    over the budget). Figures: the other room's ack p50/p99 for edits sent
    between the subscribe and its answer, against the baseline (goal ≤
    1.2×); subscribe → the answer (goal: ``too_expensive`` or ``closed``
    within the budget plus ``runaway_margin``); and, beside, the acks from
    the answer until the cheap view's fresh snapshot (the views of the
    runaway's room are rebuilt in a new process).
6c. **The views process SIGKILLed under load.** A fresh ``coframe serve
    --memory`` of ``kill_rows`` rows, the load of section 5 (1k edits/s,
    :class:`bench.viewload.ViewLoad`) with three views (grouped ``max``, which Perspective serves, plain
    100-row viewport, sorted by price desc); ``kill_before`` s into the load
    the views process (the server's child running
    ``server.perspective.worker``) gets SIGKILL. Figure: SIGKILL → every view
    received a message reflecting the room as of the kill or later (``seq`` at
    least the highest acked at the kill): a Perspective view's fresh
    ``snapshot`` without ``re`` once its table is rebuilt, or the next
    ``update`` of a view served from the frame, which the kill does not
    touch; goal ≤ 10 s. Then the load goes on for ``kill_after`` s, the
    run waits until every edit is reflected, and each view's content is
    checked against the expected state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import psutil

from .common import (
    Peer,
    ServerProcess,
    Stats,
    coframe_argv,
    connect_peer,
    free_port,
    percentile,
    views_process,
)
from .viewload import DATASET, GROUPED_MAX, PLAIN, SORTED, Expected, Phase, ViewLoad
from .views import ViewsBench, tempdir

__all__ = ["runaway", "kill", "RUNAWAY_EXPR", "KILL_PHASE", "OTHER"]

OTHER = "other"
#: ExprTK stops a loop at 10M iterations; 1M per row × 20k rows is about 100× a 2 s budget here.
RUNAWAY_EXPR = "var s := 0; for (var i := 0; i < 1000000; i += 1) { s += 1 }; s"
CHEAP = ("cheap", GROUPED_MAX[1])  # served by Perspective, so the runaway's restart rebuilds it
KILL_PHASE = Phase("kill", "grouped high + plain + sorted views", (GROUPED_MAX, PLAIN, SORTED), "raise")


def _hello(name: str) -> bytes:
    return msgpack.packb({"type": "hello", "id": 0, "client": name, "version": 1, "since": 0})


# ---------------------------------------------------------------- 6b. the runaway


class _ClosedLoop:
    """1-cell ``set`` edits of ``price``, one in flight: each ack sends the next edit at once."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.rng = random.Random("runaway")
        self.peer: Peer | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.send_t: list[float] = []
        self.ack_t: list[float] = []
        self.seq = 0
        self.running = False
        self.idle = asyncio.Event()
        self.errors: Counter[str] = Counter()

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        t = time.perf_counter()
        d = msgpack.unpackb(data, raw=False)
        kind = d.get("type")
        if kind in ("ack", "error") and len(self.ack_t) < len(self.send_t):
            self.ack_t.append(t)
            if kind == "ack":
                self.seq = max(self.seq, int(d["seq"]))
            else:
                self.errors[str(d.get("code"))] += 1
            if self.running:
                self._send()
            else:
                self.idle.set()
        elif kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(d)

    def _send(self) -> None:
        assert self.peer is not None
        cs = len(self.send_t) + 1
        op = {"op": "set", "rows": [self.rng.randrange(self.rows)], "col": "price", "values": [cs + 0.5]}
        msg = {"type": "op", "id": cs, "client_seq": cs, "base_seq": self.seq, "ops": [op]}
        self.send_t.append(time.perf_counter())
        self.peer.send(msgpack.packb(msg))

    def start(self) -> None:
        self.running = True
        self.idle.clear()
        self._send()

    async def stop(self) -> None:
        self.running = False
        if len(self.ack_t) < len(self.send_t):
            async with asyncio.timeout(30):
                await self.idle.wait()

    def window(self, t0: float, t1: float) -> list[float]:
        """send → ack in ms of the edits sent in [t0, t1)."""
        return [(a - s) * 1e3 for s, a in zip(self.send_t, self.ack_t, strict=False) if t0 <= s < t1]


class _Viewer:
    """A subscriber peer: answers to its requests, and snapshots the server sent on its own."""

    def __init__(self) -> None:
        self.peer: Peer | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies: dict[int, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self.fresh: dict[str, list[float]] = {}
        self.changed = asyncio.Event()
        self._ids = 0

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        t = time.perf_counter()
        d = msgpack.unpackb(data, raw=False)
        kind = d.get("type")
        re = d.get("re")
        if kind in ("view", "error") and isinstance(re, int) and re in self.replies:
            fut = self.replies.pop(re)
            if not fut.done():
                fut.set_result((t, d))
        elif kind == "view" and d.get("kind") == "snapshot":
            self.fresh.setdefault(d["view"], []).append(t)
            self.changed.set()
        elif kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(d)

    async def subscribe(
        self, name: str, config: dict[str, Any], viewport: tuple[int, int] | None, limit: float
    ) -> tuple[float, dict[str, Any]]:
        """Send ``subscribe``; return (receive time, the answer: a ``view`` or an ``error``)."""
        from protocol import Subscribe, encode

        assert self.peer is not None
        self._ids += 1
        fut: asyncio.Future[tuple[float, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self.replies[self._ids] = fut
        self.peer.send(encode(Subscribe(name, config, viewport, id=self._ids), binary=True))
        async with asyncio.timeout(limit):
            return await fut

    async def fresh_after(self, name: str, t0: float, limit: float) -> float | None:
        """Receive time of ``name``'s first snapshot without ``re`` after ``t0`` (None: none in time)."""
        deadline = time.monotonic() + limit
        while True:
            hit = [t for t in self.fresh.get(name, []) if t > t0]
            if hit:
                return hit[0]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.changed.clear()
            try:
                async with asyncio.timeout(left):
                    await self.changed.wait()
            except TimeoutError:
                return None


class _CpuWatch:
    """The CPU a process uses from now on, in cores, read every 0.1 s until :meth:`stop` or its death.

    The views process that runs the runaway is killed, and a dead process's CPU time cannot be
    read, so the last reading before its death stands for the window.
    """

    def __init__(self, proc: psutil.Process | None) -> None:
        self.proc = proc
        self.first = self.last = (time.perf_counter(), self._cpu())
        self.task = asyncio.ensure_future(self._poll())

    def _cpu(self) -> float | None:
        try:
            t = self.proc.cpu_times() if self.proc is not None else None
        except psutil.Error:
            return None
        return None if t is None else float(t.user + t.system)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(0.1)  # sampling period
            c = self._cpu()
            if c is None:
                return
            self.last = (time.perf_counter(), c)

    async def stop(self) -> float:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        (t0, c0), (t1, c1) = self.first, self.last
        return (c1 - c0) / (t1 - t0) if c0 is not None and c1 is not None and t1 > t0 else float("nan")


async def runaway(bench: ViewsBench) -> None:
    """Benchmark 6b, ``runaway_runs`` times, each on a fresh server."""
    import polars as pl

    cfg, r = bench.cfg, bench.result.runaway
    r.rows, r.other_rows, r.budget = cfg.runaway_rows, cfg.other_rows, cfg.runaway_budget
    with tempdir("runaway") as d:
        csv = Path(d) / f"{OTHER}.csv"
        n = cfg.other_rows
        pl.DataFrame({"id": list(range(n)), "price": [float(i) for i in range(n)]}).write_csv(csv)
        for run in range(cfg.runaway_runs):
            port = free_port()
            argv = [*coframe_argv(port, cfg.runaway_rows), "--memory"]
            argv += ["--views-timeout", f"{cfg.runaway_budget:g}", "--dataset", f"{OTHER}={csv}"]
            srv = ServerProcess(f"coframe-runaway-{run}", argv, port)
            bench.servers.append(srv)
            srv.start(timeout=120)
            try:
                await _runaway_run(bench, srv)
            finally:
                bench.retire(srv)
            last = {k: getattr(r, k).runs[-1] for k in ("base_p99", "during_p99", "ratio", "close_s")}
            bench.log(
                f"  runaway run {run + 1}/{cfg.runaway_runs}: other room's ack p99"
                f" {last['base_p99']:.2f} ms before, {last['during_p99']:.2f} ms during"
                f" ({last['ratio']:.2f}×); refused after {last['close_s']:.2f} s ({', '.join(r.answers)});"
                f" rebuilt {r.recover_s.runs[-1]:.2f} s later"
            )


async def _runaway_run(bench: ViewsBench, srv: ServerProcess) -> None:
    cfg, r = bench.cfg, bench.result.runaway
    writer, viewer = _ClosedLoop(cfg.other_rows), _Viewer()
    try:
        for who, room, name in (
            (writer, OTHER, "bench-runaway-writer"),
            (viewer, DATASET, "bench-runaway-viewer"),
        ):
            who.peer = await connect_peer(f"{srv.url}/ws/{room}", who.on_message)
            who.peer.send(_hello(name))
            async with asyncio.timeout(60):
                await who.welcome
        _, ans = await viewer.subscribe(CHEAP[0], CHEAP[1], None, 120)  # starts the views process
        if ans.get("kind") != "snapshot":
            raise RuntimeError(f"the cheap view was not opened: {ans.get('code')}: {ans.get('message')}")
        writer.start()
        await asyncio.sleep(0.5)  # warm-up edits, not measured (pacing, not a sync wait)
        t0 = time.perf_counter()
        await asyncio.sleep(cfg.runaway_base)
        cpu = _CpuWatch(views_process(srv.pid))
        t_sub = time.perf_counter()
        config = {"columns": ["r"], "expressions": {"r": RUNAWAY_EXPR}}
        try:
            t_ans, ans = await viewer.subscribe("runaway", config, (0, 100), cfg.runaway_budget + 60)
        finally:
            busy = await cpu.stop()
        t_rec = await viewer.fresh_after(CHEAP[0], t_sub, 60)
        await writer.stop()
    finally:
        for p in (writer.peer, viewer.peer):
            if p is not None:
                p.close()
    answer = f"{ans.get('type')} {ans.get('code') or ans.get('kind')}"
    r.answers[answer] += 1
    if not r.reason and (ans.get("message") or ans.get("reason")):
        r.reason = str(ans.get("message") or ans.get("reason"))
    base, during = writer.window(t0, t0 + cfg.runaway_base), writer.window(t_sub, t_ans)
    after = writer.window(t_ans, t_rec) if t_rec is not None else []
    for stats, xs in ((r.base_p50, base), (r.during_p50, during)):
        stats.add(percentile(xs, 50))
    r.base_p99.add(percentile(base, 99))
    r.during_p99.add(percentile(during, 99))
    r.after_p99.add(percentile(after, 99))
    r.base_n.add(len(base))
    r.during_n.add(len(during))
    r.after_n.add(len(after))
    r.ratio.add(percentile(during, 99) / percentile(base, 99))
    r.close_s.add(t_ans - t_sub)
    r.recover_s.add(t_rec - t_ans if t_rec is not None else float("nan"))
    r.views_cpu.add(busy)
    r.errors.update(writer.errors)


# ---------------------------------------------------------------- 6c. the kill


async def kill(bench: ViewsBench) -> None:
    """Benchmark 6c, ``kill_runs`` times, each on a fresh ``kill_rows``-row server."""
    cfg, r = bench.cfg, bench.result.kill
    r.rows = cfg.kill_rows
    for run in range(cfg.kill_runs):
        port = free_port()
        srv = ServerProcess(f"coframe-kill-{run}", [*coframe_argv(port, cfg.kill_rows), "--memory"], port)
        bench.servers.append(srv)
        srv.start(timeout=300)
        load: ViewLoad | None = None
        try:
            expected = await asyncio.to_thread(Expected, cfg.kill_rows)
            load = ViewLoad(srv.url, cfg.kill_rows, cfg, expected, seed=100 + run)
            await load.open()
            await _kill_run(bench, srv, load)
        finally:
            if load is not None:
                load.close()
            bench.retire(srv)
        per = ", ".join(f"{n} {s.runs[-1]:.2f} s" for n, s in r.per_view.items() if s.runs)
        bench.log(
            f"  kill run {run + 1}/{cfg.kill_runs}: every view fresh {r.fresh_s.runs[-1]:.2f} s after SIGKILL"
            f" ({per}); room's ack p99 {r.ack_before_p99.runs[-1]:.1f} ms before,"
            f" {r.ack_during_p99.runs[-1]:.1f} ms meanwhile; content checks {r.checks_ok} ok,"
            f" {len(r.checks_failed)} failed"
        )


async def _kill_run(bench: ViewsBench, srv: ServerProcess, load: ViewLoad) -> None:
    cfg, r = bench.cfg, bench.result.kill
    t = time.perf_counter()
    await load.use(KILL_PHASE)
    r.open_s.add(time.perf_counter() - t)
    first = len(load.send_t)
    stop = asyncio.Event()
    pacing = asyncio.ensure_future(load.churn(stop, KILL_PHASE.plain))
    try:
        await asyncio.sleep(cfg.kill_before)  # the load runs meanwhile (pacing, not a sync wait)
        vp = views_process(srv.pid)
        if vp is None:
            raise RuntimeError("no views process to kill (no child runs server.perspective.worker)")
        t_kill = time.perf_counter()
        seq_kill = load.writer.max_seq
        os.kill(vp.pid, signal.SIGKILL)
        names = list(load.views)
        got = await _fresh(load, names, t_kill, seq_kill, cfg.kill_limit)
        t_all = max(got.values()) if len(got) == len(names) else float("nan")
        await asyncio.sleep(cfg.kill_after)
    finally:
        stop.set()
        await pacing
    edits = range(first, len(load.send_t))
    for n in load.sub.closed:  # closed by the server: nothing more will come for them
        load.views.pop(n, None)
    drained = await load.drain(edits, cfg.drain)
    r.fresh_s.add(t_all - t_kill)
    for n in names:
        r.per_view.setdefault(n, Stats()).add(got[n] - t_kill if n in got else float("nan"))
    firsts = [next(e for e in load.sub.seen[n] if e[0] > t_kill and e[1] >= seq_kill) for n in got]
    r.behind.add(max((acked - seq for _, seq, acked in firsts), default=float("nan")))
    acked_at = {load.seq[i]: load.ack_t[i] for i in range(len(load.seq)) if load.seq[i]}
    ages = [t - acked_at[seq] for t, seq, _ in firsts if seq in acked_at]
    r.age_s.add(max(ages) if ages else float("nan"))
    before = [i for i in edits if load.seq[i] and load.send_t[i] < t_kill]
    during = [i for i in edits if load.seq[i] and t_kill <= load.send_t[i] < t_all]
    r.ack_before_p99.add(percentile([(load.ack_t[i] - load.send_t[i]) * 1e3 for i in before], 99))
    r.ack_during_p99.add(percentile([(load.ack_t[i] - load.send_t[i]) * 1e3 for i in during], 99))
    now = views_process(srv.pid)
    r.restarted += int(now is not None and now.pid != vp.pid)
    r.closed += [f"{n}: {why}" for n, why in load.sub.closed.items()]
    r.errors.update(load.writer.errors)
    r.errors.update(load.sub.errors)
    for name, config in KILL_PHASE.views:
        vl = load.sub.views.get(name)
        if name in load.sub.closed:
            r.checks_failed.append(f"{name}: closed by the server, no content to check")
            continue
        if not drained or vl is None:
            r.checks_failed.append(f"{name}: not every edit was reflected within {cfg.drain:g} s")
            continue
        why = load.expected.check(name, config, vl.last, cfg.viewport)
        if why is None:
            r.checks_ok += 1
        else:
            r.checks_failed.append(why)


async def _fresh(load: ViewLoad, names: list[str], t0: float, seq0: int, limit: float) -> dict[str, float]:
    """Per view, the receive time of its first message after ``t0`` that reflects seq ``seq0`` or later
    (those in time): a Perspective view's fresh snapshot after the rebuild, or the next update of a
    view served from the frame (which the kill does not touch)."""
    deadline = time.monotonic() + limit

    while True:
        got = {
            n: ts[0]
            for n in names
            if (ts := [e[0] for e in load.sub.seen.get(n, []) if e[0] > t0 and e[1] >= seq0])
        }
        if len(got) == len(names) or any(n in load.sub.closed for n in names):
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            return got
        load.progress.clear()
        try:
            async with asyncio.timeout(left):
                await load.progress.wait()
        except TimeoutError:
            return got
