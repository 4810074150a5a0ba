"""The server's side of the views process (:mod:`.worker`): start it, ask it, bound it, restart it.

:class:`ViewsProcess` is one per node. Rooms' views (:mod:`.live`) and
dashboards (:mod:`.endpoint`) send it requests with :meth:`ViewsProcess.call`;
the process answers them in order. Nothing in a room waits for it: acks,
deltas and joins never go through here, only view work does.

**Budgets.** Every request carries a time budget. The process works on one
request at a time, so the clock of a request starts when the one before it
is answered. A request over its budget means Perspective is stuck in native
code that nothing can interrupt: the process is killed, every pending
request fails with :class:`ViewsLost`, and the next request starts a fresh
process. The request that overran is marked (:attr:`ViewsLost.overran`),
so its owner can close the view that caused it with the reason, while the
others rebuild. The process limits its own address space
(``views_memory_bytes``); over it, it dies, with the same outcome.

**Restarts.** Listeners added with :meth:`on_lost` hear of every loss (the
reason, and the tag of the request that overran, if one did): each room's
views then rebuild their tables and send fresh snapshots, and each dashboard
session is closed so its page reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .worker import pack, unpack

__all__ = ["ViewsProcess", "ViewsLost", "ViewsFailed", "START_TIMEOUT"]

log = logging.getLogger("coframe.views")

START_TIMEOUT = 120.0  # seconds for a new process to import Perspective and report ready
_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from server.perspective.worker import main;"
    " main(int(sys.argv[2]), int(sys.argv[3]))"
)


class ViewsLost(Exception):
    """The views process was lost while this request was pending (killed over a budget, or died)."""

    def __init__(self, reason: str, overran: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.overran = overran  # this very request ran over its budget


class ViewsFailed(Exception):
    """The views process answered with an error (``code``: ``bad_view``, ``internal``, ``memory``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Pending:
    id: int
    future: asyncio.Future[Any]
    budget: float
    tag: Any


Lost = Callable[[str, Any], None]  # (reason, tag of the request that overran or None)


class _Proc:
    """One running views process and the server's end of its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], reader: asyncio.StreamReader, writer: Any) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.pending: collections.deque[_Pending] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.started = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        self.gone = False


class ViewsProcess:
    """Starts the views process on first use and keeps one alive (see module doc)."""

    def __init__(self, *, memory_bytes: int = 0) -> None:
        self.memory_bytes = memory_bytes
        self.generation = 0  # bumped at every start: tables of an older generation are gone
        self.restarts = 0  # processes lost so far
        self._proc: _Proc | None = None
        self._starting: asyncio.Future[_Proc] | None = None
        self._ids = itertools.count(1)
        self._pushes: dict[int, Callable[[bytes], None]] = {}
        self._listeners: list[Lost] = []
        self._closed = False
        self.last_loss: str | None = None
        self._reaping: set[asyncio.Future[int]] = set()

    # ------------------------------------------------------------ api

    @property
    def pid(self) -> int | None:
        """The running process's id (None before the first request, or after a loss)."""
        p = self._proc
        return None if p is None or p.gone else p.proc.pid

    def on_lost(self, listener: Lost) -> Callable[[], None]:
        """Call ``listener(reason, overran_tag)`` after each loss; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def on_push(self, sid: int, push: Callable[[bytes], None] | None) -> None:
        """Route dashboard session ``sid``'s replies to ``push`` (None: forget it)."""
        if push is None:
            self._pushes.pop(sid, None)
        else:
            self._pushes[sid] = push

    async def start(self) -> int:
        """Start the process now if it is not running (else wait for it); its generation."""
        await self._ensure()
        return self.generation

    async def call(self, req: dict[str, Any], *, budget: float, tag: Any = None) -> Any:
        """Send ``req``; its answer.

        Raises:
            ViewsLost: the process was lost first (``overran``: by this request).
            ViewsFailed: the process answered with an error.
            RuntimeError: the process is closed or could not start.
        """
        proc = await self._ensure()
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = _Pending(rid, fut, budget, tag)
        if proc.gone:
            raise ViewsLost(self.last_loss or "the views process was lost", False)
        proc.pending.append(entry)
        if len(proc.pending) == 1:
            self._arm(proc)
        proc.writer.write(pack({**req, "id": rid}))
        await proc.writer.drain()
        return await fut

    async def stats(self) -> dict[str, Any]:
        """What the process holds, per table key (:meth:`.host.Host._op_stats`); {} when not running."""
        if self.pid is None:
            return {}
        return dict(await self.call({"op": "stats"}, budget=30.0))

    async def close(self) -> None:
        """Stop the process; pending requests fail."""
        self._closed = True
        if self._starting is not None:
            try:
                await self._starting
            except Exception:  # it could not start: nothing to stop
                pass
        if self._proc is not None:
            self._lose(self._proc, "the server is shutting down", None, notify=False)
        await asyncio.gather(*self._reaping, return_exceptions=True)
        self._reaping.clear()

    # ------------------------------------------------------------ process

    async def _ensure(self) -> _Proc:
        if self._closed:
            raise RuntimeError("the views process is closed (the server is shutting down)")
        p = self._proc
        if p is not None and not p.gone:
            return p
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._spawn())
        starting = self._starting
        try:
            return await asyncio.shield(starting)
        finally:
            if self._starting is starting and starting.done():
                self._starting = None

    async def _spawn(self) -> _Proc:
        ours, theirs = socket.socketpair()
        try:
            argv = [sys.executable, "-I", "-c", _BOOT, _ROOT, str(theirs.fileno()), str(self.memory_bytes)]
            proc = await asyncio.to_thread(
                subprocess.Popen, argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours, limit=1 << 20)
        p = _Proc(proc, reader, writer)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                hello = unpack(await _read_body(reader))
            if hello != {"ready": True}:
                raise RuntimeError(f"unexpected first frame {hello!r}")
        except BaseException as e:
            writer.close()
            proc.kill()
            await asyncio.to_thread(proc.wait)
            raise RuntimeError(f"the views process could not start: {e!r}") from None
        self.generation += 1
        self._proc = p
        p.task = asyncio.get_running_loop().create_task(self._read(p), name="views-process-reader")
        log.info("views process %d started (generation %d)", proc.pid, self.generation)
        return p

    async def _read(self, p: _Proc) -> None:
        try:
            while True:
                msg = unpack(await _read_body(p.reader))
                if "push" in msg:
                    push = self._pushes.get(msg["push"])
                    if push is not None:
                        push(msg["data"])
                    continue
                if not p.pending or p.pending[0].id != msg.get("id"):
                    raise RuntimeError(f"views process answered out of order: {msg.get('id')!r}")
                entry = p.pending.popleft()
                self._arm(p)
                if entry.future.done():
                    continue
                if "error" in msg:
                    err = msg["error"]
                    entry.future.set_exception(ViewsFailed(str(err["code"]), str(err["message"])))
                else:
                    entry.future.set_result(msg.get("ok"))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            if not p.gone:
                code = await asyncio.to_thread(p.proc.wait)
                # Killed from outside (an operator, the OOM killer): nobody's fault.
                if code == -signal.SIGKILL:
                    self._lose(p, "the views process was killed (SIGKILL); its tables are rebuilt", None)
                else:  # it crashed on the request it was working on: that one is to blame
                    head = p.pending[0] if p.pending else None
                    self._lose(p, f"the views process crashed working on it (exit code {code})", head)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("views process reader failed")
            self._lose(p, f"the views process misbehaved: {e}", None)

    def _arm(self, p: _Proc) -> None:
        """Start the budget clock of the request now at the head (the one being worked on)."""
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None
        if p.pending and not p.gone:
            head = p.pending[0]
            p.timer = asyncio.get_running_loop().call_later(head.budget, self._overrun, p, head)

    def _overrun(self, p: _Proc, entry: _Pending) -> None:
        if p.pending and p.pending[0] is entry and not p.gone:
            self._lose(p, f"it ran over its {entry.budget:g} s budget (views_timeout)", entry)

    def _lose(self, p: _Proc, reason: str, overran: _Pending | None, *, notify: bool = True) -> None:
        """Kill ``p``, fail its requests, and tell the listeners (the next call starts a new process)."""
        if p.gone:
            return
        p.gone = True
        if p.timer is not None:
            p.timer.cancel()
        try:
            p.proc.kill()
        except ProcessLookupError:
            pass
        p.writer.close()
        if p.task is not None and p.task is not asyncio.current_task():
            p.task.cancel()
        self._reaping.add(asyncio.ensure_future(asyncio.to_thread(p.proc.wait)))  # reap it
        self._reaping = {t for t in self._reaping if not t.done()}
        self.restarts += 1
        self.last_loss = reason
        log.log(logging.WARNING if notify else logging.INFO, "views process %d lost: %s", p.proc.pid, reason)
        for entry in p.pending:
            if not entry.future.done():
                entry.future.set_exception(ViewsLost(reason, entry is overran))
        p.pending.clear()
        self._pushes.clear()
        if notify:
            tag = None if overran is None else overran.tag
            for listener in list(self._listeners):
                try:
                    listener(reason, tag)
                except Exception:
                    log.exception("a views-process listener failed")


async def _read_body(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(4)
    return await reader.readexactly(int.from_bytes(head, "big"))
