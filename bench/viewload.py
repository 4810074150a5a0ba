"""The load of the views group: a paced writer, a subscriber with live views, and the expected state.

:class:`ViewLoad` drives two :class:`bench.common.Peer` connections to one
room: a writer sending 1-cell ``set`` edits of ``price`` at a fixed rate
(open loop, paced by a monotonic schedule) and a subscriber holding the
views. Every frame is timestamped where it is received, so latencies are
taken on one clock. :class:`Expected` rebuilds the demo frame here and
follows every edit written, so a view's final content can be checked. The
benchmarks that use it are in :mod:`bench.views` (latency) and
:mod:`bench.viewfaults` (the views process killed under load).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

from .common import Peer, connect_peer

if TYPE_CHECKING:
    from .views import ViewsConfig

__all__ = [
    "DATASET",
    "COLUMN",
    "Phase",
    "GROUPED",
    "GROUPED_MAX",
    "PLAIN",
    "SORTED",
    "Expected",
    "ViewLoad",
    "ViewLog",
    "first_at_or_after",
]

DATASET = "sales"
COLUMN = "price"

# ---------------------------------------------------------------- phases and views


@dataclass(frozen=True, slots=True)
class Phase:
    key: str
    label: str
    views: tuple[tuple[str, dict[str, Any]], ...]  # (name, config); plain views get the viewport
    # How plain edits are made: "rids" (one of rids 0..viewport-1), "max" (a new maximum price at a
    # random row), "both" (a new maximum at one of rids 0..viewport-1: it changes every view) or
    # "raise" (as "both", and every other edit a new maximum at a random row: a grouped max, which
    # only a new maximum or an edit of a group's maximal row changes, gets an update for each edit).
    plain: str


GROUPED = ("grouped", {"group_by": ["region"], "columns": [COLUMN], "aggregates": {COLUMN: "sum"}})
# A max: a grouped view Perspective serves (sums, means and counts are computed from the room's frame).
#: A grouped max only Perspective serves: its own name for it, ``high`` (the frame's engine serves ``max``).
GROUPED_MAX = ("grouped_max", {"group_by": ["region"], "columns": [COLUMN], "aggregates": {COLUMN: "high"}})
PLAIN = ("plain", {})
SORTED = ("sorted", {"sort": [[COLUMN, "desc"]]})


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
            if config["aggregates"][COLUMN] in ("max", "high"):
                sums = np.full(len(self.names), -np.inf)
                np.fmax.at(sums, self.codes, price)  # fmax skips NaN (null prices)
            else:
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
class ViewLog:
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
        self.views: dict[str, ViewLog] = {}
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: Counter[str] = Counter()
        # Snapshots the server sent on its own (no ``re``: a view rebuilt), per view:
        # (receive time, its seq, the writer's last acked seq then).
        self.fresh: dict[str, list[tuple[float, int, int]]] = {}
        # every snapshot and update: (receive time, seq, the writer's highest acked seq then)
        self.seen: dict[str, list[tuple[float, int, int]]] = {}
        self.closed: dict[str, str] = {}  # views the server closed on its own: name -> reason

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        t = time.perf_counter()
        d = msgpack.unpackb(data, raw=False)
        kind = d.get("type")
        if kind == "delta":
            self.delta_seq.append(int(d["seq_to"]))
            self.delta_t.append(t)
        elif kind == "view":
            vk = d.get("kind")
            if vk in ("snapshot", "update"):
                log = self.views.setdefault(d["view"], ViewLog())
                log.seq.append(int(d["seq"]))
                log.t.append(t)
                log.last = bytes(data)
                self.seen.setdefault(d["view"], []).append((t, int(d["seq"]), self.load.writer.max_seq))
                if vk == "snapshot" and d.get("re") is None:
                    self.fresh.setdefault(d["view"], []).append((t, int(d["seq"]), self.load.writer.max_seq))
            elif vk == "closed" and d.get("re") is None:
                self.closed[d["view"]] = str(d.get("reason"))
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


def first_at_or_after(seqs: list[int], ts: list[float], n: int) -> float | None:
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
        elif plain and plain_mode in ("both", "raise"):
            # A new maximum in the unsorted viewport: the plain, the sorted and the grouped view change.
            rid, value = self.rng.randrange(self.cfg.viewport), 1e6 + k
        elif plain:
            rid, value = self.rng.randrange(self.cfg.viewport), 1.0005 + k * 0.001
        elif plain_mode == "raise":
            # Every edit a new maximum: a grouped max changes with each one (else it never would).
            rid, value = self.rng.randrange(self.rows), 1e6 + k
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
            t = first_at_or_after(seqs, ts, self.seq[i])
            if t is None:
                missing += 1
                continue
            from_ack.append((t - self.ack_t[i]) * 1e3)
            from_send.append((t - self.send_t[i]) * 1e3)
        return from_ack, from_send, missing
