"""Issue 12: fan-out to 50 readers split over 5 row/column policies, against no policies.

Two ``coframe serve --auth token`` servers in the default durable
configuration (a temporary ``--data-dir``, SQLite catalog), each on its own
copy of one data directory prepared with the operator CLI (:mod:`.policydata`):
the same users, grants and tokens, the demo ``sales`` room. Against the
*policies* server, 50 readers sign in as 5 users, 10 connections each, whose
viewer grants each carry a distinct row predicate and hidden columns
(:data:`POLICIES`); against the *none* server, 50 readers sign in as 5 users
whose viewer grants carry no policy. The writer (an editor without a policy)
and the closed loop are those of :mod:`bench.fanout`: one 1-cell ``set`` of
``price`` on a random rid in flight; latency = the writer's send → the LAST
of the 50 readers received the delta of that seq. Every reader gets a delta
for every seq (``policy.render_delta`` keeps the seqs of a delta that has no
visible row), and each reader checks that its seqs are contiguous.

The two servers are measured in turns, the order rotating every run; the
figures are medians over runs of each run's p50 and p99, and the server's
CPU (all threads, schedstat) per edit.

Correctness, checked on a sample of the deltas of every reader (one seq in
``sample_every``) after each run, outside the timed loop: decoded with
``protocol.decode_server`` (pyarrow tables), a policy reader's upserts never
name a hidden column, every upserted row satisfies its predicate (the
predicate column's values), the edited row is upserted exactly when the
room's own snapshot says the predicate admits it, with the written value
(unless ``price`` is hidden), and nothing is deleted. The first reader of each
policy also checks its welcome snapshot the same way (and its row count).
A violation raises :class:`PolicyLeak`: the group fails.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pyarrow as pa

from protocol import Delta, Welcome, decode_server
from protocol.dtypes import RID

from .common import Peer, SeqTracker, ServerProcess, Stats, connect_peer, median, percentile
from .policydata import NO_POLICY_USERS, POLICIES, WRITER, Policy

__all__ = [
    "PolicyConfig",
    "PolicyResult",
    "SideResult",
    "PolicyLeak",
    "Side",
    "run_policy",
    "POLICIES_SIDE",
    "NONE_SIDE",
]

POLICIES_SIDE, NONE_SIDE = "policies", "none"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    runs: int = 6
    edits: int = 800  # timed edits per run and side (p99 = about the 8th largest)
    warmup: int = 50  # untimed edits before each run
    rows: int = 100_000  # demo room size
    readers_per_user: int = 10  # 5 users per side: 50 readers
    sample_every: int = 7  # check one delta in this many (every reader's copy)
    profile_s: int = 8


class PolicyLeak(AssertionError):
    """A reader received something its policy does not allow (or missed a row it allows)."""


@dataclass(slots=True)
class SideResult:
    p50_ms: Stats = field(default_factory=Stats)
    p99_ms: Stats = field(default_factory=Stats)
    rate: Stats = field(default_factory=Stats)  # edits/s closed-loop
    cpu_edit_us: Stats = field(default_factory=Stats)  # server CPU µs per edit


@dataclass(slots=True)
class PolicyResult:
    config: PolicyConfig
    sides: dict[str, SideResult] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)  # policy user → share of the rows it sees
    delta_bytes: dict[str, int] = field(default_factory=dict)  # audience → median delta size
    checked_deltas: int = 0  # reader copies decoded and checked
    checked_rows: int = 0  # upserted rows checked against their predicate
    visible_edits: dict[str, int] = field(default_factory=dict)  # policy user → checked edits it saw
    snapshot_rows: dict[str, int] = field(default_factory=dict)  # policy user → rows of its welcome
    prepare_s: float = 0.0  # the data directory's preparation (server start, CLI calls)
    notes: list[str] = field(default_factory=list)


class _Reader:
    """A reader: decodes every envelope, reports deltas, keeps sampled deltas' bytes for the checks."""

    def __init__(
        self, tracker: SeqTracker, policy: Policy | None, sample_every: int, keep_welcome: bool
    ) -> None:
        self.tracker = tracker
        self.policy = policy
        self.sample_every = sample_every
        self.keep_welcome = keep_welcome
        self.seen = 0
        self.gaps: list[tuple[int, int]] = []  # (expected seq_from, got)
        self.errors: list[dict[str, Any]] = []
        self.samples: dict[int, bytes] = {}
        self.sizes: list[int] = []
        self.welcome_bytes: bytes | None = None
        self.peer: Peer | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        d = msgpack.unpackb(data, raw=False)
        kind = d.get("type")
        if kind == "delta":
            t = time.perf_counter()
            seq = d["seq_to"]
            if d["seq_from"] != self.seen + 1:
                self.gaps.append((self.seen + 1, d["seq_from"]))
            if seq % self.sample_every == 0:
                self.samples[seq] = bytes(data)
            self.sizes.append(len(data))
            del self.sizes[:-64]
            tr = self.tracker
            if seq >= tr.target > self.seen:
                tr.remaining -= 1
                tr.last = t
                if tr.remaining == 0 and tr.done is not None and not tr.done.done():
                    tr.done.set_result(None)
            self.seen = max(self.seen, seq)
        elif kind == "welcome" and not self.welcome.done():
            if self.keep_welcome:
                self.welcome_bytes = bytes(data)
            self.welcome.set_result(d)
        elif kind == "error":
            self.errors.append(d)


