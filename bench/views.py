"""Benchmark group ``views`` (issue 4): live Perspective views under edits, and their memory.

5. **View latency under 1k edits/s on a 1M-row room.** A writer peer sends
   1-cell ``set`` edits of ``price`` at a fixed rate, paced by a monotonic
   schedule (open loop: it never waits for acks). A subscriber peer (a
   separate connection in the same process, so one clock) holds live views.
   Every frame is timestamped where it is received
   (:class:`bench.common.Peer` calls back from ``data_received``). For each
   edit acked as seq N:

   - *ack → view*: from the writer receiving the ack of N to the subscriber
     receiving the first ``view`` message of that view with ``seq >= N``;
   - *send → view*: the same, from the moment the writer sent the edit (end
     to end: it also holds the time the edit waited for its tick);
   - the same two figures for the subscriber's ``delta`` (the floor without
     views, same edits, same run), and send → ack.

   Each run starts a fresh ``coframe serve --memory`` and goes through three
   phases on the same two connections, with the same load:

   A. *no views* (no Perspective table yet: the floor of the whole path);
   B. *grouped + plain*: a grouped view (``group_by`` region, ``sum`` of
      price) and a plain view with a 100-row viewport, unsorted, so it shows
      rids 0..99;
   C. *grouped + sorted plain*: the plain view replaced by one sorted by
      price descending (100-row viewport).

   Every value written is unique, so every edit changes the grouped view.
   One edit in ``plain_every`` is a *plain edit*, made so that it must
   change the plain view: in B it writes one of rids 0..99, in C it writes a
   new maximum price (the row moves to the top of the viewport). The plain
   view's latency is measured on those edits only. After each phase the
   load stops and the run waits (bounded) until every acked edit is
   reflected; an edit still not reflected then counts as *missing*. The
   final content of each view is then checked against the expected state
   (the demo frame rebuilt here, plus every edit written).

6. **Memory.** Server RSS (psutil on the server pid) on a durable data
   directory prepared by one earlier start (which committed the demo), so
   the restarted server holds no dataset until a room loads: after start;
   after a raw peer resumed into the room (the room is loaded, no snapshot
   encoded); after a Python client joined (``connect()``, full snapshot);
   after each of 10 ``subscribe_view`` calls (the first one builds the
   Perspective table). Each reading starts after a fixed number of round
   trips (``/healthz`` before the client joins, ``ping`` after); RSS is
   then read between further round trips (every ``settle_every`` s) until
   it has moved by at most ``settle_mb`` over ``settle_window`` s (bounded
   by ``settle_max``): transient buffers of the join (about 130 MB at 1M
   rows) are handed back to the OS a few seconds after it. The reading is
   the median of the last 3 reads; the first read is kept too (*transient*
   = first − settled). The room's memory (RSS minus the start RSS) is given
   as a ratio to the room frame's Arrow size (``frame_to_arrow`` of the
   normalized demo frame, computed here).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import shutil
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from .common import (
    HOST,
    Peer,
    ServerProcess,
    Stats,
    coframe_argv,
    connect_peer,
    free_port,
    median,
    percentile,
)
from .storage import StorageServer

__all__ = [
    "ViewsConfig",
    "ViewsResult",
    "LatencyResult",
    "PhaseResult",
    "Lat",
    "MemoryResult",
    "ViewsBench",
    "ViewLoad",
    "PHASES",
    "MEMORY_VIEWS",
    "TARGET_VIEW_P99_MS",
    "TARGET_MEMORY_RATIO",
    "missed_phases",
]

TARGET_VIEW_P99_MS = 30.0
TARGET_MEMORY_RATIO = 4.0

DATASET = "sales"
COLUMN = "price"

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
    profile_s: int = 6


# ---------------------------------------------------------------- phases and views


@dataclass(frozen=True, slots=True)
class Phase:
    key: str
    label: str
    views: tuple[tuple[str, dict[str, Any]], ...]  # (name, config); plain views get the viewport
    plain: str  # how plain edits are made: "rids" (rids 0..viewport-1) or "max" (a new maximum)


GROUPED = ("grouped", {"group_by": ["region"], "columns": [COLUMN], "aggregates": {COLUMN: "sum"}})
PLAIN = ("plain", {})
SORTED = ("sorted", {"sort": [[COLUMN, "desc"]]})

PHASES = (
    Phase("base", "A. no views (no Perspective table)", (), "rids"),
    Phase("plain", "B. grouped + plain view", (GROUPED, PLAIN), "rids"),
    Phase("sorted", "C. grouped + sorted plain view", (GROUPED, SORTED), "max"),
)

#: The 10 views of the memory benchmark: (label, ``subscribe_view`` keyword arguments).
MEMORY_VIEWS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "grouped: sum of price by region",
        {"group_by": ["region"], "columns": ["price"], "aggregates": {"price": "sum"}},
    ),
    (
        "grouped: sum of price by product",
        {"group_by": ["product"], "columns": ["price"], "aggregates": {"price": "sum"}},
    ),
    (
        "grouped: count by region",
        {"group_by": ["region"], "columns": ["order_id"], "aggregates": {"order_id": "count"}},
    ),
    (
        "grouped: sum of qty by region × product",
        {"group_by": ["region", "product"], "columns": ["qty"], "aggregates": {"qty": "sum"}},
    ),
    (
        "split_by: sum of price by region, split by paid",
        {"group_by": ["region"], "split_by": ["paid"], "columns": ["price"], "aggregates": {"price": "sum"}},
    ),
    ("plain, filtered qty > 40, 100 rows", {"filter": [["qty", ">", 40]], "viewport": (0, 100)}),
    ("plain, filtered region = EU, 100 rows", {"filter": [["region", "==", "EU"]], "viewport": (0, 100)}),
    ("plain, sorted by price desc, 100 rows", {"sort": [["price", "desc"]], "viewport": (0, 100)}),
    ("plain, sorted by updated_at desc, 100 rows", {"sort": [["updated_at", "desc"]], "viewport": (0, 100)}),
    (
        "plain, filtered note = rush, sorted by price desc, 100 rows",
        {"filter": [["note", "==", "rush"]], "sort": [["price", "desc"]], "viewport": (0, 100)},
    ),
)


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
    steps: dict[str, Stats] = field(default_factory=dict)  # label -> RSS bytes per run
    view_open_s: dict[str, Stats] = field(default_factory=dict)  # label -> subscribe → snapshot, s
    view_rows: dict[str, int] = field(default_factory=dict)  # label -> the view's total row count
    first: dict[str, Stats] = field(default_factory=dict)  # label -> RSS bytes at the first read
    settle_s: dict[str, Stats] = field(default_factory=dict)  # label -> seconds until RSS was stable

    def step(self, label: str) -> Stats:
        return self.steps.setdefault(label, Stats())


@dataclass(slots=True)
class ViewsResult:
    config: ViewsConfig
    latency: LatencyResult = field(default_factory=LatencyResult)
    memory: MemoryResult = field(default_factory=MemoryResult)
    notes: list[str] = field(default_factory=list)


STEP_START = "after start (room not loaded)"
STEP_ROOM = "room loaded by a resuming raw peer (no snapshot encoded)"
STEP_CLIENT = "a Python client joined (`connect()`, full snapshot)"


def view_step(i: int) -> str:
    return f"table + {i} view{'s' if i > 1 else ''}"


def missed_phases(r: ViewsResult) -> list[str]:
    """Keys of the phases with a view whose ack → view or send → view p99 is over the target."""
    out = []
    for key, ph in r.latency.phases.items():
        for name in ph.views:
            for k in (f"ack→{name}", f"send→{name}"):
                lat = ph.lat.get(k)
                if lat is not None and lat.p99.n and not lat.p99.median <= TARGET_VIEW_P99_MS:
                    if key not in out:
                        out.append(key)
    return out


# ---------------------------------------------------------------- the expected state


class Expected:
    """The demo frame's ``price`` and ``region`` (rebuilt here), plus every edit written."""

    def __init__(self, rows: int) -> None:
        import polars as pl

        from server.demo import demo_sales

        df = demo_sales(rows)
        self.base = df.get_column(COLUMN).cast(pl.Float64).fill_null(float("nan")).to_numpy().copy()
        regions = df.get_column("region")
        self.names = sorted(regions.unique().to_list())
        codes = {n: i for i, n in enumerate(self.names)}
        self.codes = np.asarray(regions.replace_strict(codes, return_dtype=pl.Int64).to_numpy())
        self.values: dict[int, float] = {}

    def price(self) -> np.ndarray:
        p = self.base.copy()
        if self.values:
            p[np.fromiter(self.values.keys(), dtype=np.int64)] = np.fromiter(
                self.values.values(), dtype=float
            )
        return p

    def check(self, name: str, config: dict[str, Any], raw: bytes, viewport: int) -> str | None:
        """None if the view message ``raw`` shows the expected content, else what differs."""
        import polars as pl

        from protocol import decode_server

        msg = decode_server(raw)
        frame = pl.from_arrow(msg.data)
        assert isinstance(frame, pl.DataFrame)
        price = self.price()
        if config.get("group_by"):
            sums = np.bincount(self.codes, weights=np.nan_to_num(price), minlength=len(self.names))
            got = dict(
                zip(frame.get_column("region").to_list(), frame.get_column(COLUMN).to_list(), strict=True)
            )
            want = dict(zip(self.names, sums.tolist(), strict=True))
            if set(got) != set(want):
                return f"{name}: groups {sorted(got)} != {sorted(want)}"
            bad = [g for g in want if not np.isclose(got[g], want[g], rtol=1e-9, atol=1e-6)]
            return f"{name}: sums differ for {bad}: {[(got[g], want[g]) for g in bad]}" if bad else None
        vals = frame.get_column(COLUMN).cast(float).fill_null(float("nan")).to_numpy()
        if config.get("sort"):
            top = np.sort(price[~np.isnan(price)])[::-1][:viewport]
            ok = len(vals) == len(top) and np.allclose(vals, top, rtol=0, atol=1e-9)
            return None if ok else f"{name}: top {viewport} prices differ (first {vals[:3]} vs {top[:3]})"
        rids = frame.get_column("_rid").to_numpy().astype(np.int64)
        want_p = price[:viewport]
        ok = rids.tolist() == list(range(viewport)) and np.allclose(
            vals, want_p, rtol=0, atol=1e-9, equal_nan=True
        )
        return None if ok else f"{name}: viewport rids/prices differ from rids 0..{viewport - 1}"


