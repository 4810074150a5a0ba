"""Benchmark group ``storage`` (issue 3): commits, joins, recovery, and the WAL's cost.

Four measurements, each against a baseline taken in the same run:

1. **Commit of a 1-cell change on a 1M×10 room.**
   *Storage layer*: in this process, :func:`server.storage.commits.write_commit`
   of the demo frame with one ``price`` cell changed, ``dirty`` = the range of
   that rid, ``parent`` = the full commit of the same frame. Bytes = growth of
   the chunk directory. *End to end*: a client of a running server calls
   ``set_cells`` on one rid (acked first, untimed), then ``await room.commit()``;
   time from the commit's send to the ``committed`` reply, bytes = growth of the
   server's chunk directory. Baseline: ``df.write_parquet`` of the same 10
   columns, one plain file (no fsync), timed in each run. Targets: bytes ≤ 5 %
   of the plain file, time ≤ 50 ms.
2. **A new client joining a 1M×10 room.** Time from ``Room.open()`` (what
   ``async with connect(url, "sales")`` runs) to its return, with ``room.frame``
   holding 1M rows. The *warm* join is a second client joining the already
   loaded room; the *cold* join is the first client after a server (re)start,
   so it includes recovery (the head commit is loaded from its chunks).
   Information row: a raw protocol peer (:class:`bench.common.Peer`, no
   ``permessage-deflate``) receiving the same welcome, decoding it and loading
   the same mirror. Baseline: ``pl.read_parquet`` of the plain file from 1.
   Target: warm join ≤ 2× the read.
3. **Recovery of 100k WAL entries.** Pipelined raw peers push 100k 1-cell
   ``set`` batches into a server started with autocommit out of reach, so
   every batch stays in the WAL; the server is killed with SIGKILL and
   restarted. Figures: restart → the first peer's ``welcome`` (a ``since``
   resume, so no snapshot is sent), split into process start → listening and
   listening → welcome (the room's recovery), and ``recover()`` called in this
   process on the same data directory. The WAL's seq after recovery must equal
   the last acked seq (checked: a mismatch is a durability finding). No target.
4. **Acked single-op throughput, WAL on vs off.** The sustained single-op
   load of :mod:`bench.sustained` (10 bots, window 50, 1-cell sets) on a
   100k-row room, against ``--memory`` (no WAL) and ``--data-dir`` (SQLite
   WAL), and optionally a PostgreSQL catalog (a fresh schema, dropped after).
   Servers are interleaved run by run. Target: WAL on ≥ 0.5× WAL off.

Servers are ``coframe serve --port 0`` subprocesses on 127.0.0.1; the port is
read from their ``coframe listening on`` line. Every data directory is a
fresh temporary directory, removed at the end, and every server is killed in
a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import polars as pl

from .common import BENCH_DIR, Peer, ServerProcess, Stats, coframe_argv, connect_peer
from .sustained import SustainedConfig, Swarm, Workload

__all__ = [
    "StorageConfig",
    "StorageResult",
    "CommitResult",
    "JoinResult",
    "RecoveryResult",
    "ThroughputResult",
    "StorageServer",
    "StorageBench",
    "WalPusher",
    "PG_URL",
    "TARGET_COMMIT_BYTES_SHARE",
    "TARGET_COMMIT_MS",
    "TARGET_JOIN_RATIO",
    "TARGET_WAL_RATIO",
]

PG_URL = os.environ.get("COFRAME_BENCH_PG_URL", "postgresql://root@127.0.0.1:5432/test")
TARGET_COMMIT_BYTES_SHARE = 0.05
TARGET_COMMIT_MS = 50.0
TARGET_JOIN_RATIO = 2.0
TARGET_WAL_RATIO = 0.5

DATASET = "sales"
COLUMN = "price"

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Sizes and repetitions of the storage group."""

    runs: int = 3
    rows: int = 1_000_000  # the commit / join room
    commits: int = 5  # 1-cell commits per figure (median)
    cold_joins: int = 3  # server restarts, each with one cold join
    wal_ops: int = 100_000  # WAL entries to recover
    wal_rows: int = 100_000  # the recovery room (replay costs grow with rows: see README)
    push_peers: int = 10
    push_window: int = 50
    tput_rows: int = 100_000  # the WAL on/off room
    bots: int = 10
    window: int = 50
    warmup: float = 1.0
    measure: float = 4.0
    pg: bool = True
    profile_s: int = 6