class _Writer:
    """The writer: sends edits, records acks; keeps its welcome (the room's full snapshot)."""

    def __init__(self) -> None:
        self.peer: Peer | None = None
        self.ack: asyncio.Future[dict[str, Any]] | None = None
        self.welcome_bytes = b""
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        d = msgpack.unpackb(data, raw=False)
        kind = d.get("type")
        if kind in ("ack", "error") and self.ack is not None and not self.ack.done():
            self.ack.set_result(d)
        elif kind == "welcome" and not self.welcome.done():
            self.welcome_bytes = bytes(data)
            self.welcome.set_result(d)


class Side:
    """One server under test with its writer and 50 readers (with or without policies)."""

    def __init__(self, name: str, server: ServerProcess, tokens: dict[str, str], cfg: PolicyConfig) -> None:
        self.name = name
        self.server = server
        self.tokens = tokens
        self.cfg = cfg
        self.tracker = SeqTracker()
        self.writer = _Writer()
        self.readers: list[_Reader] = []
        self.seq = 0
        self.client_seq = 0
        self.edits: dict[int, tuple[int, float]] = {}  # seq → (rid, value written)
        self.truth: dict[str, list[Any]] = {}  # the room's columns by rid (from the writer's snapshot)
        self.rids: list[int] = []
        self._rng = random.Random(f"policy-{name}")

    def uri(self, user: str) -> str:
        return f"{self.server.url}/ws/sales?token={self.tokens[user]}"

    async def open(self) -> None:
        """Join the writer (full snapshot: the truth), then the readers, 10 per user."""
        w = self.writer
        w.peer = await connect_peer(self.uri(WRITER), w.on_message)
        w.peer.send(msgpack.packb({"type": "hello", "id": 0, "client": "bench-writer", "version": 1}))
        async with asyncio.timeout(60):
            welcome = await w.welcome
        self.seq = int(welcome["seq"])
        msg = decode_server(w.welcome_bytes)
        assert isinstance(msg, Welcome) and msg.snapshot is not None
        snap = msg.snapshot if isinstance(msg.snapshot, pa.Table) else msg.snapshot.to_arrow()
        self.truth = {n: snap.column(n).to_pylist() for n in snap.column_names}
        self.rids = [int(r) for r in self.truth[RID]]
        users: list[tuple[str, Policy | None]] = (
            [(p.user, p) for p in POLICIES]
            if self.name == POLICIES_SIDE
            else [(u, None) for u in NO_POLICY_USERS]
        )
        for user, policy in users:
            for i in range(self.cfg.readers_per_user):
                await self._open_reader(user, policy, i)

    async def _open_reader(self, user: str, policy: Policy | None, i: int) -> None:
        r = _Reader(self.tracker, policy, self.cfg.sample_every, keep_welcome=policy is not None and i == 0)
        r.seen = self.seq
        r.peer = await connect_peer(self.uri(user), r.on_message)
        hello: dict[str, Any] = {"type": "hello", "id": 0, "client": f"bench-reader-{i}", "version": 1}
        if policy is None:
            hello["since"] = self.seq  # a resume: no snapshot (a restricted audience always gets one)
        r.peer.send(msgpack.packb(hello))
        async with asyncio.timeout(60):
            w = await r.welcome
        if w.get("seq") != self.seq:
            raise RuntimeError(f"{self.name}: {user}'s welcome at seq {w.get('seq')}, expected {self.seq}")
        self.readers.append(r)

    def close(self) -> None:
        for p in [self.writer.peer, *(r.peer for r in self.readers)]:
            if p is not None:
                p.close()

    def _op(self) -> bytes:
        self.client_seq += 1
        cs = self.client_seq
        rid = self.rids[self._rng.randrange(len(self.rids))]
        value = round(self._rng.uniform(1, 500), 2)
        self.edits[self.seq + 1] = (rid, value)
        op = {"op": "set", "rows": [rid], "col": "price", "values": [value]}
        return msgpack.packb({"type": "op", "id": cs, "client_seq": cs, "base_seq": self.seq, "ops": [op]})

    async def one_edit(self) -> float:
        """Send one edit; return seconds until the last reader had its delta."""
        w = self.writer
        assert w.peer is not None
        data = self._op()
        target = self.seq + 1
        done = self.tracker.arm(target, len(self.readers))
        w.ack = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        w.peer.send(data)
        ack = await w.ack
        if ack.get("type") != "ack" or int(ack.get("seq", -1)) != target:
            raise RuntimeError(f"{self.name}: edit not acked as seq {target}: {ack}")
        self.seq = target
        await done
        return self.tracker.last - t0