# ---------------------------------------------------------------- the peers


class _Writer:
    """The writer: records the receive time and seq of every ack (edit index = client_seq - 1)."""

    def __init__(self, load: ViewLoad) -> None:
        self.load = load
        self.peer: Peer | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.acked = 0
        self.max_seq = 0
        self.errors: Counter[str] = Counter()

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        t = time.perf_counter()
        d = msgpack.unpackb(data, raw=False)
        kind = d.get("type")
        if kind == "ack":
            i = int(d["client_seq"]) - 1
            ld = self.load
            if 0 <= i < len(ld.ack_t):
                ld.ack_t[i] = t
                ld.seq[i] = int(d["seq"])
            self.acked += 1
            self.max_seq = max(self.max_seq, int(d["seq"]))
            ld.progress.set()
        elif kind == "error":
            self.errors[str(d.get("code"))] += 1
            self.acked += 1  # answered
            self.load.progress.set()
        elif kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(d)


@dataclass(slots=True)
class _ViewLog:
    seq: list[int] = field(default_factory=list)
    t: list[float] = field(default_factory=list)
    last: bytes = b""


class _Subscriber:
    """The subscriber: deltas and view messages, each with its receive time."""

    def __init__(self, load: ViewLoad) -> None:
        self.load = load
        self.peer: Peer | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.delta_seq: list[int] = []
        self.delta_t: list[float] = []
        self.views: dict[str, _ViewLog] = {}
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: Counter[str] = Counter()

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        t = time.perf_counter()
        d = msgpack.unpackb(data, raw=False)
        kind = d.get("type")
        if kind == "delta":
            self.delta_seq.append(int(d["seq_to"]))
            self.delta_t.append(t)
        elif kind == "view":
            if d.get("kind") in ("snapshot", "update"):
                log = self.views.setdefault(d["view"], _ViewLog())
                log.seq.append(int(d["seq"]))
                log.t.append(t)
                log.last = bytes(data)
            self._reply(d)
        elif kind == "error":
            self.errors[str(d.get("code"))] += 1
            self._reply(d)
        elif kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(d)
        self.load.progress.set()

    def _reply(self, d: dict[str, Any]) -> None:
        re = d.get("re")
        fut = self.replies.pop(re, None) if isinstance(re, int) else None
        if fut is not None and not fut.done():
            fut.set_result(d)


