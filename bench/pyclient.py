"""Benchmark group ``client`` (issue 9): the Python client's own costs.

Two measurements, each against a baseline taken in the same run:

1. **Applying a 1-cell delta to the mirror**, at 10k and 1M rows. A
   ``--memory`` server with ``--demo-rows N``; a raw protocol peer
   (:class:`bench.common.Peer`) joins with a full snapshot and records every
   frame, while a second raw peer (the writer) sends 1-cell ``set`` edits of
   ``price`` closed-loop (one in flight), so every delta carries one cell.
   Then, in this process, with the client's public mirror
   (:class:`client.mirror.Mirror`: ``load`` the decoded welcome, ``apply``
   each decoded :class:`protocol.Delta`): *apply* = ``mirror.apply(delta)``
   alone; *apply + read* = ``mirror.apply(delta)`` then ``mirror.frame`` (what
   ``room.frame`` returns), on a second mirror, so a mirror that defers work
   to the read pays it there. Decoding the frame (``decode_server``) is timed
   apart (information). Every run starts from a fresh mirror; the figure is
   the median over runs of each run's per-delta median (p99 beside). After
   the last delta both mirrors must hold every value written (checked).
   Baseline: Polars ``clone`` + ``scatter`` of one cell into an N-row Float64
   column (the full-column copy of the old mirror), timed in every run.
   Target: apply ≤ 50 µs at every row count.
2. **``set_cells`` round trip, no other clients** (``--memory``, 100k rows).
   ``await room.set_cells([rid], "price", value)`` of the Python client
   (``client.connect``), against a lean protocol peer
   (:class:`bench.common.Peer`, msgpack ``op`` → ``ack``) sending the same
   op to the same server. One client at a time is connected (each joins,
   warms up, is timed, leaves), and the order alternates run by run.
   Target: the client's p50 ≤ 1.2× the lean peer's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import polars as pl

from .common import MEMORY, Peer, Stats, coframe_running, connect_peer, free_port, percentile

__all__ = [
    "ClientConfig",
    "ApplyResult",
    "RoundTripResult",
    "ClientResult",
    "run_client",
    "TARGET_APPLY_US",
    "TARGET_RT_RATIO",
]

TARGET_APPLY_US = 50.0
TARGET_RT_RATIO = 1.2
DATASET = "sales"
COLUMN = "price"

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    runs: int = 5
    apply_rows: tuple[int, ...] = (10_000, 1_000_000)
    deltas: int = 1_000  # 1-cell deltas captured per row count, applied in every run
    rt_rows: int = 100_000
    rt_edits: int = 500  # timed round trips per client per run
    rt_warmup: int = 50


@dataclass(slots=True)
class ApplyResult:
    rows: int
    deltas: int = 0
    delta_bytes: int = 0
    apply_us: Stats = field(default_factory=Stats)  # per-run median µs of mirror.apply
    apply_p99_us: Stats = field(default_factory=Stats)
    read_us: Stats = field(default_factory=Stats)  # per-run median µs of apply + mirror.frame
    read_p99_us: Stats = field(default_factory=Stats)
    decode_us: Stats = field(default_factory=Stats)  # per-run median µs of decode_server
    scatter_us: Stats = field(default_factory=Stats)  # baseline: clone + scatter of 1 cell
    check: str = ""  # "" when the mirrors hold every written value, else what differed
    profile: str = ""  # cProfile top functions of one pass of applies, when the target was missed


@dataclass(slots=True)
class RoundTripResult:
    rows: int = 0
    client_p50_ms: Stats = field(default_factory=Stats)
    client_p99_ms: Stats = field(default_factory=Stats)
    peer_p50_ms: Stats = field(default_factory=Stats)
    peer_p99_ms: Stats = field(default_factory=Stats)


@dataclass(slots=True)
class ClientResult:
    config: ClientConfig
    apply: dict[int, ApplyResult] = field(default_factory=dict)
    roundtrip: RoundTripResult = field(default_factory=RoundTripResult)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- raw peers


class _Recorder:
    """A raw peer's callback: keeps every frame; wakes waiters on ``seq_to`` / acks."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.seen = -1
        self.waiting: tuple[int, asyncio.Future[None]] | None = None
        self.answer: asyncio.Future[dict[str, Any]] | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.keep = False

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        raw = bytes(data)
        d = msgpack.unpackb(raw, raw=False)
        kind = d.get("type")
        if self.keep:
            self.frames.append(raw)
        if kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(d)
            self.seen = int(d.get("seq", 0))
        elif kind == "delta":
            self.seen = max(self.seen, int(d["seq_to"]))
            w = self.waiting
            if w is not None and self.seen >= w[0] and not w[1].done():
                w[1].set_result(None)
        elif kind in ("ack", "error") and self.answer is not None and not self.answer.done():
            self.answer.set_result(d)