async def edit_loop(side: Side, count: int, limit: float = 120.0) -> list[float]:
    """``count`` closed-loop edits (bounded in time); their latencies in seconds."""
    out: list[float] = []
    async with asyncio.timeout(limit):
        for _ in range(count):
            out.append(await side.one_edit())
    return out


# ---------------------------------------------------------------- checks


def _admits(policy: Policy, values: list[Any]) -> list[bool]:
    return [policy.admits(v) for v in values]


def _check_table(
    policy: Policy, table: pa.Table, where: str, truth: Callable[[int], Any] | None = None
) -> None:
    """No hidden column, and every row satisfies the predicate.

    A delta that changed no column the predicate reads carries only the
    changed cells: then ``truth`` (a row's predicate value in the writer's
    full snapshot) judges each row.

    Raises:
        PolicyLeak: naming the policy and what leaked.
    """
    hidden = set(policy.hide) & set(table.column_names)
    if hidden:
        raise PolicyLeak(f"{where}: {policy.user} received hidden column(s) {sorted(hidden)}")
    if policy.column in table.column_names:
        values = table.column(policy.column).to_pylist()
    elif truth is not None:
        values = [truth(int(r)) for r in table.column(RID).to_pylist()]
    else:
        raise PolicyLeak(f"{where}: {policy.user}'s rows lack their predicate column {policy.column!r}")
    bad = [v for v, ok in zip(values, _admits(policy, values), strict=True) if not ok]
    if bad:
        raise PolicyLeak(
            f"{where}: {policy.user} ({policy.rows}) received rows with {policy.column} = {bad[:5]}"
        )


def check_welcomes(side: Side, res: PolicyResult) -> None:
    """The first reader of each policy: its snapshot, checked against the policy and the room's rows.

    Raises:
        PolicyLeak: a leak, or not every admitted row.
    """
    for r in side.readers:
        if r.policy is None or r.welcome_bytes is None:
            continue
        p = r.policy
        msg = decode_server(r.welcome_bytes)
        assert isinstance(msg, Welcome) and msg.snapshot is not None
        snap = msg.snapshot if isinstance(msg.snapshot, pa.Table) else msg.snapshot.to_arrow()
        _check_table(p, snap, "welcome snapshot")
        names = {c["name"] for c in msg.schema}
        if names & set(p.hide):
            raise PolicyLeak(f"welcome schema: {p.user} sees hidden column(s) {sorted(names & set(p.hide))}")
        expected = sum(_admits(p, side.truth[p.column]))
        if snap.num_rows != expected:
            raise PolicyLeak(
                f"welcome snapshot: {p.user} got {snap.num_rows} rows, its predicate admits {expected}"
            )
        res.snapshot_rows[p.user] = snap.num_rows
        res.shares[p.user] = expected / len(side.rids)
        r.welcome_bytes = None


