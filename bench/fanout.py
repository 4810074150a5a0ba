"""Benchmarks 1 and 3: fan-out latency, and server CPU per delivered message.

One writer and N readers (N = 1, 10, 50) join the demo room. The writer sends
1-cell ``set`` edits **closed-loop**: one edit in flight; the next is sent as
soon as the last reader has received the previous delta and the writer has
its ack. So every sample is the latency of an edit into an idle server, with
no queueing behind earlier edits (and no tick coalescing).

Latency = time from the writer's send to the moment the LAST reader received
and msgpack-decoded the envelope of the delta carrying that seq. All peers
live in this process (one event loop, :class:`bench.common.Peer`), so the
time also holds the readers' own parsing of up to N frames, identically for
coframe and the baseline.

Baseline, in the same run: :mod:`bench.baseline_server` (``websockets``
``broadcast``) relays a delta-shaped msgpack map of the **same byte size** as
coframe's delta (measured from the writer's copy) to the same peers, which
run the same code. Optionally, :mod:`bench.pycrdt_server` (pycrdt-websocket,
the other reference) is measured the same way with a 1-key Y.Map
update per edit. Runs are interleaved, and the order rotates every run, to
spread machine noise over all systems.

coframe runs twice when both modes are asked for: with ``--memory`` (the
latency targets) and in the default durable configuration (a temporary
data directory, SQLite catalog: every ack waits for the WAL's fsync), as
one more interleaved system. The difference between the two is the
fsync's share of the latency.

CPU per delivered message (benchmark 3): the server process's CPU time (all
threads, user+sys, from ``/proc/PID/task/*/schedstat``) over the timed edits
of each N=50 run, divided by edits × N readers.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .common import MODES, Peer, SeqTracker, ServerProcess, Stats, connect_peer, median, percentile

__all__ = [
    "FanoutConfig",
    "FanoutResult",
    "SystemResult",
    "System",
    "run_fanout",
    "edit_loop",
    "COFRAME",
    "COFRAME_DURABLE",
    "BROADCAST",
    "PYCRDT",
]


@dataclass(frozen=True, slots=True)
class FanoutConfig:
    readers: tuple[int, ...] = (1, 10, 50)
    runs: int = 5
    edits: int = 600  # timed edits per run (p99 = about the 6th largest)
    warmup: int = 40  # untimed edits before each run
    rows: int = 100_000  # demo room size (rids 0..rows-1)
    cpu_readers: int = 50  # N at which CPU per delivered message is measured
    pycrdt: bool = True  # also measure the optional pycrdt-websocket baseline (if installed)
    modes: tuple[str, ...] = MODES  # coframe with ``--memory`` (the targets), and durable (reported beside)


@dataclass(slots=True)
class SystemResult:
    """Per-N figures of one system; each Stats holds one value per run."""

    p50_ms: dict[int, Stats] = field(default_factory=dict)
    p99_ms: dict[int, Stats] = field(default_factory=dict)
    rate: dict[int, Stats] = field(default_factory=dict)  # edits/s achieved closed-loop
    cpu_edit_us: dict[int, Stats] = field(default_factory=dict)  # server CPU µs per edit
    cpu_us: Stats = field(default_factory=Stats)  # server CPU µs per delivered message at cpu_readers
    sys_share: Stats = field(default_factory=Stats)  # kernel share of that CPU time (psutil, coarse)


@dataclass(slots=True)
class FanoutResult:
    config: FanoutConfig
    delta_bytes: int = 0
    yjs_update_bytes: int = 0  # pycrdt-websocket's update message size, if it ran
    systems: dict[str, SystemResult] = field(default_factory=dict)


_YJS_SYNC, _YJS_UPDATE = 0, 2  # y-protocols: message type "sync", sync step "update"


def _is_yjs_update(data: bytes | bytearray | memoryview) -> bool:
    return len(data) > 2 and data[0] == _YJS_SYNC and data[1] == _YJS_UPDATE


class _Reader:
    """A reader peer: decodes every envelope; reports deltas to the tracker.

    coframe and the broadcast baseline send msgpack maps: the reader decodes
    each one and takes ``seq_to`` from deltas. pycrdt-websocket sends y-protocol
    frames with no seq: the reader reads the two type bytes, and since exactly
    one update is broadcast per edit, counts updates.
    """

    def __init__(self, tracker: SeqTracker, yjs: bool = False) -> None:
        self.tracker = tracker
        self.yjs = yjs
        self.seen = 0
        self.peer: Peer | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        if self.yjs:
            if not _is_yjs_update(data):
                return
            self._hit(self.seen + 1)
            return
        d = msgpack.unpackb(data, raw=False)
        if d.get("type") == "delta":
            self._hit(d["seq_to"])
        elif d.get("type") == "welcome" and not self.welcome.done():
            self.welcome.set_result(d)

    def _hit(self, seq: int) -> None:
        t = time.perf_counter()
        tr = self.tracker
        if seq >= tr.target > self.seen:
            tr.remaining -= 1
            tr.last = t
            if tr.remaining == 0 and tr.done is not None and not tr.done.done():
                tr.done.set_result(None)
        if seq > self.seen:
            self.seen = seq


class _Writer:
    """The writer peer: sends edits; records acks and the size of its delta copies.

    For pycrdt-websocket (no acks) the writer's own copy of the broadcast
    update stands in for the ack.
    """

    def __init__(self, yjs: bool = False) -> None:
        self.yjs = yjs
        self.peer: Peer | None = None
        self.ack: asyncio.Future[dict[str, Any]] | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.delta_sizes: list[int] = []
        self.errors: list[dict[str, Any]] = []

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        if self.yjs:
            if _is_yjs_update(data):
                self.delta_sizes.append(len(data))
                del self.delta_sizes[:-64]
                if self.ack is not None and not self.ack.done():
                    self.ack.set_result({"type": "ack", "seq": None})
            return
        d = msgpack.unpackb(data, raw=False)
        kind = d.get("type")
        if kind == "delta":
            self.delta_sizes.append(len(data))
            del self.delta_sizes[:-64]
        elif kind in ("ack", "error"):
            if kind == "error":
                self.errors.append(d)
            if self.ack is not None and not self.ack.done():
                self.ack.set_result(d)
        elif kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(d)


COFRAME, BROADCAST, PYCRDT = "coframe", "websockets.broadcast", "pycrdt-websocket"
COFRAME_DURABLE = "coframe (durable)"  # the default configuration: every ack waits for the WAL's fsync


def kind_of(name: str) -> str:
    """The protocol a system named ``name`` speaks (both coframe modes speak coframe's)."""
    return COFRAME if name.startswith(COFRAME) else name


class System:
    """One server under test: how to connect, join, and shape an edit.

    ``name`` is :data:`COFRAME`, :data:`COFRAME_DURABLE`, :data:`BROADCAST` or
    :data:`PYCRDT`; ``kind`` is the protocol it speaks (:func:`kind_of`).
    """

    def __init__(self, name: str, server: ServerProcess, path: str, *, rows: int) -> None:
        kind = kind_of(name)
        self.name = name
        self.kind = kind
        self.server = server
        self.path = path
        self.rows = rows
        self.yjs = kind == PYCRDT
        self.tracker = SeqTracker()
        self.writer = _Writer(self.yjs)
        self.readers: list[_Reader] = []
        self.seq = 0  # last seq acked to the writer (pycrdt: edits delivered so far)
        self.client_seq = 0
        self.pad_to = 0  # broadcast baseline only: byte size of coframe's delta
        self._rng = random.Random(f"fanout-{kind}")
        self._doc: Any = None  # pycrdt only: the writer's local Y document
        self._cells: Any = None

    @property
    def uri(self) -> str:
        return f"{self.server.url}{self.path}"

    async def _hello(self, peer: Peer, fut: asyncio.Future[dict[str, Any]], client: str) -> None:
        if self.kind != COFRAME:
            return
        # ``since`` = the current seq: a resume welcome without a snapshot, so
        # joining 50 readers does not ship 50 snapshots (join is not measured here).
        hello = {"type": "hello", "id": 0, "client": client, "version": 1, "since": self.seq}
        peer.send(msgpack.packb(hello))
        async with asyncio.timeout(30):
            w = await fut
        if w.get("seq") != self.seq:
            raise RuntimeError(f"{self.name}: welcome at seq {w.get('seq')}, expected {self.seq}")

    async def open_writer(self) -> None:
        if self.yjs:
            import pycrdt

            self._doc = pycrdt.Doc()
            self._cells = self._doc.get("cells", type=pycrdt.Map)
        self.writer.peer = await connect_peer(self.uri, self.writer.on_message)
        await self._hello(self.writer.peer, self.writer.welcome, "bench-writer")

    async def open_readers(self, n: int) -> None:
        for i in range(n):
            r = _Reader(self.tracker, self.yjs)
            r.seen = self.seq
            r.peer = await connect_peer(self.uri, r.on_message)
            await self._hello(r.peer, r.welcome, f"bench-reader-{i}")
            self.readers.append(r)
        if self.yjs:
            await asyncio.sleep(0.1)  # the room registers each client after its sync step 1

    async def close_readers(self) -> None:
        for r in self.readers:
            if r.peer is not None:
                r.peer.close()
        self.readers = []
        await asyncio.sleep(0.2)  # let the server see the disconnects

    def close(self) -> None:
        for r in self.readers:
            if r.peer is not None:
                r.peer.close()
        if self.writer.peer is not None:
            self.writer.peer.close()

    def _op(self) -> tuple[bytes, int]:
        self.client_seq += 1
        cs = self.client_seq
        rid = self._rng.randrange(self.rows)
        value = round(self._rng.uniform(1, 500), 2)
        if self.yjs:
            from pycrdt import create_update_message

            before = self._doc.get_state()
            self._cells[str(rid)] = value
            return create_update_message(self._doc.get_update(before)), self.seq + 1
        d: dict[str, Any] = {
            "type": "op",
            "id": cs,
            "client_seq": cs,
            "base_seq": self.seq,
            "ops": [{"op": "set", "rows": [rid], "col": "price", "values": [value]}],
        }
        if self.kind == COFRAME:
            return msgpack.packb(d), self.seq + 1
        d["pad_to"] = self.pad_to
        d["client"] = "bench-writer"
        return msgpack.packb(d), cs

    async def one_edit(self) -> float:
        """Send one edit; return seconds until the last reader had its delta."""
        w = self.writer
        assert w.peer is not None
        data, target = self._op()
        done = self.tracker.arm(target, len(self.readers))
        w.ack = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        w.peer.send(data)
        ack = await w.ack
        if ack.get("type") != "ack":
            raise RuntimeError(f"{self.name}: edit rejected: {ack}")
        self.seq = target if ack.get("seq") is None else int(ack["seq"])
        if self.seq != target:
            raise RuntimeError(f"{self.name}: acked as seq {self.seq}, expected {target}")
        if self.readers:
            await done
            return self.tracker.last - t0
        return time.perf_counter() - t0


async def edit_loop(system: System, count: int, limit: float = 120.0) -> list[float]:
    """``count`` closed-loop edits (bounded in count and time); their latencies in seconds."""
    out: list[float] = []
    async with asyncio.timeout(limit):
        for _ in range(count):
            out.append(await system.one_edit())
    return out


async def _measure(system: System, cfg: FanoutConfig, n: int, res: SystemResult) -> None:
    await edit_loop(system, cfg.warmup)
    cpu0, (u0, s0) = system.server.cpu_seconds(), system.server.cpu_split()
    t0 = time.perf_counter()
    lat = await edit_loop(system, cfg.edits)
    wall = time.perf_counter() - t0
    cpu = system.server.cpu_seconds() - cpu0
    u1, s1 = system.server.cpu_split()
    ms = [x * 1e3 for x in lat]
    res.p50_ms.setdefault(n, Stats()).add(percentile(ms, 50))
    res.p99_ms.setdefault(n, Stats()).add(percentile(ms, 99))
    res.rate.setdefault(n, Stats()).add(cfg.edits / wall)
    res.cpu_edit_us.setdefault(n, Stats()).add(cpu * 1e6 / cfg.edits)
    if n == cfg.cpu_readers:
        res.cpu_us.add(cpu * 1e6 / (cfg.edits * n))
        if (u1 - u0) + (s1 - s0) > 0:
            res.sys_share.add((s1 - s0) / ((u1 - u0) + (s1 - s0)))


async def run_fanout(
    servers: dict[str, ServerProcess],
    cfg: FanoutConfig,
    log: Callable[[str], None] = print,
) -> tuple[FanoutResult, dict[str, System]]:
    """Run benchmark 1 (and 3 at ``cfg.cpu_readers``) against ``servers`` (keyed by kind).

    ``servers`` holds :data:`COFRAME` and :data:`BROADCAST`, and optionally
    :data:`COFRAME_DURABLE` and :data:`PYCRDT`. Returns the result and the
    open systems; the caller closes them (``System.close``) after any profiling.
    """
    paths = {COFRAME: "/ws/sales", BROADCAST: "/ws/fanout", PYCRDT: "/ws/sales"}
    systems = {k: System(k, srv, paths[kind_of(k)], rows=cfg.rows) for k, srv in servers.items()}
    result = FanoutResult(cfg, systems={k: SystemResult() for k in systems})
    cf = systems[COFRAME] if COFRAME in systems else systems[COFRAME_DURABLE]
    bl = systems[BROADCAST]
    for s in systems.values():
        await s.open_writer()
    # Size coframe's delta first: the baseline relays payloads of that size.
    await cf.open_readers(1)
    await edit_loop(cf, cfg.warmup)
    result.delta_bytes = int(median(cf.writer.delta_sizes))
    bl.pad_to = result.delta_bytes
    await cf.close_readers()
    order = list(systems.values())
    for n in cfg.readers:
        for s in order:
            await s.open_readers(n)
        for run in range(cfg.runs):
            # Rotate the order every run to spread machine noise over all systems.
            k = run % len(order)
            for s in order[k:] + order[:k]:
                await _measure(s, cfg, n, result.systems[s.name])
            log(
                f"  fan-out N={n} run {run + 1}/{cfg.runs}: "
                + ", ".join(
                    f"{s.name} p50 {result.systems[s.name].p50_ms[n].runs[-1]:.2f}"
                    f" p99 {result.systems[s.name].p99_ms[n].runs[-1]:.2f} ms"
                    for s in order
                )
            )
        if n != cfg.readers[-1]:
            for s in order:
                await s.close_readers()
    for s in systems.values():
        if s.yjs:
            result.yjs_update_bytes = int(median(s.writer.delta_sizes)) if s.writer.delta_sizes else 0
    return result, systems
