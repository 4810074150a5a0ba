"""Shared benchmark plumbing: server subprocesses, a lean WebSocket peer, statistics.

* :class:`ServerProcess` starts a server (coframe or a baseline) in its own
  subprocess on a free loopback port, waits for ``GET /healthz``, reads its
  CPU time, and always kills it on exit.
* :class:`Peer` is a minimal WebSocket client: an ``asyncio.Protocol`` that
  drives the websockets *sans-I/O* ``ClientProtocol``. Every frame is handed
  to a synchronous callback straight from ``data_received``, so a reader
  costs one parse and one callback per message, with no task switch, no
  queue and no future. The same peer is used against coframe and against the
  baselines, so client-side cost cancels out of every ratio.

Every connection goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

__all__ = [
    "SeqTracker",
    "HOST",
    "BENCH_DIR",
    "PROFILE_DIR",
    "ServerProcess",
    "running",
    "Peer",
    "connect_peer",
    "free_port",
    "free_ports",
    "coframe_argv",
    "coframe_cmd",
    "coframe_running",
    "views_process",
    "MODES",
    "MEMORY",
    "DURABLE",
    "baseline_argv",
    "pycrdt_argv",
    "median",
    "percentile",
    "Stats",
]

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
PROFILE_DIR = BENCH_DIR / "profiles"

OnMessage = Callable[[bytes | bytearray | memoryview], None]

_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


# ---------------------------------------------------------------- statistics


def median(xs: Sequence[float]) -> float:
    """Median of a non-empty sequence (NaN when empty)."""
    return float(np.median(np.asarray(xs, dtype=float))) if len(xs) else math.nan


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation); NaN when empty."""
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else math.nan


@dataclass(slots=True)
class Stats:
    """Per-run figures of one measured quantity, reduced to their median."""

    runs: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.runs.append(v)

    @property
    def median(self) -> float:
        return median(self.runs)

    @property
    def n(self) -> int:
        return len(self.runs)

    def spread(self) -> str:
        """``min–max`` of the runs, for the tables."""
        if not self.runs:
            return "-"
        return f"{min(self.runs):.3g}–{max(self.runs):.3g}"


