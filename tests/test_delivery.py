"""The synchronous delivery fast path (server.ws.DirectWriter, Session.push).

A session whose queue is empty writes each frame straight onto its socket's
buffer; one with anything queued or in flight queues, so per-reader order is
kept and the bounded queue still applies the slow-consumer policy. These tests
check that the fast path writes exactly the bytes the ASGI path writes, in the
same order, and that it steps aside whenever the old path must run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol

from client import connect
from server.rooms.session import Payload, Session, SessionLimits
from server.ws import DirectWriter, frame_of
from tests.conftest import timeout


def _websockets_frame(data: bytes | str) -> bytes:
    """What uvicorn's send writes for ``data``: websockets' ServerProtocol output."""
    proto = ServerProtocol()
    proto.state = WsState.OPEN
    if isinstance(data, str):
        proto.send_text(data.encode())
    else:
        proto.send_binary(data)
    return b"".join(proto.data_to_send())


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 2_000_000])
@pytest.mark.parametrize("kind", [bytes, str])
def test_frame_of_is_byte_for_byte_what_websockets_writes(size: int, kind: type) -> None:
    data: bytes | str = b"\x01" * size if kind is bytes else "é" * (size // 2)
    assert frame_of(data) == _websockets_frame(data)


def test_frame_of_builds_one_frame_per_payload() -> None:
    data = b"delta" * 10
    first = frame_of(data)
    assert frame_of(data) is first  # the same payload object: the same frame object
    other = bytes(bytearray(data))  # equal, but another object
    assert frame_of(other) == first and frame_of(other) is not first


class Wire:
    """A transport double that records what reaches the peer, by either path, in order."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Payload]] = []
        self.accept = True  # the direct writer's answer (False: the buffer is over its mark)
        self.gate: asyncio.Event | None = None  # when set, ``send`` waits on it (a paused socket)
        self.sending = asyncio.Event()
        self._changed = asyncio.Event()

    def _record(self, how: str, data: Payload) -> None:
        self.got.append((how, data))
        self._changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait (on events) until ``done()`` holds for what the peer got."""
        async with asyncio.timeout(timeout(5)):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    def payloads(self) -> list[Payload]:
        return [d for _, d in self.got]

    def direct(self, data: Payload) -> bool:
        if not self.accept:
            return False
        self._record("direct", data)
        return True

    async def send(self, data: Payload) -> None:
        self.sending.set()
        if self.gate is not None:
            await self.gate.wait()
        self._record("queued", data)

    async def close(self, code: int, reason: str) -> None:
        self._record("close", f"{code}")


def _session(wire: Any, resync: Callable[[Session], None] = lambda s: None, **kw: Any) -> Session:
    s = Session("c", wire, binary=True, limits=SessionLimits(**kw), resync=resync)
    s.start()
    return s


async def test_an_idle_session_writes_directly_without_its_writer() -> None:
    wire = Wire()
    s = _session(wire)
    for i in range(5):
        s.push(bytes([i]), droppable=True)
    assert wire.got == [("direct", bytes([i])) for i in range(5)] and s.queued == 0
    assert s.direct_writes == 5
    await s.stop()


async def test_a_declined_write_queues_and_later_ones_wait_behind_it() -> None:
    wire = Wire()
    s = _session(wire)
    wire.accept, wire.gate = False, asyncio.Event()
    s.push(b"1")  # the buffer is over its mark: queued; the writer will wait on the socket
    await asyncio.wait_for(wire.sending.wait(), timeout(5))
    wire.accept = True  # the buffer drained, but b"1" is still in flight
    s.push(b"2")
    s.push(b"3")
    assert wire.got == [] and s.queued == 2
    wire.gate.set()
    await wire.until(lambda: len(wire.got) == 3)
    assert wire.got == [("queued", b"1"), ("queued", b"2"), ("queued", b"3")]
    s.push(b"4")  # everything sent: the fast path again
    assert wire.got[-1] == ("direct", b"4")
    await s.stop()


async def test_a_big_welcome_encoded_later_goes_before_the_deltas_pushed_after_it() -> None:
    wire = Wire()
    s = _session(wire)
    encoded = asyncio.Event()

    async def welcome() -> Payload:
        await encoded.wait()
        return b"welcome"

    item: Callable[[], Awaitable[Payload]] = welcome
    s.push(item)
    s.push(b"d1", droppable=True)
    s.push(b"d2", droppable=True)
    encoded.set()
    await wire.until(lambda: len(wire.got) == 3)
    assert wire.got == [("queued", b"welcome"), ("queued", b"d1"), ("queued", b"d2")]
    await s.stop()


async def test_the_fast_path_and_the_queue_deliver_the_same_sequence() -> None:
    """Equivalence: the peer sees the same payloads in the same order with or without ``direct``."""
    items = [bytes([i]) * (i + 1) for i in range(40)]

    async def run(with_direct: bool) -> list[Payload]:
        wire = Wire()
        if not with_direct:
            wire.direct = None  # type: ignore[assignment,method-assign]
        s = _session(wire)
        for i, data in enumerate(items):
            wire.accept = i % 7 not in (3, 4)  # now and then the buffer is over its mark
            s.push(data, droppable=i % 2 == 0)
            if i % 5 == 0:
                await asyncio.sleep(0)
        await wire.until(lambda: len(wire.got) == len(items))
        await s.stop()
        return wire.payloads()

    assert await run(True) == await run(False) == items


async def test_a_session_in_resync_does_not_write_directly() -> None:
    wire = Wire()
    resynced: list[Session] = []

    def resync(s: Session) -> None:
        resynced.append(s)
        s.resync_pending = False
        s.push(b"welcome")

    s = _session(wire, resync=resync, max_messages=2)
    wire.accept, wire.gate = False, asyncio.Event()
    for i in range(4):  # overflows: the droppable deltas go, the session is marked for resync
        s.push(bytes([i]), droppable=True)
    assert s.resync_pending
    wire.accept = True
    s.push(b"late delta", droppable=True)  # dropped, not written past the resync
    assert b"late delta" not in wire.payloads()
    wire.gate.set()
    await wire.until(lambda: b"welcome" in wire.payloads())
    assert resynced == [s] and wire.payloads()[-1] == b"welcome"
    assert b"late delta" not in wire.payloads()
    await s.stop()


async def test_a_failing_direct_write_closes_the_session() -> None:
    def broken(data: Payload) -> bool:
        raise ConnectionResetError("gone")

    wire = Wire()
    wire.direct = broken  # type: ignore[assignment,method-assign]
    s = _session(wire)
    s.push(b"x")
    assert s.closed
    await s.stop()


def _proto(*, writable: bool = True, close_sent: bool = False, state: WsState = WsState.OPEN) -> Any:
    written: list[bytes] = []
    ev = asyncio.Event()
    if writable:
        ev.set()
    transport = SimpleNamespace(write=written.append, is_closing=lambda: False)
    return SimpleNamespace(
        writable=ev, close_sent=close_sent, conn=SimpleNamespace(state=state), transport=transport
    ), written


async def test_the_direct_writer_declines_a_paused_or_closing_connection() -> None:
    proto, written = _proto()
    assert DirectWriter(proto)(b"abc") and written == [frame_of(b"abc")]
    for kw in ({"writable": False}, {"close_sent": True}, {"state": WsState.CLOSING}):
        proto, written = _proto(**kw)  # type: ignore[arg-type]
        assert not DirectWriter(proto)(b"abc") and written == []


def test_the_direct_writer_is_only_for_uvicorns_websockets_sansio() -> None:
    async def send(message: Any) -> None: ...

    assert DirectWriter.of(None) is None
    assert DirectWriter.of(send) is None


async def test_a_live_connection_takes_the_fast_path(server: Any) -> None:
    async with connect(server.url, "sales") as writer, connect(server.url, "sales") as reader:
        room = server.room()
        session = room.sessions[reader.client_id]
        assert isinstance(session.transport.direct, DirectWriter)
        before = session.direct_writes
        await writer.set_cells([0, 1], "price", [1.0, 2.0])
        await writer.sync()
        await reader.wait_for_seq(writer.seq)
        assert session.direct_writes > before
        assert reader.frame.equals(room.core.state.frame)