async def _join(url: str, name: str, since: int | None) -> tuple[Peer, _Recorder, dict[str, Any]]:
    rec = _Recorder()
    rec.keep = since is None  # the capturing peer keeps its welcome (the snapshot) and every delta
    peer = await connect_peer(f"{url}/ws/{DATASET}", rec.on_message, limit=120)
    hello: dict[str, Any] = {"type": "hello", "id": 0, "client": name, "version": 1}
    if since is not None:
        hello["since"] = since
    peer.send(msgpack.packb(hello))
    async with asyncio.timeout(120):
        w = await rec.welcome
    return peer, rec, w


def _op(cs: int, base: int, rid: int, value: float) -> bytes:
    op = {"op": "set", "rows": [rid], "col": COLUMN, "values": [value]}
    return msgpack.packb({"type": "op", "id": cs, "client_seq": cs, "base_seq": base, "ops": [op]})


async def _lean_edit(peer: Peer, rec: _Recorder, cs: int, base: int, rid: int, value: float) -> dict:
    rec.answer = asyncio.get_running_loop().create_future()
    peer.send(_op(cs, base, rid, value))
    async with asyncio.timeout(30):
        a = await rec.answer
    if a.get("type") != "ack":
        raise RuntimeError(f"edit rejected: {a}")
    return a


# ---------------------------------------------------------------- 1. mirror apply


async def _capture(url: str, rows: int, count: int) -> tuple[bytes, list[bytes], dict[int, float]]:
    """(welcome bytes, ``count`` 1-cell delta frames, {rid: last value written})."""
    cap, crec, w = await _join(url, "bench-capture", None)
    writer, wrec, _ = await _join(url, "bench-writer", int(w["seq"]))
    rng = random.Random(f"apply-{rows}")
    written: dict[int, float] = {}
    base = int(w["seq"])
    try:
        for i in range(count):
            rid, value = rng.randrange(rows), round(rng.uniform(1, 500), 2) + i * 1e-6
            a = await _lean_edit(writer, wrec, i + 1, base, rid, value)
            base = int(a["seq"])
            written[rid] = value
            done = asyncio.get_running_loop().create_future()
            crec.waiting = (base, done)
            if crec.seen < base:
                async with asyncio.timeout(30):
                    await done
    finally:
        writer.close()
        cap.close()
    welcome, deltas = crec.frames[0], crec.frames[1:]
    deltas = [d for d in deltas if msgpack.unpackb(d, raw=False).get("type") == "delta"]
    return welcome, deltas, written