def _first_at_or_after(seqs: list[int], ts: list[float], n: int) -> float | None:
    """Receive time of the first message with seq >= n (``seqs`` is non-decreasing)."""
    i = bisect.bisect_left(seqs, n)
    return ts[i] if i < len(seqs) else None


# ---------------------------------------------------------------- the load


class ViewLoad:
    """A writer and a subscriber on one room; the paced edit load and its measurements."""

    def __init__(self, url: str, rows: int, cfg: ViewsConfig, expected: Expected, seed: int = 0) -> None:
        self.url = url
        self.rows = rows
        self.cfg = cfg
        self.expected = expected
        self.rng = random.Random(f"views-{seed}")
        self.progress = asyncio.Event()
        self.writer = _Writer(self)
        self.sub = _Subscriber(self)
        # Per edit (index = client_seq - 1):
        self.send_t: list[float] = []
        self.sched_t: list[float] = []
        self.ack_t: list[float] = []
        self.seq: list[int] = []
        self.plain: list[bool] = []
        self.k = 0  # edits made on this room (also makes every value unique)
        self.views: dict[str, dict[str, Any]] = {}  # subscribed: name -> config
        self._ids = 0

    async def open(self) -> None:
        for who, name in ((self.writer, "bench-view-writer"), (self.sub, "bench-view-subscriber")):
            who.peer = await connect_peer(f"{self.url}/ws/{DATASET}", who.on_message)
            hello = {"type": "hello", "id": 0, "client": name, "version": 1, "since": 0}
            who.peer.send(msgpack.packb(hello))
            async with asyncio.timeout(60):
                w = await who.welcome
            if w.get("seq") != 0:
                raise RuntimeError(f"{name}: welcome at seq {w.get('seq')}, expected 0 (a fresh server)")

    def close(self) -> None:
        for p in (self.writer.peer, self.sub.peer):
            if p is not None:
                p.close()

    # ------------------------------------------------------------ views

    async def _request(self, msg: Any, limit: float = 300.0) -> dict[str, Any]:
        from protocol import encode

        assert self.sub.peer is not None
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.sub.replies[msg.id] = fut
        self.sub.peer.send(encode(msg, binary=True))
        async with asyncio.timeout(limit):
            return await fut

    async def subscribe(self, name: str, config: dict[str, Any]) -> float:
        """Open a view; return the seconds to its snapshot (the first one includes the table build)."""
        from protocol import Subscribe

        grouped = bool(config.get("group_by") or config.get("split_by"))
        viewport = None if grouped else (0, self.cfg.viewport)
        self._ids += 1
        t = time.perf_counter()
        reply = await self._request(Subscribe(name, config, viewport, id=self._ids))
        dt = time.perf_counter() - t
        if reply.get("type") != "view" or reply.get("kind") != "snapshot":
            raise RuntimeError(f"subscribe {name}: {reply.get('code')}: {reply.get('message')}")
        self.views[name] = config
        return dt

    async def unsubscribe(self, name: str) -> None:
        from protocol import Unsubscribe

        self._ids += 1
        await self._request(Unsubscribe(name, id=self._ids))
        self.views.pop(name, None)
        self.sub.views.pop(name, None)

    async def use(self, phase: Phase) -> dict[str, float]:
        """Subscribe/unsubscribe so that exactly ``phase``'s views are open; seconds per new view."""
        wanted = dict(phase.views)
        for name in [n for n in self.views if n not in wanted or self.views[n] != wanted[n]]:
            await self.unsubscribe(name)
        opened = {}
        for name, config in phase.views:
            if name not in self.views:
                opened[name] = await self.subscribe(name, config)
        return opened

    # ------------------------------------------------------------ edits

    def _edit(self, plain_mode: str | None, sched: float) -> None:
        self.k += 1
        k = self.k
        plain = plain_mode is not None and k % self.cfg.plain_every == 0
        if plain and plain_mode == "max":
            # A new maximum: the row moves to the top of the sorted view.
            rid, value = self.rng.randrange(self.rows), 1e6 + k
        elif plain:
            rid, value = self.rng.randrange(self.cfg.viewport), 1.0005 + k * 0.001
        else:
            rid, value = self.rng.randrange(self.rows), 1.0005 + k * 0.001
        cs = len(self.send_t) + 1
        base = self.writer.max_seq
        op = {"op": "set", "rows": [rid], "col": COLUMN, "values": [value]}
        msg = {"type": "op", "id": cs, "client_seq": cs, "base_seq": base, "ops": [op]}
        assert self.writer.peer is not None
        self.expected.values[rid] = value
        self.sched_t.append(sched)
        self.ack_t.append(0.0)
        self.seq.append(0)
        self.plain.append(plain)
        self.send_t.append(time.perf_counter())
        self.writer.peer.send(msgpack.packb(msg), flush=False)

    async def pace(self, duration: float, plain_mode: str | None, stop: asyncio.Event | None = None) -> range:
        """Send edits at ``cfg.rate`` for ``duration`` s (or until ``stop``); return the edits' indices."""
        rate = self.cfg.rate
        first = len(self.send_t)
        total = int(duration * rate)
        t0 = time.perf_counter()
        k = 0
        while k < total and not (stop is not None and stop.is_set()):
            due = min(total, int((time.perf_counter() - t0) * rate) + 1)
            while k < due:
                self._edit(plain_mode, t0 + k / rate)
                k += 1
            assert self.writer.peer is not None
            self.writer.peer.flush()
            await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
        return range(first, len(self.send_t))

    async def churn(self, stop: asyncio.Event, plain_mode: str | None = "rids") -> None:
        """The same load until ``stop`` (a profiling workload)."""
        while not stop.is_set():
            await self.pace(1.0, plain_mode, stop)

    async def drain(self, edits: range, limit: float) -> bool:
        """Wait until every edit in ``edits`` is acked and reflected by the deltas and every open view."""
        if not edits:
            return True
        plain_seq_needed = [i for i in edits if self.plain[i]]

        def done() -> bool:
            if self.writer.acked < len(self.send_t):
                return False
            last = max(self.seq[i] for i in edits)
            if not self.sub.delta_seq or self.sub.delta_seq[-1] < last:
                return False
            for name, config in self.views.items():
                grouped = bool(config.get("group_by"))
                need = last if grouped else max((self.seq[i] for i in plain_seq_needed), default=0)
                log = self.sub.views.get(name)
                if log is None or not log.seq or log.seq[-1] < need:
                    return False
            return True

        deadline = time.monotonic() + limit
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.progress.wait()
        return True

    # ------------------------------------------------------------ figures

    def latencies(
        self, edits: range, events: tuple[list[int], list[float]], plain_only: bool = False
    ) -> tuple[list[float], list[float], int]:
        """(ack → event ms, send → event ms, missing) over the acked edits of ``edits``."""
        seqs, ts = events
        from_ack, from_send, missing = [], [], 0
        for i in edits:
            if plain_only and not self.plain[i]:
                continue
            if not self.seq[i]:
                continue  # rejected: counted as an error
            t = _first_at_or_after(seqs, ts, self.seq[i])
            if t is None:
                missing += 1
                continue
            from_ack.append((t - self.ack_t[i]) * 1e3)
            from_send.append((t - self.send_t[i]) * 1e3)
        return from_ack, from_send, missing