# ---------------------------------------------------------------- results


@dataclass(slots=True)
class CommitResult:
    rows: int = 0
    parquet_bytes: Stats = field(default_factory=Stats)  # plain df.write_parquet, bytes
    parquet_ms: Stats = field(default_factory=Stats)
    full_commit_bytes: int = 0  # the parent: every chunk
    full_commit_ms: float = 0.0
    chunks: int = 0
    layer_bytes: Stats = field(default_factory=Stats)
    layer_ms: Stats = field(default_factory=Stats)
    e2e_bytes: Stats = field(default_factory=Stats)
    e2e_ms: Stats = field(default_factory=Stats)
    e2e_error: str | None = None


@dataclass(slots=True)
class JoinResult:
    rows: int = 0
    read_parquet_ms: Stats = field(default_factory=Stats)
    warm_ms: Stats = field(default_factory=Stats)  # client Room.open(), room already loaded
    cold_ms: Stats = field(default_factory=Stats)  # first client after a (re)start
    raw_ms: Stats = field(default_factory=Stats)  # raw peer, no deflate, + decode + mirror load
    raw_wire_ms: Stats = field(default_factory=Stats)  # raw peer: connect → welcome frame received
    welcome_bytes: int = 0
    extensions: str = ""  # what the client negotiated
    server_cpu_s: Stats = field(default_factory=Stats)  # server CPU per warm client join
    raw_server_cpu_s: Stats = field(default_factory=Stats)  # server CPU per raw join


@dataclass(slots=True)
class RecoveryResult:
    ops: int = 0
    rows: int = 0
    push_s: float = 0.0
    push_errors: Counter[str] = field(default_factory=Counter)
    last_seq: int = 0
    restart_s: Stats = field(default_factory=Stats)  # spawn → first welcome
    listen_s: Stats = field(default_factory=Stats)  # spawn → listening line
    open_s: Stats = field(default_factory=Stats)  # listening → welcome (room recovery)
    welcome_seqs: list[int] = field(default_factory=list)
    recover_s: Stats = field(default_factory=Stats)  # in-process recover()
    open_branch_s: Stats = field(default_factory=Stats)  # in-process: head commit + WAL read only
    replayed: list[int] = field(default_factory=list)
    wal_bytes: int = 0  # catalog files on disk after the push


@dataclass(slots=True)
class ThroughputResult:
    rows: int = 0
    systems: dict[str, Workload] = field(default_factory=dict)  # "memory", "sqlite", "postgresql"
    gen_cpu: dict[str, Stats] = field(default_factory=dict)  # load generator CPU (cores), per run
    pg_error: str | None = None


@dataclass(slots=True)
class StorageResult:
    config: StorageConfig
    commit: CommitResult = field(default_factory=CommitResult)
    join: JoinResult = field(default_factory=JoinResult)
    recovery: RecoveryResult = field(default_factory=RecoveryResult)
    throughput: ThroughputResult = field(default_factory=ThroughputResult)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- servers


class StorageServer(ServerProcess):
    """``coframe serve --port 0`` with storage options; ready once it prints its port.

    Start-up is timed (``ready_s``: spawn → the ``coframe listening on`` line).
    :meth:`kill9` simulates a crash.
    """

    def __init__(self, name: str, rows: int, extra: list[str]) -> None:
        super().__init__(name, [*coframe_argv(0, rows), *extra], 0)
        self.ready_s = 0.0
        self.spawned_at = 0.0

    def start(self, timeout: float = 300.0) -> StorageServer:
        """Spawn and wait (bounded) for the ``listening`` line in the server's output."""
        root = BENCH_DIR.parent
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        self.spawned_at = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        import psutil

        self._ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self._listening_port()
            if port is not None:
                self.ready_s = time.perf_counter() - self.spawned_at
                self.port = port
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"{self.name} did not start listening within {timeout:g}s:\n{self.log_tail()}")

    def _listening_port(self) -> int | None:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        mark = "coframe listening on http://"
        i = text.find(mark)
        if i < 0:
            return None
        line = text[i + len(mark) :].split("\n", 1)
        if len(line) < 2:
            return None  # not the whole line yet
        return int(line[0].rsplit(":", 1)[1])

    def kill9(self) -> None:
        """SIGKILL the server (a crash: nothing is flushed or committed) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.stop()  # keeps the output in log_text


def _own_cpu() -> float:
    """CPU seconds (user + system) this benchmark process has used so far."""
    t = os.times()
    return t.user + t.system


def _dir_bytes(path: Path) -> int:
    """Total size of the regular files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


