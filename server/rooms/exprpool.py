"""User expressions evaluated in worker processes, with a memory and a time limit.

PROTOCOL.md §10; docs/architecture.md "Expressions". Why a process and not a
thread: Polars evaluates in native code that Python cannot interrupt, and an
allocation that fails aborts the whole process. In a thread, an expression
such as ``lpad(name, 100000, 'x')`` over a million rows could neither be
stopped after ``expr_timeout`` nor kept from taking the server's memory. A
worker process has its own address-space limit (``RLIMIT_AS``); over it, or
over the time limit, the worker is killed (the next expression starts a new
one) and the op fails with ``too_expensive``. The room's state is untouched:
the worker only ever sees a copy of the columns an expression reads.

A small pool of workers is started lazily, each a fresh interpreter (not a
fork: no inherited threads, sockets or frames; not ``multiprocessing``: the
server's main module is not imported again). A socket pair carries plain bytes
only (no object serialization):

- worker → parent, once: ``READY`` (after a warm-up and setting its limit);
- parent → worker: the expression text (UTF-8), then the columns it reads
  as an Arrow IPC stream;
- worker → parent: a status (``OK``, ``ERROR``, ``MEMORY``) and a payload:
  the values as Arrow IPC, or ``{"code", "message"}`` as JSON, or nothing
  (the worker then exits).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

import polars as pl

from protocol import ErrorCode

from ..memory import limit_address_space
from ..ops.exprcost import ExprCost, evaluate_ipc, frame_to_ipc, series_from_ipc
from ..ops.sandbox import EXPR_FAILURES
from ..ops.state import OpError

__all__ = ["ExprPool", "WORKERS", "main", "serve"]

log = logging.getLogger("coframe.exprpool")

WORKERS = 2  # expressions evaluated at once, server-wide; more wait for a worker
START_TIMEOUT = 120.0  # seconds for a new worker to import Polars and report ready
READY, OK, ERROR, MEMORY = b"R", b"O", b"E", b"M"
# A worker is a fresh interpreter in isolated mode (-I: no PYTHON* variables, no
# current directory on the path) that imports this very package.
_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from server.rooms.exprpool import main;"
    " main(int(sys.argv[2]), int(sys.argv[3]))"
)


class _Died(Exception):
    """The worker is gone (killed by its memory limit, or crashed)."""


class _TimedOut(Exception):
    """The worker did not answer within the time limit."""


class _Worker:
    """One worker process and the parent's end of its socket."""

    def __init__(self, memory_bytes: int) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, _ROOT, str(theirs.fileno()), str(memory_bytes)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())

    def wait_ready(self, timeout: float) -> None:
        try:
            if not self.conn.poll(timeout):
                raise _TimedOut
            if self.conn.recv_bytes() != READY:
                raise _Died
        except (EOFError, OSError) as e:
            raise _Died from e

    def ask(self, text: str, data: bytes, timeout: float) -> tuple[bytes, bytes]:
        """(status, payload) for ``text`` over the IPC frame ``data``."""
        try:
            self.conn.send_bytes(text.encode())
            self.conn.send_bytes(data)
            if not self.conn.poll(timeout):
                raise _TimedOut
            return self.conn.recv_bytes(), self.conn.recv_bytes()
        except (EOFError, OSError) as e:
            raise _Died from e

    def kill(self, grace: float = 0.0) -> int | None:
        """Stop the process (SIGKILL after ``grace`` seconds) and reap it; its own exit code, if any."""
        try:
            code: int | None = self.proc.wait(grace) if grace else self.proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            self.proc.kill()
        self.proc.wait()
        self.conn.close()
        return code