def check_samples(side: Side, res: PolicyResult) -> None:
    """Every reader's sampled deltas: seqs, leaks, and the edited row exactly where it is admitted.

    Raises:
        PolicyLeak: what was wrong, naming the reader's user and the seq.
    """
    pos = {rid: i for i, rid in enumerate(side.rids)}
    for r in side.readers:
        who = r.policy.user if r.policy is not None else "no-policy reader"
        if r.gaps:
            raise PolicyLeak(f"{side.name}: {who} missed seqs (expected seq_from, got): {r.gaps[:5]}")
        if r.errors:
            raise PolicyLeak(f"{side.name}: {who} got errors: {r.errors[:3]}")
        for seq, data in sorted(r.samples.items()):
            if seq not in side.edits:
                continue
            rid, value = side.edits[seq]
            msg = decode_server(data)
            assert isinstance(msg, Delta)
            where = f"{side.name} delta seq {seq}"
            if msg.deleted:
                raise PolicyLeak(f"{where}: {who} got deletes {msg.deleted[:5]} (no edit moves a row)")
            table = msg.upserts
            got = [] if table is None else [int(x) for x in table.column(RID).to_pylist()]
            p = r.policy
            visible = True if p is None else p.admits(side.truth[p.column][pos[rid]])
            # An edit of a column the policy hides changes nothing its reader may see: no row.
            visible = visible and (p is None or "price" not in p.hide)
            if p is not None and table is not None:
                _check_table(p, table, where, lambda x, c=p.column: side.truth[c][pos[x]])
                res.checked_rows += table.num_rows
                if visible:
                    res.visible_edits[p.user] = res.visible_edits.get(p.user, 0) + 1
            if got != ([rid] if visible else []):
                raise PolicyLeak(f"{where}: {who} got rids {got}, expected {[rid] if visible else []}")
            if visible and table is not None and "price" in table.column_names:
                if table.column("price").to_pylist() != [value]:
                    raise PolicyLeak(f"{where}: {who} got price {table.column('price')}, written {value}")
            res.checked_deltas += 1
        r.samples.clear()


# ---------------------------------------------------------------- the run


async def _measure(side: Side, cfg: PolicyConfig, res: SideResult) -> None:
    await edit_loop(side, cfg.warmup)
    cpu0 = side.server.cpu_seconds()
    t0 = time.perf_counter()
    lat = await edit_loop(side, cfg.edits)
    wall = time.perf_counter() - t0
    cpu = side.server.cpu_seconds() - cpu0
    ms = [x * 1e3 for x in lat]
    res.p50_ms.add(percentile(ms, 50))
    res.p99_ms.add(percentile(ms, 99))
    res.rate.add(cfg.edits / wall)
    res.cpu_edit_us.add(cpu * 1e6 / cfg.edits)


def _last(name: str, r: SideResult) -> str:
    return (
        f"{name} p50 {r.p50_ms.runs[-1]:.2f} p99 {r.p99_ms.runs[-1]:.2f} ms,"
        f" {r.cpu_edit_us.runs[-1]:,.0f} µs CPU/edit"
    )


async def run_policy(
    servers: dict[str, ServerProcess],
    tokens: dict[str, str],
    cfg: PolicyConfig,
    res: PolicyResult,
    log: Callable[[str], None] = print,
) -> dict[str, Side]:
    """Measure both sides (keyed :data:`POLICIES_SIDE`, :data:`NONE_SIDE`) into ``res``.

    Returns the open sides; the caller closes them after any profiling.

    Raises:
        PolicyLeak: a policy reader received a hidden column or row (or missed a visible one).
    """
    sides = {k: Side(k, srv, tokens, cfg) for k, srv in servers.items()}
    try:
        for s in sides.values():
            t0 = time.perf_counter()
            await s.open()
            took = time.perf_counter() - t0
            log(f"policy: {s.name}: writer and {len(s.readers)} readers joined in {took:.1f} s")
            res.sides[s.name] = SideResult()
        check_welcomes(sides[POLICIES_SIDE], res)
        order = list(sides.values())
        for run in range(cfg.runs):
            k = run % len(order)
            for s in order[k:] + order[:k]:
                await _measure(s, cfg, res.sides[s.name])
                check_samples(s, res)
            log(
                f"  policy run {run + 1}/{cfg.runs}: "
                + ", ".join(_last(s.name, res.sides[s.name]) for s in order[k:] + order[:k])
            )
        for s in order:
            by_audience: dict[str, list[int]] = {}
            for r in s.readers:
                key = r.policy.user if r.policy is not None else f"{s.name}: no policy"
                by_audience.setdefault(key, []).extend(r.sizes)
            for key, sizes in by_audience.items():
                res.delta_bytes[key] = int(median(sizes)) if sizes else 0
    except BaseException:
        for s in sides.values():
            s.close()
        raise
    return sides