@contextlib.contextmanager
def _tempdir(tag: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"bench-storage-{tag}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def pg_schema(url: str = PG_URL) -> AsyncIterator[str]:
    """A catalog URL with a fresh ``bench_<random>`` schema, dropped on exit."""
    import asyncpg

    schema = f"bench_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    try:
        yield f"{url}{'&' if '?' in url else '?'}schema={schema}"
    finally:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


# ---------------------------------------------------------------- raw peers


async def raw_join(
    url: str, client: str, since: int | None = None, limit: float = 120.0
) -> tuple[float, dict]:
    """Join with a raw peer (no extensions); return (seconds to the welcome frame, the decoded map)."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    def on_message(data: bytes | bytearray | memoryview) -> None:
        if not got.done():
            got.set_result(bytes(data))

    t0 = time.perf_counter()
    peer = await connect_peer(f"{url}/ws/{DATASET}", on_message, limit=limit)
    try:
        hello: dict[str, Any] = {"type": "hello", "id": 0, "client": client, "version": 1}
        if since is not None:
            hello["since"] = since
        peer.send(msgpack.packb(hello))
        async with asyncio.timeout(limit):
            data = await got
        dt = time.perf_counter() - t0
    finally:
        peer.close()
    if since is not None:
        return dt, msgpack.unpackb(data, raw=False)
    return dt, {"raw": data}


class _PushPeer:
    """One pipelined peer of :class:`WalPusher`."""

    def __init__(self, pusher: WalPusher, index: int) -> None:
        self.pusher = pusher
        self.name = f"bench-wal-{index}-{secrets.token_hex(3)}"
        self.rng = random.Random(index)
        self.peer: Peer | None = None
        self.cs = 0
        self.base = 0
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def send_one(self, flush: bool = True) -> None:
        pu = self.pusher
        pu.sent += 1
        self.cs += 1
        op = {
            "op": "set",
            "rows": [self.rng.randrange(pu.rows)],
            "col": COLUMN,
            "values": [float(self.cs % 997)],
        }
        d = {"type": "op", "id": self.cs, "client_seq": self.cs, "base_seq": self.base, "ops": [op]}
        assert self.peer is not None
        self.peer.send(msgpack.packb(d), flush=flush)

    def on_message(self, data: bytes | bytearray | memoryview) -> None:
        d = msgpack.unpackb(data, raw=False)
        kind = d.get("type")
        pu = self.pusher
        if kind == "ack" or kind == "error":
            if kind == "ack":
                pu.acked += 1
                seq = int(d.get("seq", 0))
                self.base = max(self.base, seq)
                pu.last_seq = max(pu.last_seq, seq)
            else:
                pu.errors[str(d.get("code"))] += 1
            pu.answered += 1
            if pu.sent < pu.total:
                self.send_one()
            elif pu.answered >= pu.total and not pu.done.done():
                pu.done.set_result(None)
        elif kind == "delta":
            self.base = max(self.base, int(d.get("seq_to", 0)))
        elif kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(d)


class WalPusher:
    """Pipelined raw peers sending exactly ``total`` 1-cell ``set`` batches (one WAL entry each)."""

    def __init__(self, url: str, *, peers: int, window: int, rows: int, total: int) -> None:
        self.url = url
        self.n_peers = peers
        self.window = window
        self.rows = rows
        self.total = total
        self.sent = 0
        self.answered = 0
        self.acked = 0
        self.last_seq = 0
        self.errors: Counter[str] = Counter()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.peers: list[_PushPeer] = []

    async def open(self, since: int) -> None:
        for i in range(self.n_peers):
            p = _PushPeer(self, i)
            p.peer = await connect_peer(f"{self.url}/ws/{DATASET}", p.on_message)
            p.peer.send(
                msgpack.packb({"type": "hello", "id": 0, "client": p.name, "version": 1, "since": since})
            )
            w = await asyncio.wait_for(p.welcome, 120)
            p.base = int(w["seq"])
            self.peers.append(p)

    async def run(self, limit: float = 600.0) -> float:
        """Send everything, wait for every answer (bounded); return the seconds it took."""
        t0 = time.perf_counter()
        for p in self.peers:
            for _ in range(min(self.window, self.total - self.sent)):
                p.send_one(flush=False)
            assert p.peer is not None
            p.peer.flush()
        async with asyncio.timeout(limit):
            await self.done
        return time.perf_counter() - t0

    def close(self) -> None:
        for p in self.peers:
            if p.peer is not None:
                p.peer.close()
        self.peers = []


# ---------------------------------------------------------------- the benchmark


def _changed(frame: pl.DataFrame, row: int, value: float) -> pl.DataFrame:
    """``frame`` with ``price`` at position ``row`` set to ``value`` (a new column buffer)."""
    s = frame.get_column(COLUMN).clone()
    s.scatter([row], [value])
    return frame.with_columns(s)


class StorageBench:
    """Runs the storage group; every server it starts is killed by :meth:`close`."""

    def __init__(self, cfg: StorageConfig, log: Log = print) -> None:
        self.cfg = cfg
        self.log = log
        self.result = StorageResult(cfg)
        self.servers: list[StorageServer] = []
        self.problems: list[tuple[str, list[str]]] = []
        self._stack = contextlib.ExitStack()
        self.tmp = self._stack.enter_context(_tempdir("run"))
        self.plain: Path = self.tmp / "plain.parquet"
        self.frame: pl.DataFrame | None = None  # the 10-column demo frame
        self._pg_cm: Any = None  # the PostgreSQL schema of the throughput row, if any

    # ------------------------------------------------------------ servers

    def spawn(self, name: str, rows: int, extra: list[str]) -> StorageServer:
        srv = StorageServer(name, rows, extra)
        self.servers.append(srv)
        return srv.start()

    def retire(self, srv: StorageServer, *, crash: bool = False) -> None:
        """Stop ``srv`` (SIGKILL if ``crash``), keeping any errors it logged."""
        if crash:
            srv.kill9()
        else:
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
        self._stack.close()

    # ------------------------------------------------------------ 1. commit, storage layer

    def commit_layer(self) -> None:
        """write_commit of a 1-cell change vs df.write_parquet, in this process."""
        from server.demo import demo_sales
        from server.ops import normalize_frame
        from server.ops.state import State
        from server.storage.chunks import ChunkStore
        from server.storage.commits import CHUNK_RIDS, ChunkPool, dirty_ranges, write_commit

        cfg, r = self.cfg, self.result.commit
        df = demo_sales(cfg.rows)
        self.frame = df
        r.rows = df.height
        ndf, catalog = normalize_frame(df)
        state = State(ndf, catalog, ndf.height)
        store_dir = self.tmp / "layer-chunks"
        store = ChunkStore(store_dir)
        pool = ChunkPool()  # as the server's Storage has
        self._stack.callback(pool.close)

        def commit(st: State, parent: Any, dirty: set[int] | None, seq: int) -> Any:
            return write_commit(
                store, st, dataset=DATASET, parent=parent, dirty=dirty, author="bench", message="bench",
                seq=seq, time=time.time(), pool=pool,
            )  # fmt: skip

        t = time.perf_counter()
        full = commit(state, None, None, 0)
        r.full_commit_ms = (time.perf_counter() - t) * 1e3
        r.full_commit_bytes = sum(c.bytes for c in full.chunks)
        r.chunks = len(full.chunks)
        rng = np.random.default_rng(3)
        runs = max(cfg.runs, cfg.commits)
        for i in range(runs):
            # Baseline first, then the commit; the changed row moves to another chunk every run.
            t = time.perf_counter()
            df.write_parquet(self.plain)
            r.parquet_ms.add((time.perf_counter() - t) * 1e3)
            r.parquet_bytes.add(self.plain.stat().st_size)
            row = int((i * 7 + 3) % r.chunks * CHUNK_RIDS + rng.integers(0, 1000))
            changed = State(_changed(ndf, row, 1000.0 + i), catalog, ndf.height)
            rid = int(ndf.get_column("_rid")[row])
            before = _dir_bytes(store_dir)
            t = time.perf_counter()
            commit(changed, full, dirty_ranges([rid]), i + 1)
            r.layer_ms.add((time.perf_counter() - t) * 1e3)
            r.layer_bytes.add(_dir_bytes(store_dir) - before)
        self.log(
            f"  commit (layer): {r.layer_ms.median:.1f} ms, {r.layer_bytes.median:,.0f} B;"
            f" write_parquet {r.parquet_ms.median:.1f} ms, {r.parquet_bytes.median:,.0f} B"
        )

    # ------------------------------------------------------------ 2. joins (+ 1. end to end)

    async def _client_join(self, url: str) -> tuple[float, Any]:
        from client.room import Room

        t = time.perf_counter()
        room = Room(url, DATASET, open_timeout=300)
        await room.open()
        dt = time.perf_counter() - t
        if room.frame.height != self.cfg.rows:
            await room.close()
            raise RuntimeError(f"joined mirror has {room.frame.height} rows, not {self.cfg.rows}")
        return dt, room

    def _read_parquet(self) -> None:
        t = time.perf_counter()
        df = pl.read_parquet(self.plain)
        self.result.join.read_parquet_ms.add((time.perf_counter() - t) * 1e3)
        assert df.height == self.cfg.rows

    async def joins_and_commits(self) -> StorageServer:
        """Benchmarks 2 and 1 (end to end) on one 1M-row server; later cold joins restart it.

        Returns the server (left running for profiles; :meth:`close` kills it).
        """
        from client.mirror import Mirror
        from protocol import decode_server

        cfg, j = self.cfg, self.result.join
        j.rows = cfg.rows
        data = self.tmp / "join-data"
        srv = self.spawn("coframe-1m", cfg.rows, ["--data-dir", str(data)])
        self.log(f"  1M server pid {srv.pid} up in {srv.ready_s:.1f} s (first start commits the demo)")
        # Cold join #1 (the room is not loaded yet).
        self._read_parquet()
        dt, room = await self._client_join(srv.url)
        j.cold_ms.add(dt * 1e3)
        ws = room._ws
        if ws is not None and ws.response is not None:
            j.extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "") or "none"
        try:
            for i in range(cfg.runs):
                self._read_parquet()
                cpu0 = srv.cpu_seconds()
                dt, other = await self._client_join(srv.url)
                j.server_cpu_s.add(srv.cpu_seconds() - cpu0)
                j.warm_ms.add(dt * 1e3)
                await other.close()
                cpu0 = srv.cpu_seconds()
                t = time.perf_counter()
                wire, d = await raw_join(srv.url, f"bench-raw-{i}")
                raw = d["raw"]
                m = Mirror()
                m.load(decode_server(raw))
                j.raw_ms.add((time.perf_counter() - t) * 1e3)
                j.raw_server_cpu_s.add(srv.cpu_seconds() - cpu0)
                j.raw_wire_ms.add(wire * 1e3)
                j.welcome_bytes = len(raw)
                assert m.frame.height == cfg.rows
                self.log(
                    f"  join run {i + 1}/{cfg.runs}: client {j.warm_ms.runs[-1]:.0f} ms, raw peer"
                    f" {j.raw_ms.runs[-1]:.0f} ms, read_parquet {j.read_parquet_ms.runs[-1]:.0f} ms"
                )
            await self._commits_e2e(room, data / "chunks")
        finally:
            await room.close()
        # Cold joins after restarts (graceful stop: nothing is left in the WAL).
        for k in range(1, cfg.cold_joins):
            self.retire(srv)
            srv = self.spawn("coframe-1m", cfg.rows, ["--data-dir", str(data)])
            self._read_parquet()
            dt, room = await self._client_join(srv.url)
            j.cold_ms.add(dt * 1e3)
            await room.close()
            self.log(f"  cold join {k + 1}/{cfg.cold_joins}: {dt * 1e3:.0f} ms")
        return srv

    async def _commits_e2e(self, room: Any, chunks: Path) -> None:
        from server.storage.commits import CHUNK_RIDS

        cfg, c = self.cfg, self.result.commit
        rids = room.frame.get_column("_rid")
        n = rids.len()
        for i in range(max(cfg.runs, cfg.commits)):
            rid = int(rids[int((i * 11 + 5) * CHUNK_RIDS % n + i)])
            await room.set_cells([rid], COLUMN, 2000.0 + i)
            before = _dir_bytes(chunks)
            t = time.perf_counter()
            await room.commit(f"bench commit {i}")
            c.e2e_ms.add((time.perf_counter() - t) * 1e3)
            c.e2e_bytes.add(_dir_bytes(chunks) - before)
        self.log(f"  commit (end to end): {c.e2e_ms.median:.1f} ms, {c.e2e_bytes.median:,.0f} B")

    def join_workload(self, url: str) -> Callable[[asyncio.Event], Awaitable[None]]:
        """Client joins, one after another, until ``stop`` (for a profile)."""

        async def work(stop: asyncio.Event) -> None:
            for _ in range(100):
                if stop.is_set():
                    return
                _, room = await self._client_join(url)
                await room.close()

        return work

    def commit_workload(self, url: str) -> Callable[[asyncio.Event], Awaitable[None]]:
        """1-cell set + commit, one after another, until ``stop`` (for a profile)."""

        async def work(stop: asyncio.Event) -> None:
            from client.room import Room

            room = Room(url, DATASET, open_timeout=300)
            await room.open()
            try:
                rids = room.frame.get_column("_rid")
                for i in range(10_000):
                    if stop.is_set():
                        return
                    await room.set_cells([int(rids[(i * 40_009) % rids.len()])], COLUMN, 3000.0 + i)
                    await room.commit("profile")
            finally:
                await room.close()

        return work

    # ------------------------------------------------------------ 3. recovery

    async def recovery(self) -> None:
        cfg, r = self.cfg, self.result.recovery
        r.ops, r.rows = cfg.wal_ops, cfg.wal_rows
        data = self.tmp / "wal-data"
        extra = ["--data-dir", str(data), "--autocommit-ops", "1000000", "--autocommit-seconds", "100000"]
        srv = self.spawn("coframe-wal", cfg.wal_rows, extra)
        self.log(f"  WAL server pid {srv.pid} up in {srv.ready_s:.1f} s; pushing {cfg.wal_ops:,} batches")
        pusher = WalPusher(
            srv.url, peers=cfg.push_peers, window=cfg.push_window, rows=cfg.wal_rows, total=cfg.wal_ops
        )
        try:
            await pusher.open(since=0)
            r.push_s = await pusher.run()
        finally:
            pusher.close()
        r.push_errors = pusher.errors
        r.last_seq = pusher.last_seq
        self.log(
            f"  pushed {pusher.acked:,} acked batches in {r.push_s:.1f} s"
            f" ({pusher.acked / r.push_s:,.0f}/s); errors {dict(pusher.errors) or 'none'};"
            f" last seq {r.last_seq}"
        )
        self.retire(srv, crash=True)
        r.wal_bytes = sum(_dir_bytes(p) if p.is_dir() else p.stat().st_size for p in data.glob("catalog*"))
        for i in range(cfg.runs):
            srv = self.spawn("coframe-wal", cfg.wal_rows, extra)
            try:
                t_listen = time.perf_counter()
                _, w = await raw_join(srv.url, f"bench-recover-{i}", since=r.last_seq, limit=600)
                t_welcome = time.perf_counter()
            finally:
                self.retire(srv, crash=True)  # kill -9 again: the WAL stays for the next run
            r.listen_s.add(srv.ready_s)
            r.open_s.add(t_welcome - t_listen)
            r.restart_s.add(t_welcome - srv.spawned_at)
            r.welcome_seqs.append(int(w.get("seq", -1)))
            self.log(
                f"  restart {i + 1}/{cfg.runs}: welcome after {r.restart_s.runs[-1]:.2f} s"
                f" (listening {srv.ready_s:.2f} s), seq {w.get('seq')}"
            )
        await self._recover_in_process(data)

    async def _recover_in_process(self, data: Path) -> None:
        from server.rooms.recovery import recover
        from server.storage.service import Storage

        cfg, r = self.cfg, self.result.recovery
        for i in range(cfg.runs):
            storage = await Storage.open(data)
            try:
                t = time.perf_counter()
                await storage.open_branch(DATASET, "main")
                r.open_branch_s.add(time.perf_counter() - t)
                t = time.perf_counter()
                _, core, replayed = await recover(storage, DATASET, "main")
                r.recover_s.add(time.perf_counter() - t)
                r.replayed.append(replayed)
                if core.seq != r.last_seq:
                    self.result.notes.append(
                        f"in-process recover() reached seq {core.seq},"
                        f" but the last acked seq was {r.last_seq}"
                    )
            finally:
                await storage.close()
            self.log(
                f"  recover() {i + 1}/{cfg.runs}: {r.recover_s.runs[-1]:.2f} s"
                f" (head commit + WAL read {r.open_branch_s.runs[-1]:.2f} s), {replayed:,} entries"
            )

    # ------------------------------------------------------------ 4. WAL on/off throughput

    async def throughput(self) -> dict[str, tuple[StorageServer, Swarm]]:
        """Returns the servers and their open swarms (for profiles; the caller closes them)."""
        cfg, r = self.cfg, self.result.throughput
        r.rows = cfg.tput_rows
        scfg = SustainedConfig(
            bots=cfg.bots,
            window=cfg.window,
            runs=cfg.runs,
            warmup=cfg.warmup,
            measure=cfg.measure,
            rows=cfg.tput_rows,
        )
        systems: dict[str, tuple[StorageServer, Swarm]] = {}
        try:
            for name, extra in await self._tput_servers():
                srv = self.spawn(f"coframe-{name}", cfg.tput_rows, extra)
                swarm = Swarm(srv, f"/ws/{DATASET}", scfg, coframe=True)  # type: ignore[arg-type]
                await swarm.open(since=0)
                systems[name] = (srv, swarm)
                r.systems[name] = Workload()
                r.gen_cpu[name] = Stats()
            names = list(systems)
            for run in range(cfg.runs):
                order = names[run % len(names) :] + names[: run % len(names)]
                for name in order:
                    _, swarm = systems[name]
                    swarm.use(1, seed=run)
                    cpu0, t0 = _own_cpu(), time.perf_counter()
                    await swarm.run(r.systems[name])
                    r.gen_cpu[name].add((_own_cpu() - cpu0) / (time.perf_counter() - t0))
                self.log(
                    f"  throughput run {run + 1}/{cfg.runs}: "
                    + ", ".join(f"{k} {v.msgs_per_s.runs[-1]:,.0f} msgs/s" for k, v in r.systems.items())
                )
        except BaseException:
            for _, swarm in systems.values():
                swarm.close()
            raise
        return systems

    async def _tput_servers(self) -> list[tuple[str, list[str]]]:
        cfg = self.cfg
        out = [
            ("memory", ["--memory"]),
            ("sqlite", ["--data-dir", str(self.tmp / "tput-sqlite")]),
        ]
        if cfg.pg:
            try:
                url = await self._stack_pg()
                out.append(("postgresql", ["--data-dir", str(self.tmp / "tput-pg"), "--catalog", url]))
            except Exception as e:  # PostgreSQL is optional: say why it is missing
                self.result.throughput.pg_error = f"{type(e).__name__}: {e}"
        return out

    async def _stack_pg(self) -> str:
        """Enter a fresh schema for this run; it is dropped by :meth:`aclose`."""
        self._pg_cm = pg_schema()
        return await self._pg_cm.__aenter__()

    async def aclose(self) -> None:
        """Kill the servers, drop the PostgreSQL schema, remove the temp dirs."""
        try:
            for srv in list(self.servers):
                with contextlib.suppress(Exception):
                    self.retire(srv)
            cm = self._pg_cm
            if cm is not None:
                self._pg_cm = None
                await cm.__aexit__(None, None, None)
        finally:
            self.close()