class ExprPool:
    """Evaluates expressions in up to ``workers`` processes, each under its own limits.

    ``memory_bytes`` is how far a worker's address space may grow past its
    size after start-up (importing Polars and its thread pool takes several
    hundred MB of address space, which differs between machines); ``timeout``
    is the seconds one evaluation may take. Thread-safe: rooms call
    :meth:`evaluate` from their worker threads.
    """

    def __init__(self, *, memory_bytes: int, timeout: float, workers: int = WORKERS) -> None:
        self.memory_bytes = memory_bytes
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._closed = False
        self.started = 0  # workers started so far

    def cost(self, max_literal: int) -> ExprCost:
        """The :class:`ExprCost` rooms apply ops with: this pool, and the static limit."""
        return ExprCost(self.evaluate, max_literal, bounded=True)

    def pids(self) -> list[int]:
        """The live workers' process ids."""
        with self._lock:
            return [w.proc.pid for w in self._live]

    def evaluate(self, frame: pl.DataFrame, text: str) -> pl.Series:
        """``text`` over ``frame`` in a worker: one value per row (an :data:`Evaluate`).

        Raises:
            OpError: ``too_expensive`` (over the memory or time limit: the
                worker was killed); ``bad_expr`` (it failed on this data);
                ``internal`` (no worker could start, or the pool is closed).
        """
        data = frame_to_ipc(frame)
        with self._slots:
            worker = self._take()
            try:
                status, payload = worker.ask(text, data, self.timeout)
            except _TimedOut:
                self._discard(worker, f"ran over {self.timeout:g} s", text)
                raise self._over_time(text) from None
            except _Died:
                self._discard(worker, "died", text, grace=1.0)
                raise self._over_memory(text) from None
            if status == MEMORY:
                self._discard(worker, "ran out of memory", text, grace=1.0)
                raise self._over_memory(text)
            self._give_back(worker)
        if status == ERROR:
            err = json.loads(payload)
            raise OpError(str(err["code"]), str(err["message"]))
        return series_from_ipc(payload)

    def close(self) -> None:
        """Kill every worker; later evaluations fail with ``internal``."""
        with self._lock:
            self._closed = True
            workers = list(self._live)
            self._live.clear()
            self._idle.clear()
        for w in workers:
            w.kill()

    # ------------------------------------------------------------ workers

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise OpError(ErrorCode.INTERNAL, "the server is shutting down; send the op again later")
            if self._idle:
                return self._idle.pop()
            worker = _Worker(self.memory_bytes)
            self._live.add(worker)
            self.started += 1
        try:
            worker.wait_ready(START_TIMEOUT)
        except (_Died, _TimedOut):
            self._discard(worker, "did not start")
            raise OpError(
                ErrorCode.INTERNAL,
                "the expression worker process could not start; send the op again, and tell"
                " the server's operator if this persists (see the server log)",
            ) from None
        return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._live:
                self._idle.append(worker)

    def _discard(self, worker: _Worker, why: str, text: str = "", grace: float = 0.0) -> None:
        """Kill ``worker`` and forget it (unless :meth:`close` got it first)."""
        with self._lock:
            known = worker in self._live
            self._live.discard(worker)
        if not known:
            return
        pid, code = worker.proc.pid, worker.kill(grace)
        log.warning("expression worker %s %s (exit code %s) evaluating %r", pid, why, code, text[:200])

    def _over_memory(self, text: str) -> OpError:
        mib = self.memory_bytes / (1024 * 1024)
        return OpError(
            ErrorCode.TOO_EXPENSIVE,
            f"{text[:200]!r} needed more than {mib:,.0f} MiB of memory to evaluate (the limit,"
            " expr_memory_bytes) and was stopped; nothing changed. Make it cheaper (shorter"
            " strings, no aggregate repeated on every row, fewer rows), or compute the values on"
            " the client and insert them",
            limit=self.memory_bytes,
            setting="expr_memory_bytes",
        )

    def _over_time(self, text: str) -> OpError:
        return OpError(
            ErrorCode.TOO_EXPENSIVE,
            f"{text[:200]!r} took longer than {self.timeout:g} s to evaluate (the limit,"
            " expr_timeout) and was stopped; nothing changed. Make it cheaper, or compute the"
            " values on the client and insert them",
            limit=self.timeout,
            setting="expr_timeout",
        )


# ---------------------------------------------------------------- the worker process


def main(fd: int, memory_bytes: int) -> None:
    """A worker process's entry point: serve the socket ``fd`` under ``memory_bytes``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops its workers itself
    serve(Connection(fd), memory_bytes)


def serve(conn: Connection, memory_bytes: int) -> None:
    """A worker's loop: warm up, limit the address space, answer until the parent hangs up."""
    _warm_up()
    limit_address_space(memory_bytes)
    conn.send_bytes(READY)
    while True:
        try:
            text = conn.recv_bytes().decode()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            out = evaluate_ipc(text, data)
        except MemoryError:
            conn.send_bytes(MEMORY)
            conn.send_bytes(b"")
            return  # a fresh worker replaces this one
        except OpError as e:
            _send(conn, ERROR, json.dumps({"code": e.code, "message": e.message}).encode())
        except EXPR_FAILURES as e:  # a Polars failure outside the expression's own evaluation
            message = f"could not evaluate {text[:200]!r}: {str(e).strip()[:300] or type(e).__name__}"
            _send(conn, ERROR, json.dumps({"code": ErrorCode.BAD_EXPR, "message": message}).encode())
        else:
            _send(conn, OK, out)
        del data


def _send(conn: Connection, status: bytes, payload: bytes) -> None:
    conn.send_bytes(status)
    conn.send_bytes(payload)


def _warm_up() -> None:
    """Evaluate once before the limit, so Polars' thread pool and allocator arenas exist."""
    n = 20_000
    frame = pl.DataFrame({"s": [f"r{i}" for i in range(n)], "n": list(range(n))})
    out = evaluate_ipc("upper(s) || cast(n * 2 as varchar)", frame_to_ipc(frame))
    series_from_ipc(out)