# ---------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def coframe_cmd() -> list[str]:
    """The ``coframe`` command: the script beside this Python, else ``python -m server.cli``."""
    exe = Path(sys.executable).with_name("coframe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "server.cli"]


def coframe_argv(port: int, demo_rows: int | None, auth: str = "none") -> list[str]:
    """``coframe serve`` on ``port``; ``demo_rows=None`` means ``--no-demo``.

    ``auth`` is ``none`` by default: the benchmarks measure the data path, and
    tokens are checked once per connection. The policy group needs identities
    (``token``).
    """
    demo = ["--no-demo"] if demo_rows is None else ["--demo-rows", str(demo_rows)]
    head = [*coframe_cmd(), "serve", "--host", HOST, "--port", str(port)]
    return [*head, *demo, "--auth", auth, "--log-level", "warning"]


MEMORY, DURABLE = "memory", "durable"
MODES = (MEMORY, DURABLE)  # ``--memory`` (no WAL), and the default: a data directory with a SQLite catalog


@contextlib.contextmanager
def coframe_running(name: str, port: int, rows: int, mode: str) -> Iterator[ServerProcess]:
    """``coframe serve`` in ``mode``: ``--memory``, or durable on a fresh temporary ``--data-dir``.

    The durable server is the default configuration (SQLite catalog, WAL
    fsynced before every ack, autocommit defaults); its data directory is
    removed when the block ends, so no run reuses another's dataset.
    """
    if mode == MEMORY:
        with running(name, [*coframe_argv(port, rows), "--memory"], port) as srv:
            yield srv
        return
    if mode != DURABLE:
        raise ValueError(f"unknown mode {mode!r}: expected one of {MODES}")
    data = Path(tempfile.mkdtemp(prefix=f"bench-{name}-data-"))
    try:
        with running(name, [*coframe_argv(port, rows), "--data-dir", str(data)], port) as srv:
            yield srv
    finally:
        shutil.rmtree(data, ignore_errors=True)


def views_process(server_pid: int) -> psutil.Process | None:
    """The server's views process (issue 11): its child running ``server.perspective.worker``, if any.

    Perspective runs there, not in the server, so the server's own RSS and CPU
    leave out everything the views cost.
    """
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.Error:
        return None
    for c in children:
        try:
            if any("server.perspective.worker" in a for a in c.cmdline()):
                return c
        except psutil.Error:
            continue  # exited meanwhile
    return None


def baseline_argv(port: int) -> list[str]:
    """The raw ``websockets`` baseline server (:mod:`bench.baseline_server`)."""
    return [sys.executable, "-m", "bench.baseline_server", "--port", str(port)]


def pycrdt_argv(port: int) -> list[str]:
    """The optional pycrdt-websocket baseline server (:mod:`bench.pycrdt_server`)."""
    return [sys.executable, "-m", "bench.pycrdt_server", "--port", str(port)]


class ServerProcess:
    """A server in its own subprocess; use as a context manager (always killed)."""

    def __init__(self, name: str, argv: list[str], port: int) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self._logdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.log_path = self._logdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None
        self.log_text = ""  # the server's whole output, kept by stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        """Spawn the server and poll ``/healthz`` until it answers (bounded)."""
        root = BENCH_DIR.parent
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.port}/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout:g}s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server process has used so far.

        Read from ``/proc/PID/task/*/schedstat`` (nanoseconds on CPU, per
        thread); ``psutil``'s user+sys, in 10 ms clock ticks, is the fallback.
        """
        assert self._ps is not None
        total = 0
        try:
            for task in Path(f"/proc/{self._ps.pid}/task").iterdir():
                try:
                    total += int((task / "schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue  # a thread that just exited
        except OSError:
            total = 0
        if total:
            return total / 1e9
        t = self._ps.cpu_times()
        return float(t.user + t.system)

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far, from psutil (10 ms resolution)."""
        assert self._ps is not None
        t = self._ps.cpu_times()
        return float(t.user), float(t.system)

    def rss_bytes(self) -> int:
        assert self._ps is not None
        return int(self._ps.memory_info().rss)

    def views_rss_bytes(self) -> int:
        """RSS of the server's views process (0 while there is none)."""
        vp = views_process(self.pid)
        try:
            return int(vp.memory_info().rss) if vp is not None else 0
        except psutil.Error:
            return 0

    def views_cpu_seconds(self) -> float:
        """CPU time (user + system) of the current views process so far (0 while there is none)."""
        vp = views_process(self.pid)
        try:
            t = vp.cpu_times() if vp is not None else None
        except psutil.Error:
            return 0.0
        return float(t.user + t.system) if t is not None else 0.0

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        """Terminate (then kill) the server, keep its output in ``log_text``; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._logdir.exists():
            try:
                self.log_text = self.log_path.read_text(errors="replace")
            except OSError:
                pass
        shutil.rmtree(self._logdir, ignore_errors=True)

    def problems(self, limit: int = 5) -> list[str]:
        """Error lines of the kept output (after stop): log records and exception lines."""
        out = [
            ln.strip()
            for ln in self.log_text.splitlines()
            if "ERROR" in ln or "CRITICAL" in ln or _EXC_LINE.match(ln)
        ]
        if not out and "Traceback" in self.log_text:
            out = ["Traceback (see the server's output)"]
        return out[:limit]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(name: str, argv: list[str], port: int) -> Iterator[ServerProcess]:
    """Start a :class:`ServerProcess`; stop it however the block ends."""
    server = ServerProcess(name, argv, port)
    try:
        yield server.start()
    finally:
        server.stop()


# ---------------------------------------------------------------- the peer


class Peer(asyncio.Protocol):
    """A lean WebSocket client; ``on_message`` gets each data message's bytes."""

    def __init__(self, uri: str, on_message: OnMessage | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.proto = ClientProtocol(parse_uri(uri), max_size=None)
        self.on_message: OnMessage = on_message or (lambda _data: None)
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._parts: list[bytes] = []
        self._batching = False  # inside data_received: sends are flushed once at its end
        self.received = 0
        self.received_bytes = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        self._batching = True
        try:
            for ev in self.proto.events_received():
                if isinstance(ev, Frame):
                    self._frame(ev)
                elif isinstance(ev, Response) and not self.opened.done():
                    exc = self.proto.handshake_exc
                    if exc is None:
                        self.opened.set_result(None)
                    else:
                        self.opened.set_exception(exc)
        finally:
            self._batching = False
        self._flush()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost before the handshake: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    # frames

    def _frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.BINARY or op is Opcode.TEXT:
            if frame.fin:
                self.received += 1
                self.received_bytes += len(frame.data)
                self.on_message(frame.data)
            else:
                self._parts = [bytes(frame.data)]
        elif op is Opcode.CONT:
            self._parts.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self._parts)
                self._parts = []
                self.received += 1
                self.received_bytes += len(data)
                self.on_message(data)

    def _flush(self) -> None:
        t = self.transport
        if t is None:
            return
        chunks = self.proto.data_to_send()
        if not chunks:
            return
        if all(chunks):
            t.writelines(chunks)  # one syscall for many frames
            return
        for chunk in chunks:
            if chunk:
                t.write(chunk)
            elif t.can_write_eof():
                t.write_eof()

    # API

    def send(self, data: bytes, *, flush: bool = True) -> None:
        """Send one binary message (no await: the transport buffers).

        Sends made from inside a receive callback, or with ``flush=False``,
        are written together by the next flush (one syscall for many frames).
        """
        self.proto.send_binary(data)
        if flush and not self._batching:
            self._flush()

    def flush(self) -> None:
        """Write every frame queued by ``send(..., flush=False)``."""
        self._flush()

    def close(self) -> None:
        """Abort the connection (benchmarks never wait for a close handshake)."""
        if self.transport is not None:
            self.transport.abort()


async def connect_peer(uri: str, on_message: OnMessage | None = None, limit: float = 30.0) -> Peer:
    """Open a :class:`Peer` to ``uri`` (which must be on 127.0.0.1)."""
    u = parse_uri(uri)
    if u.host != HOST:
        raise ValueError(f"benchmarks only connect to {HOST}, not {u.host}")
    loop = asyncio.get_running_loop()
    peer = Peer(uri, on_message)
    async with asyncio.timeout(limit):
        await loop.create_connection(lambda: peer, u.host, u.port)
        await peer.opened
    return peer


class SeqTracker:
    """Counts the readers that have seen the ``target`` seq; its future completes when all have
    (the closed-loop fan-out benchmarks: :mod:`bench.fanout`, :mod:`bench.policyfanout`)."""

    def __init__(self) -> None:
        self.target = 0
        self.remaining = 0
        self.last = 0.0
        self.done: asyncio.Future[None] | None = None

    def arm(self, target: int, readers: int) -> asyncio.Future[None]:
        self.target, self.remaining, self.last = target, readers, 0.0
        self.done = asyncio.get_running_loop().create_future()
        return self.done
