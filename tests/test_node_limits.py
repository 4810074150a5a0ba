"""Bounded cost per client, node-wide caps, memory returned, and health that tells the truth (issue 10).

- A client's replies are bounded in bytes as well as in messages (closed 4008).
- Every session charges the server's budget of bytes held for sending; over
  it, broadcasts are dropped (resync) and a reply closes the client with
  ``overloaded`` and 1013; a closed session gives every byte back.
- Connections over ``max_connections``, ``max_unhelloed`` or
  ``max_connections_per_address`` get ``overloaded`` and 1013.
- Cached snapshots do not outlive their state or the room's last session;
  ``malloc_trim`` runs once per burst of closes, at most every few seconds.
- ``/healthz`` answers 503 for a stuck worker or a lagging loop; ``/readyz``
  answers 503 while shutting down or when storage does not answer.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from protocol import CloseCode, Hello, OpBatch, SetCells, decode_server
from server import memory
from server.ops import normalize_frame
from server.ops.state import State
from server.rooms import Room
from server.rooms import outbound as outbound_module
from server.rooms.session import Payload, SendBudget, Session, SessionLimits
from server.serve import Server
from server.settings import Settings
from server.workers import TrackedExecutor, busy_workers
from tests.conftest import LiveServer, small_frame, timeout
from tests.helpers import FakeTransport
from tests.wire import RawPeer


class Socket:
    """A transport double: ``send`` waits while ``gate`` is clear (a peer that does not read).

    With ``direct=True`` it also has the synchronous writer, whose writes leave
    ``buffered`` bytes over the high-water mark until :meth:`drain`.
    """

    def __init__(self, *, reading: bool = True, direct: bool = False) -> None:
        self.sent: list[Payload] = []
        self.gate = asyncio.Event()
        if reading:
            self.gate.set()
        self.sending = asyncio.Event()
        self.arrived = asyncio.Event()
        self.closed: tuple[int, str] | None = None
        self.closing = asyncio.Event()
        self.buffered = 0
        self.writable = asyncio.Event()
        self.writable.set()
        if direct:
            self.direct = Direct(self)

    async def send(self, data: Payload) -> None:
        self.sending.set()
        await self.gate.wait()
        self.sent.append(data)
        self.arrived.set()

    async def until_sent(self, n: int) -> None:
        """Wait (on events) until ``n`` payloads were sent."""
        while len(self.sent) < n:
            self.arrived.clear()
            await self.arrived.wait()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.closing.set()

    def drain(self) -> None:
        self.buffered = 0
        self.writable.set()


class Direct:
    """The synchronous writer of a :class:`Socket` (like server.ws.DirectWriter): a write of
    over 1,000 bytes leaves the buffer over its high-water mark until the socket drains."""

    def __init__(self, sock: Socket) -> None:
        self.sock = sock

    def __call__(self, data: Payload) -> bool:
        sock = self.sock
        if not sock.writable.is_set():
            return False
        sock.sent.append(data)
        if len(data) > 1000:
            sock.buffered += len(data)
            sock.writable.clear()
        return True

    def backlog(self) -> int:
        return 0 if self.sock.writable.is_set() else self.sock.buffered

    async def drained(self) -> None:
        await self.sock.writable.wait()


def _session(sock: Socket, **limits: Any) -> Session:
    def resync(s: Session) -> None:
        s.resync_pending = False  # what the room does: a fresh welcome goes out instead

    s = Session("c", sock, binary=True, limits=SessionLimits(**limits), resync=resync)
    s.start()
    return s


# ---------------------------------------------------------------- one session's replies


async def test_replies_alone_over_twice_the_byte_bound_close_the_client_4008() -> None:
    sock = Socket(reading=False)
    s = _session(sock, max_messages=1000, max_bytes=1000)
    s.push(b"a" * 600)  # the writer takes it and waits on the socket
    await asyncio.wait_for(sock.sending.wait(), timeout(5))
    for _ in range(3):
        s.push(b"b" * 600)  # replies are never dropped: 1,800 bytes queued, under twice the bound
    assert not s.closed and s.queued_bytes == 1800
    s.push(b"c" * 600)  # 2,400 bytes of replies: over twice the bound (far under the count bound)
    assert s.closed and s.queued == 0
    await asyncio.wait_for(sock.closing.wait(), timeout(5))
    assert sock.closed is not None and sock.closed[0] == CloseCode.SLOW_CONSUMER
    await s.stop()


# ---------------------------------------------------------------- the node's budget


async def test_a_client_that_would_pass_the_node_budget_is_resynced_or_closed_1013() -> None:
    budget = SendBudget(1000)
    slow = Socket(reading=False)
    a = _session(slow, budget=budget)
    a.push(b"x" * 400)
    await asyncio.wait_for(slow.sending.wait(), timeout(5))
    a.push(b"y" * 500)
    assert budget.used == 900 == a.held_bytes  # in flight and queued, both held for a client

    other = Socket(reading=False)
    b = _session(other, budget=budget)
    b.push(b"d" * 200, droppable=True)  # a broadcast that does not fit: dropped, resync
    assert b.dropped == 1 and budget.used == 900
    other.gate.set()
    b.push(b"r" * 200)  # a reply that does not fit: error overloaded, then close 1013
    await asyncio.wait_for(other.closing.wait(), timeout(5))
    assert other.closed is not None and other.closed[0] == CloseCode.TRY_AGAIN_LATER
    err = decode_server(other.sent[-1])
    assert err.type == "error" and err.code == "overloaded"
    assert err.details["limit"] == "max_queued_bytes_total"
    assert budget.used == 900  # b held nothing
    await a.stop()
    await b.stop()
    assert budget.used == 0  # a closed session gives every byte back


async def test_a_welcome_is_not_encoded_while_the_server_is_full() -> None:
    budget = SendBudget(100)
    budget.charge(100)  # other clients hold the whole budget
    encoded: list[bool] = []

    async def welcome() -> Payload:
        encoded.append(True)
        return b"w" * 50

    sock = Socket()
    s = _session(sock, budget=budget)
    s.push(welcome)
    await asyncio.wait_for(sock.closing.wait(), timeout(5))
    assert sock.closed is not None and sock.closed[0] == CloseCode.TRY_AGAIN_LATER
    assert encoded == []  # no encoding for a client the server cannot hold
    await s.stop()
    assert budget.used == 100


async def test_a_direct_write_left_over_the_high_water_mark_is_held_until_it_drains() -> None:
    budget = SendBudget(100_000)
    sock = Socket(direct=True)
    s = _session(sock, budget=budget)
    s.push(b"x" * 3000)  # written directly; the socket's buffer is now over its mark
    assert s.direct_writes == 1 and budget.used == 3000
    s.push(b"y")  # nothing more is written directly until it drained
    assert s.queued == 1 and budget.used == 3001
    sock.drain()
    await asyncio.wait_for(sock.until_sent(2), timeout(5))
    assert sock.sent == [b"x" * 3000, b"y"] and budget.used == 0
    s.push(b"z")
    assert s.direct_writes == 2 and budget.used == 0
    await s.stop()


async def test_the_budget_counts_exactly_what_every_session_holds_and_gets_it_all_back() -> None:
    """Random pushes, stalls, drains and closes: the budget always equals the sum of what sessions hold."""
    rng = random.Random(10)
    budget = SendBudget(40_000)
    socks = [Socket(reading=rng.random() < 0.5, direct=i % 2 == 0) for i in range(6)]
    sessions = [_session(sock, budget=budget, max_messages=8, max_bytes=6000) for sock in socks]
    for _ in range(600):
        i = rng.randrange(len(sessions))
        s, sock = sessions[i], socks[i]
        what = rng.random()
        if what < 0.6:
            s.push(bytes(rng.randrange(1, 3000)), droppable=rng.random() < 0.6)
        elif what < 0.7:
            sock.gate.set() if not sock.gate.is_set() else sock.gate.clear()
        elif what < 0.8:
            sock.drain()
        elif what < 0.82:
            await s.stop()
            socks[i] = Socket(reading=rng.random() < 0.5, direct=i % 2 == 0)
            sessions[i] = _session(socks[i], budget=budget, max_messages=8, max_bytes=6000)
        await asyncio.sleep(0)
        assert budget.used == sum(x.held_bytes for x in sessions) <= budget.limit + 3000
    assert any(s.closed for s in sessions) or any(s.resyncs or s.dropped for s in sessions)
    for s in sessions:
        await s.stop()
    assert budget.used == 0


# ---------------------------------------------------------------- node-wide caps


async def _refused(peer: RawPeer, limit: str) -> None:
    err = await peer.recv()
    assert err.type == "error" and err.code == "overloaded" and err.details["limit"] == limit, err
    with pytest.raises(ConnectionClosed) as closed:
        await peer.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.TRY_AGAIN_LATER


async def _works(peer: RawPeer) -> None:
    await peer.send({"type": "ping", "id": 9})
    await peer.recv_until("pong")


async def test_connections_from_one_address_over_the_cap_get_overloaded_and_1013(make_server: Any) -> None:
    async with make_server(Settings(demo=False, max_connections_per_address=2)) as srv:
        a, b = await RawPeer.open(srv.url), await RawPeer.open(srv.url)
        await a.hello("a")
        await b.hello("b")
        await _refused(await RawPeer.open(srv.url), "max_connections_per_address")
        await _works(a)
        await b.close()
        node = srv.app.state.node
        await asyncio.wait_for(node.until(lambda: node.connections == 1), timeout(5))
        c = await RawPeer.open(srv.url)  # a place was given back
        await c.hello("c")
        await _works(c)
        await a.close()
        await c.close()


async def test_sockets_that_never_say_hello_over_the_cap_get_overloaded_and_1013(make_server: Any) -> None:
    async with make_server(Settings(demo=False, max_unhelloed=2)) as srv:
        joined = await RawPeer.open(srv.url)
        await joined.hello("joined")
        quiet = [await RawPeer.open(srv.url), await RawPeer.open(srv.url)]
        await _refused(await RawPeer.open(srv.url), "max_unhelloed")
        await _works(joined)  # sockets that said hello do not count
        await quiet[0].hello("late")  # saying hello frees a place
        node = srv.app.state.node
        assert node.unhelloed == 1
        d = await RawPeer.open(srv.url)
        await d.hello("d")
        for p in (joined, *quiet, d):
            await p.close()


async def test_connections_over_the_server_cap_get_overloaded_and_1013(make_server: Any) -> None:
    async with make_server(Settings(demo=False, max_connections=1)) as srv:
        a = await RawPeer.open(srv.url)
        await a.hello("a")
        await _refused(await RawPeer.open(srv.url), "max_connections")
        await _works(a)
        stats = (await _get(srv, "/healthz")).json()
        assert stats["connections"] == 1 and stats["refused"] == 1
        await a.close()


# ---------------------------------------------------------------- memory returned


async def test_cached_snapshots_go_with_their_state_and_with_the_rooms_last_session(monkeypatch: Any) -> None:
    monkeypatch.setattr(outbound_module, "BIG_SNAPSHOT_ROWS", 5)
    df, catalog = normalize_frame(small_frame())
    room = Room("sales", "main", State(df, catalog, df.height))
    room.start()
    t1, t2 = FakeTransport(), FakeTransport()
    s1 = room.join(Hello("a", codecs=("parquet",)), t1, binary=True)
    await asyncio.wait_for(t1.next_of("welcome"), timeout(10))
    assert len(room.outbound._snapshots) == 1  # a join at this state may reuse it
    room.submit(s1, OpBatch(1, 0, (SetCells((1,), "qty", (7,)),), id=1))
    await asyncio.wait_for(t1.next_of("delta"), timeout(10))
    assert room.outbound._snapshots == {}  # the state moved on: that snapshot can never be sent again
    s2 = room.join(Hello("b", codecs=("parquet",)), t2, binary=True)
    await asyncio.wait_for(t2.next_of("welcome"), timeout(10))
    assert len(room.outbound._snapshots) == 1
    await room.leave(s1)
    assert len(room.outbound._snapshots) == 1  # b is still in
    await room.leave(s2)
    assert room.outbound._snapshots == {}  # no session left: nothing keeps it
    await room.close()


async def test_malloc_trim_runs_once_per_burst_of_closes_and_at_most_every_interval() -> None:
    trimmed = threading.Event()
    calls: list[float] = []

    def trim() -> None:
        calls.append(time.monotonic())
        trimmed.set()

    trimmer = memory.Trimmer(trim, delay=0.01, every=60.0)
    for _ in range(50):  # a burst of closes: one trim after it
        trimmer.soon()
    await asyncio.wait_for(asyncio.to_thread(trimmed.wait), timeout(5))
    trimmer.soon()  # another close right after: not before `every` has passed since the last trim
    assert trimmer._timer is not None
    wait = trimmer._timer.when() - asyncio.get_running_loop().time()
    assert 55.0 < wait <= 60.0
    trimmer.close()
    assert len(calls) == 1


def test_malloc_trim_is_only_used_on_glibc(monkeypatch: Any) -> None:
    def not_glibc(name: str) -> str:
        raise ValueError(name)

    monkeypatch.setattr(memory.os, "confstr", not_glibc)
    assert memory._glibc_trim() is None
    memory.Trimmer(None).soon()  # nothing to run: no timer, no error


# ---------------------------------------------------------------- health


def test_a_tracked_executor_names_its_busy_work_and_shutdown_does_not_wait_for_it() -> None:
    release, started = threading.Event(), threading.Event()

    def stuck_here() -> None:
        started.set()
        release.wait()

    ex = TrackedExecutor(max_workers=1, thread_name_prefix="t")
    try:
        ex.submit(stuck_here)
        assert started.wait(timeout(5))
        [busy] = [b for b in busy_workers() if b.work.endswith("stuck_here")]
        assert busy.thread.startswith("t") and busy.seconds >= 0
        queued = ex.submit(time.sleep, 0)
        t0 = time.monotonic()
        ex.abandon()  # returns at once, with a worker still busy
        assert time.monotonic() - t0 < 1.0 and queued.cancelled()
    finally:
        release.set()


async def _get(srv: LiveServer, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=srv.http) as http:
        return await http.get(path)


async def test_healthz_answers_503_while_a_worker_is_stuck(make_server: Any) -> None:
    async with make_server(Settings(demo=False, worker_stuck_after=0.0)) as srv:
        r = await _get(srv, "/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok", r.json()
        release, started = threading.Event(), threading.Event()

        def stuck_worker() -> None:
            started.set()
            release.wait()

        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(None, stuck_worker)  # the app's tracked default executor
        try:
            await asyncio.to_thread(started.wait)
            r = await _get(srv, "/healthz")
            assert r.status_code == 503, r.json()
            body = r.json()
            assert body["status"] == "unhealthy"
            assert [w["work"] for w in body["workers_stuck"] if w["work"].endswith("stuck_worker")]
        finally:
            release.set()
            await work
        r = await _get(srv, "/healthz")
        assert r.status_code == 200, r.json()


async def test_healthz_answers_503_when_the_event_loop_lags(make_server: Any) -> None:
    async with make_server(Settings(demo=False, health_max_lag=0.05)) as srv:
        assert (await _get(srv, "/healthz")).status_code == 200
        asyncio.get_running_loop().call_soon(time.sleep, 0.3)  # blocks the server's loop (this loop)
        r = await _get(srv, "/healthz")
        assert r.status_code == 503, r.json()
        assert r.json()["loop_lag_s"] > 0.05


async def test_readyz_needs_storage_and_turns_503_on_a_signal(make_server: Any, monkeypatch: Any) -> None:
    async with make_server(Settings(demo=False)) as srv:
        r = await _get(srv, "/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["datasets"] == 1

        async def unreachable() -> list[str]:
            raise OSError("connection refused")

        with monkeypatch.context() as m:
            m.setattr(srv.registry.storage.catalog, "list_datasets", unreachable)
            r = await _get(srv, "/readyz")
            assert r.status_code == 503 and r.json()["status"] == "storage_unreachable"
        assert (await _get(srv, "/readyz")).status_code == 200

        # What SIGTERM does first: the server is not ready any more, before it stops listening.
        server = Server.for_app(srv.app, srv.settings)  # another server of the same app, not running
        server.handle_exit(signal.SIGTERM, None)
        r = await _get(srv, "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "shutting_down"
        assert (await _get(srv, "/healthz")).status_code == 200  # still alive: it is only draining