# ---------------------------------------------------------------- the benchmark


@contextlib.contextmanager
def _tempdir(tag: str) -> Iterator[Path]:
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
        d0, v0 = len(load.sub.delta_seq), {n: len(load.sub.views.get(n, _ViewLog()).seq) for n in load.views}
        cpu0, t0 = srv.cpu_seconds(), time.perf_counter()
        edits = await load.pace(cfg.measure, phase.plain)
        wall = time.perf_counter() - t0
        cpu = srv.cpu_seconds() - cpu0
        d1, v1 = len(load.sub.delta_seq), {n: len(load.sub.views.get(n, _ViewLog()).seq) for n in load.views}
        drained = await load.drain(edits, cfg.drain)
        res.rate.add(len(edits) / wall)
        res.sent.add(len(edits))
        res.plain_sent.add(sum(load.plain[i] for i in edits))
        res.lag_p99_ms.add(percentile([(load.send_t[i] - load.sched_t[i]) * 1e3 for i in edits], 99))
        res.cpu.add(cpu / wall)
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
            vl = load.sub.views.get(name, _ViewLog())
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
            f" cores; deltas/s {(d1 - d0) / wall:.0f}" + ("" if drained else "; NOT DRAINED")
        )

    # ------------------------------------------------------------ 6. memory

    async def memory(self) -> None:
        """Benchmark 6: server RSS after start, room load, a client join, and 10 views."""
        from server.demo import demo_sales
        from server.ops.dtypes import normalize_frame
        from server.rooms.deltas import frame_to_arrow

        cfg, r = self.cfg, self.result.memory
        r.rows = cfg.mem_rows
        df = demo_sales(cfg.mem_rows)
        r.arrow_bytes_raw = int(df.to_arrow().nbytes)
        r.arrow_bytes = int(frame_to_arrow(normalize_frame(df)[0]).nbytes)
        del df
        with _tempdir("mem") as data:
            prep = StorageServer("coframe-mem-prep", cfg.mem_rows, ["--data-dir", str(data)])
            self.servers.append(prep)
            prep.start()
            self.retire(prep)  # the first start committed the demo; later starts only open it
            for run in range(cfg.mem_runs):
                srv = StorageServer(f"coframe-mem-{run}", cfg.mem_rows, ["--data-dir", str(data)])
                self.servers.append(srv)
                srv.start()
                try:
                    await self._memory_run(srv)
                finally:
                    self.retire(srv)
                last = {k: v.runs[-1] / 1e6 for k, v in r.steps.items() if v.runs}
                self.log(
                    f"  memory run {run + 1}/{cfg.mem_runs}: RSS MB "
                    + ", ".join(f"{k.split(' (')[0]} {v:,.0f}" for k, v in last.items())
                )

    async def _memory_run(self, srv: StorageServer) -> None:
        from client.room import Room

        cfg, r = self.cfg, self.result.memory

        async def healthz() -> None:
            def get() -> None:
                with urllib.request.urlopen(f"http://{HOST}:{srv.port}/healthz", timeout=30) as resp:
                    resp.read()

            await asyncio.to_thread(get)

        async def rss(label: str, settle: Callable[[], Any]) -> None:
            for _ in range(cfg.settle):
                await settle()
            t0 = time.monotonic()
            reads = [(t0, srv.rss_bytes())]
            while True:
                await settle()
                # Pacing of the round trips while the allocator hands freed pages back (not a sync wait).
                await asyncio.sleep(cfg.settle_every)
                now = time.monotonic()
                reads.append((now, srv.rss_bytes()))
                recent = [b for t, b in reads if t >= now - cfg.settle_window]
                stable = (
                    reads[0][0] <= now - cfg.settle_window
                    and max(recent) - min(recent) <= cfg.settle_mb * 1e6
                )
                if stable or now - t0 >= cfg.settle_max:
                    break
            r.step(label).add(median([b for _, b in reads[-3:]]))
            r.first.setdefault(label, Stats()).add(reads[0][1])
            r.settle_s.setdefault(label, Stats()).add(reads[-1][0] - t0)

        await rss(STEP_START, healthz)
        welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def on_message(data: bytes | bytearray | memoryview) -> None:
            if not welcome.done():
                welcome.set_result(msgpack.unpackb(data, raw=False))

        peer = await connect_peer(f"{srv.url}/ws/{DATASET}", on_message, limit=300)
        room = Room(srv.url, DATASET, open_timeout=300, reconnect=False)
        try:
            peer.send(
                msgpack.packb(
                    {"type": "hello", "id": 0, "client": "bench-mem-peer", "version": 1, "since": 0}
                )
            )
            async with asyncio.timeout(300):
                w = await welcome
            if w.get("type") != "welcome":
                raise RuntimeError(f"raw peer: expected a welcome, got {w.get('type')}: {w.get('message')}")
            await rss(STEP_ROOM, healthz)
            await room.open()
            if room.frame.height != cfg.mem_rows:
                raise RuntimeError(f"client mirror has {room.frame.height} rows, not {cfg.mem_rows}")
            await rss(STEP_CLIENT, room.ping)
            for i, (label, kw) in enumerate(MEMORY_VIEWS, 1):
                t = time.perf_counter()
                view = await room.subscribe_view(**kw)
                r.view_open_s.setdefault(label, Stats()).add(time.perf_counter() - t)
                r.view_rows[label] = view.rows
                await rss(view_step(i), room.ping)
        finally:
            await room.close()
            peer.close()
