"""Benchmark 2: sustained edits into one 1M-row room.

Ten bots (raw protocol peers, :class:`bench.common.Peer`) join a
``--demo-rows 1000000`` room and keep a window of unacked ``op`` messages
each (pipelining: every ack or error frees a slot, which is refilled at once
from the receive callback). Workloads:

* **batched**: each message is one ``set`` of 100 random rids in column
  ``price`` with float values; the figure is acked cells/s.
* **single-op**: each message is a 1-cell ``set``; the figure is acked
  messages/s.
* **batched, disjoint rids** (information only): as batched, but messages
  walk one random permutation of the rows, so no cell is written twice
  concurrently and no overwrite is reported.

Each run warms up, then counts acks over a fixed window, then stops sending
and drains the window (bounded). Bots read and msgpack-decode every frame,
deltas included, as a real client must (else the server would resync them).

Both workloads run against coframe with ``--memory`` and in the default
durable mode (a temporary data directory, SQLite catalog: a tick's batches
are acked once their WAL entries are fsynced), interleaved with the echo
baseline run by run. The echo targets hold in both modes, and the durable
figures are also compared with the ``--memory`` ones of the same run.

Baselines, in the same run:

* the raw ``websockets`` echo server (:mod:`bench.baseline_server`,
  ``/ws/echo``) with the same bots and the same messages: the rate at which
  this load generator and the transport alone can exchange ops and acks;
* Polars ``Series.scatter`` in-process: clone + scatter of 1,000 random
  cells into a 1M-row Float64 column (the room's per-tick write, docs/architecture.md
  "One op, end to end"), as cells/s.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import polars as pl

from .common import MEMORY, MODES, ServerProcess, Stats, connect_peer

__all__ = [
    "SustainedConfig",
    "Workload",
    "SustainedResult",
    "Swarm",
    "run_sustained",
    "scatter_baseline",
    "workload_name",
]


@dataclass(frozen=True, slots=True)
class SustainedConfig:
    bots: int = 10
    window: int = 50  # unacked messages per bot
    runs: int = 5
    warmup: float = 1.0  # seconds before counting
    measure: float = 4.0  # seconds counted
    rows: int = 1_000_000
    batch_cells: int = 100
    scatter_cells: int = 1_000  # cells per scatter in the Polars baseline
    scatter_reps: int = 200
    disjoint_case: bool = True  # also run batched with disjoint rids (no concurrent overwrites)
    modes: tuple[str, ...] = MODES  # coframe with ``--memory`` and in the default durable mode


@dataclass(slots=True)
class Workload:
    """Per-run figures of one workload against one server."""

    cells_per_s: Stats = field(default_factory=Stats)
    msgs_per_s: Stats = field(default_factory=Stats)
    errors: Counter[str] = field(default_factory=Counter)
    deltas_per_s: Stats = field(default_factory=Stats)
    cpu_util: Stats = field(default_factory=Stats)  # server CPU seconds per wall second


@dataclass(slots=True)
class SustainedResult:
    config: SustainedConfig
    workloads: dict[str, Workload] = field(default_factory=dict)
    scatter_us_per_cell: Stats = field(default_factory=Stats)

    @property
    def scatter_cells_per_s(self) -> float:
        return 1e6 / self.scatter_us_per_cell.median


class _Bot:
    """One pipelining peer; all its work happens in the receive callback."""

    def __init__(self, swarm: Swarm, index: int) -> None:
        self.swarm = swarm
        self.name = f"bench-bot-{index}"
        self.rng = random.Random(f"bot-{index}")
        self.peer: Any = None
        self.client_seq = 0
        self.base_seq = 0
        self.inflight = 0
        self.acked_msgs = 0
        self.acked_cells = 0
        self.deltas = 0
        self.errors: Counter[str] = Counter()
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.drained: asyncio.Future[None] | None = None
        self.chunks: list[list[int]] = []  # disjoint mode: this bot's rid chunks
        self.next_chunk = 0

    def send_one(self, flush: bool = True) -> None:
        sw = self.swarm
        self.client_seq += 1
        cs = self.client_seq
        if sw.disjoint:
            chunk = self.chunks[self.next_chunk % len(self.chunks)]
            self.next_chunk += 1
            rows = chunk
        elif sw.cells == 1:
            rows = [self.rng.randrange(sw.rows)]
        else:
            rows = self.rng.sample(range(sw.rows), sw.cells)
        op = {"op": "set", "rows": rows, "col": "price", "values": sw.values[cs % len(sw.values)]}
        d = {"type": "op", "id": cs, "client_seq": cs, "base_seq": self.base_seq, "ops": [op]}
        self.inflight += 1
        self.peer.send(msgpack.packb(d), flush=flush)

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        d = msgpack.unpackb(data, raw=False)
        kind = d.get("type")
        if kind == "ack":
            self.inflight -= 1
            self.acked_msgs += 1
            self.acked_cells += self.swarm.cells
            seq = d.get("seq", 0)
            if seq > self.base_seq:
                self.base_seq = seq
            self._next()
        elif kind == "delta":
            self.deltas += 1
            seq = d.get("seq_to", 0)
            if seq > self.base_seq:
                self.base_seq = seq
        elif kind == "error":
            self.inflight -= 1
            self.errors[str(d.get("code"))] += 1
            self._next()
        elif kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(d)

    def _next(self) -> None:
        if self.swarm.sending:
            self.send_one()
        elif self.inflight == 0 and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class Swarm:
    """``bots`` pipelining peers against one server path."""

    def __init__(self, server: ServerProcess, path: str, cfg: SustainedConfig, *, coframe: bool) -> None:
        self.server = server
        self.path = path
        self.cfg = cfg
        self.coframe = coframe
        self.sending = False
        self.rows = cfg.rows
        self.cells = 1
        self.disjoint = False
        self.values: list[list[float]] = [[1.0]]
        self.bots: list[_Bot] = []

    def use(self, cells: int, *, disjoint: bool = False, seed: int = 11) -> None:
        """Send ``set`` ops of ``cells`` random rids each from now on.

        ``disjoint=False``: rids drawn independently for every message (so a
        few cells collide with another bot's in-flight write and come back as
        concurrent overwrites in the ack). ``disjoint=True``: messages take
        successive chunks of one random permutation of all rows, split
        between the bots, so no two in-flight messages share a cell.
        """
        rng = np.random.default_rng(seed + cells)
        self.cells = cells
        self.disjoint = disjoint
        self.values = [np.round(rng.uniform(1, 500, cells), 2).tolist() for _ in range(256)]
        if disjoint:
            perm = rng.permutation(self.rows)
            for i, bot in enumerate(self.bots):
                mine = perm[i :: len(self.bots)]
                usable = len(mine) - len(mine) % cells
                bot.chunks = mine[:usable].reshape(-1, cells).tolist()
                bot.next_chunk = 0

    async def open(self, since: int = 0) -> None:
        for i in range(self.cfg.bots):
            bot = _Bot(self, i)
            bot.peer = await connect_peer(f"{self.server.url}{self.path}", bot.on_message)
            if self.coframe:
                # ``since`` = the room's current seq: no 1M-row snapshot per bot.
                hello = {"type": "hello", "id": 0, "client": bot.name, "version": 1, "since": since}
                bot.peer.send(msgpack.packb(hello))
                w = await asyncio.wait_for(bot.welcome, 60)
                bot.base_seq = int(w["seq"])
            self.bots.append(bot)

    def close(self) -> None:
        for b in self.bots:
            b.peer.close()
        self.bots = []

    def totals(self) -> tuple[int, int, int]:
        return (
            sum(b.acked_msgs for b in self.bots),
            sum(b.acked_cells for b in self.bots),
            sum(b.deltas for b in self.bots),
        )

    async def _drain(self) -> None:
        self.sending = False
        loop = asyncio.get_running_loop()
        for b in self.bots:
            b.drained = loop.create_future()
            if b.inflight == 0:
                b.drained.set_result(None)
        async with asyncio.timeout(60):
            await asyncio.gather(*(b.drained for b in self.bots if b.drained is not None))

    def _start(self) -> None:
        self.sending = True
        for b in self.bots:
            b.drained = None
            for _ in range(self.cfg.window):
                b.send_one(flush=False)
            b.peer.flush()

    async def churn(self, stop: asyncio.Event, limit: float = 120.0) -> None:
        """Keep the load on until ``stop`` is set (at most ``limit`` s), then drain (for profiling)."""
        self._start()
        try:
            async with asyncio.timeout(limit):
                await stop.wait()
        except TimeoutError:
            pass
        await self._drain()

    async def run(self, out: Workload) -> None:
        """One run: warm up, count for ``measure`` s, then drain (all bounded)."""
        cfg = self.cfg
        errors0 = Counter[str]()
        for b in self.bots:
            errors0 += b.errors
        self._start()
        await asyncio.sleep(cfg.warmup)
        m0, c0, d0 = self.totals()
        cpu0, t0 = self.server.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(cfg.measure)
        m1, c1, d1 = self.totals()
        cpu1, t1 = self.server.cpu_seconds(), time.perf_counter()
        await self._drain()
        dt = t1 - t0
        out.cells_per_s.add((c1 - c0) / dt)
        out.msgs_per_s.add((m1 - m0) / dt)
        out.deltas_per_s.add((d1 - d0) / dt / max(1, len(self.bots)))
        out.cpu_util.add((cpu1 - cpu0) / dt)
        errors1 = Counter[str]()
        for b in self.bots:
            errors1 += b.errors
        out.errors.update(errors1 - errors0)


def scatter_baseline(cfg: SustainedConfig, out: Stats, seed: int = 5) -> None:
    """Polars clone + ``Series.scatter`` of ``scatter_cells`` random cells into a 1M-row column."""
    rng = np.random.default_rng(seed)
    s = pl.Series("price", rng.uniform(1, 500, cfg.rows))
    times = []
    for _ in range(cfg.scatter_reps):
        pos = rng.choice(cfg.rows, cfg.scatter_cells, replace=False)
        vals = pl.Series("price", rng.uniform(1, 500, cfg.scatter_cells))
        t = time.perf_counter()
        s2 = s.clone()
        s2.scatter(pos, vals)
        times.append(time.perf_counter() - t)
        s = s2
    out.add(float(np.median(times)) * 1e6 / cfg.scatter_cells)


def workload_name(mode: str, what: str) -> str:
    """``coframe batched`` (``--memory``) or ``coframe batched (durable)``."""
    return f"coframe {what}" if mode == MEMORY else f"coframe {what} ({mode})"


async def run_sustained(
    coframes: dict[str, ServerProcess],
    baseline: ServerProcess,
    cfg: SustainedConfig,
    log: Callable[[str], None] = print,
) -> tuple[SustainedResult, dict[str, Swarm]]:
    """Run benchmark 2; returns the result and the open swarms (the caller closes them).

    ``coframes`` maps a mode (:data:`bench.common.MEMORY`, :data:`bench.common.DURABLE`)
    to its server; each mode gets the batched and single-op workloads, and the
    echo baseline runs beside them in every run. The swarms are keyed
    ``coframe`` (``--memory``), ``coframe-durable`` and ``echo``.
    """
    result = SustainedResult(cfg)
    swarms: dict[str, Swarm] = {}
    for mode, srv in coframes.items():
        sw = Swarm(srv, "/ws/sales", cfg, coframe=True)
        await sw.open(since=0)
        swarms["coframe" if mode == MEMORY else f"coframe-{mode}"] = sw
    echo = Swarm(baseline, "/ws/echo", cfg, coframe=False)
    await echo.open()
    swarms["echo"] = echo
    # (name, swarm, cells per message, disjoint rids); each group rotates its order every run.
    batched: list[tuple[str, Swarm, int, bool]] = [("echo batched", echo, cfg.batch_cells, False)]
    single: list[tuple[str, Swarm, int, bool]] = [("echo single-op", echo, 1, False)]
    for mode in coframes:
        sw = swarms["coframe" if mode == MEMORY else f"coframe-{mode}"]
        batched.insert(0, (workload_name(mode, "batched"), sw, cfg.batch_cells, False))
        single.insert(0, (workload_name(mode, "single-op"), sw, 1, False))
    pairs = [batched, single]
    if cfg.disjoint_case and MEMORY in coframes:
        pairs.append([("coframe batched, disjoint rids", swarms["coframe"], cfg.batch_cells, True)])
    for pair in pairs:
        for name, *_ in pair:
            result.workloads[name] = Workload()
    for run in range(cfg.runs):
        # Rotate the order every run to spread machine noise over the systems.
        for pair in pairs:
            k = run % len(pair)
            for name, swarm, cells, disjoint in pair[k:] + pair[:k]:
                swarm.use(cells, disjoint=disjoint, seed=run)
                await swarm.run(result.workloads[name])
        scatter_baseline(cfg, result.scatter_us_per_cell, seed=run)
        w = result.workloads
        log(
            f"  sustained run {run + 1}/{cfg.runs}: "
            + "; ".join(
                f"{k} {v.cells_per_s.runs[-1]:,.0f} cells/s {v.msgs_per_s.runs[-1]:,.0f} msgs/s"
                for k, v in w.items()
            )
            + f"; scatter {result.scatter_us_per_cell.runs[-1]:.3f} µs/cell"
        )
    return result, swarms