def _scatter_us(rows: int, reps: int = 50, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    s = pl.Series(COLUMN, rng.uniform(1, 500, rows))
    times = []
    for _ in range(reps):
        pos, val = int(rng.integers(rows)), float(rng.uniform(1, 500))
        t = time.perf_counter()
        s2 = s.clone()
        s2.scatter([pos], [val])
        times.append(time.perf_counter() - t)
        s = s2
    return float(np.median(times)) * 1e6


def _check(frame: pl.DataFrame, written: dict[int, float]) -> str:
    from protocol.dtypes import RID

    got = dict(
        zip(
            frame.get_column(RID).to_list(),
            frame.get_column(COLUMN).to_list(),
            strict=True,
        )
    )
    bad = [rid for rid, v in written.items() if got.get(rid) is None or abs(got[rid] - v) > 1e-3]
    return f"{len(bad)} of {len(written)} written cells differ (e.g. rid {bad[0]})" if bad else ""


def _apply_run(res: ApplyResult, welcome: bytes, deltas: list[bytes], written: dict[int, float]) -> None:
    """One run: fresh mirrors, every delta applied (and, on the second mirror, the frame read)."""
    from client.mirror import Mirror
    from protocol import decode_server

    w = decode_server(welcome)
    lone, reading = Mirror(), Mirror()
    lone.load(w)
    reading.load(w)
    dec, app, rd = [], [], []
    for raw in deltas:
        t0 = time.perf_counter()
        d = decode_server(raw)
        t1 = time.perf_counter()
        lone.apply(d)
        t2 = time.perf_counter()
        reading.apply(d)
        _ = reading.frame
        t3 = time.perf_counter()
        dec.append(t1 - t0)
        app.append(t2 - t1)
        rd.append(t3 - t2)
    res.decode_us.add(percentile(dec, 50) * 1e6)
    res.apply_us.add(percentile(app, 50) * 1e6)
    res.apply_p99_us.add(percentile(app, 99) * 1e6)
    res.read_us.add(percentile(rd, 50) * 1e6)
    res.read_p99_us.add(percentile(rd, 99) * 1e6)
    if not res.check:
        res.check = _check(lone.frame, written) or _check(reading.frame, written)


def _profile_applies(welcome: bytes, deltas: list[bytes], top: int = 12) -> str:
    """cProfile of ``Mirror.apply`` over the decoded deltas: where a missed target's time goes."""
    import cProfile
    import io
    import pstats

    from client.mirror import Mirror
    from protocol import decode_server

    m = Mirror()
    m.load(decode_server(welcome))
    decoded = [decode_server(raw) for raw in deltas]
    prof = cProfile.Profile()
    prof.enable()
    for d in decoded:
        m.apply(d)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    lines = [ln.rstrip() for ln in out.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


async def _apply_bench(r: ClientResult, cfg: ClientConfig, log: Log) -> None:
    for rows in cfg.apply_rows:
        res = r.apply[rows] = ApplyResult(rows)
        port = free_port()
        with coframe_running(f"coframe-client-{rows}", port, rows, MEMORY) as srv:
            welcome, deltas, written = await _capture(srv.url, rows, cfg.deltas)
            res.deltas, res.delta_bytes = len(deltas), int(np.median([len(d) for d in deltas]))
        for run in range(cfg.runs):
            _apply_run(res, welcome, deltas, written)
            res.scatter_us.add(_scatter_us(rows, seed=run))
            log(
                f"  client apply {rows:,} rows run {run + 1}/{cfg.runs}: apply p50"
                f" {res.apply_us.runs[-1]:.1f} µs, apply + frame {res.read_us.runs[-1]:.1f} µs, decode"
                f" {res.decode_us.runs[-1]:.1f} µs; clone + scatter {res.scatter_us.runs[-1]:.1f} µs"
            )
        if res.apply_us.median > TARGET_APPLY_US:
            res.profile = _profile_applies(welcome, deltas)
        if res.check:
            r.notes.append(f"mirror at {rows:,} rows: {res.check}")
        for line in srv.problems():
            r.notes.append(f"server `{srv.name}` logged: `{line[:160]}`")


# ---------------------------------------------------------------- 2. set_cells round trip


async def _client_rts(url: str, cfg: ClientConfig, rng: random.Random) -> tuple[list[float], int]:
    from client.room import Room

    room = Room(url, DATASET, open_timeout=120)
    await room.open()
    try:
        out = []
        for i in range(cfg.rt_warmup + cfg.rt_edits):
            rid, value = rng.randrange(cfg.rt_rows), round(rng.uniform(1, 500), 2)
            t = time.perf_counter()
            await room.set_cells([rid], COLUMN, value)
            if i >= cfg.rt_warmup:
                out.append(time.perf_counter() - t)
        await room.sync()
        return out, room.seq
    finally:
        await room.close()


async def _peer_rts(url: str, cfg: ClientConfig, rng: random.Random, since: int) -> tuple[list[float], int]:
    peer, rec, w = await _join(url, f"bench-lean-{rng.random():.6f}", since)
    base = int(w["seq"])
    try:
        out = []
        for i in range(cfg.rt_warmup + cfg.rt_edits):
            rid, value = rng.randrange(cfg.rt_rows), round(rng.uniform(1, 500), 2)
            t = time.perf_counter()
            a = await _lean_edit(peer, rec, i + 1, base, rid, value)
            if i >= cfg.rt_warmup:
                out.append(time.perf_counter() - t)
            base = max(base, int(a["seq"]), rec.seen)
        return out, base
    finally:
        peer.close()


async def _roundtrip_bench(r: ClientResult, cfg: ClientConfig, log: Log) -> None:
    rt = r.roundtrip
    rt.rows = cfg.rt_rows
    port = free_port()
    with coframe_running("coframe-client-rt", port, cfg.rt_rows, MEMORY) as srv:
        seq = 0
        for run in range(cfg.runs):
            rng = random.Random(f"rt-{run}")
            for which in ("client", "peer") if run % 2 == 0 else ("peer", "client"):
                if which == "client":
                    xs, seq = await _client_rts(srv.url, cfg, rng)
                    rt.client_p50_ms.add(percentile(xs, 50) * 1e3)
                    rt.client_p99_ms.add(percentile(xs, 99) * 1e3)
                else:
                    xs, seq = await _peer_rts(srv.url, cfg, rng, seq)
                    rt.peer_p50_ms.add(percentile(xs, 50) * 1e3)
                    rt.peer_p99_ms.add(percentile(xs, 99) * 1e3)
                await asyncio.sleep(0.2)  # the server sees the disconnect before the next client joins
            log(
                f"  set_cells round trip run {run + 1}/{cfg.runs}: client p50 {rt.client_p50_ms.runs[-1]:.2f}"
                f" ms, lean peer p50 {rt.peer_p50_ms.runs[-1]:.2f} ms"
            )
    for line in srv.problems():
        r.notes.append(f"server `{srv.name}` logged: `{line[:160]}`")


async def run_client(cfg: ClientConfig, log: Log = print) -> ClientResult:
    """Both measurements; each part runs even if the other failed (the failure is noted)."""
    r = ClientResult(cfg)
    for what, fn in (("mirror apply", _apply_bench), ("set_cells round trip", _roundtrip_bench)):
        try:
            await fn(r, cfg, log)
        except Exception as e:  # a broken part is a finding; the other part still runs
            log(f"client: {what} FAILED: {e!r}")
            r.notes.append(f"`{what}` failed: `{e!r}`")
    return r
