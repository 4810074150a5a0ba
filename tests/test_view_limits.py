"""Live views cannot hurt other clients (issues 10, 11): expression limits, per-connection limits,
in-order view replies, UInt64 values, and Perspective's own process.

Servers run in-process on port 0 (tests/conftest.py ``make_server``); rooms
without a server use a fake transport. Waits are on messages, never on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import polars as pl
import psutil
import pyarrow as pa
import pytest

from client import OpRejected, connect
from protocol import Hello, Query, Subscribe, decode_server
from server.ops import normalize_frame
from server.ops.state import State
from server.perspective.config import MAX_EXPRESSION_CHARS, ViewConfigError, check_expression
from server.perspective.live import RoomViews
from server.perspective.readonly import Gate, check_request
from server.perspective.service import LiveViews
from server.perspective.types import to_perspective
from server.rooms import Room, RoomConfig
from server.rooms.requests import VIEW_REQUESTS_QUEUED, VIEW_REQUESTS_WAITING
from server.settings import Settings
from tests.conftest import small_frame, timeout
from tests.helpers import FakeTransport
from tests.wire import RawPeer

# Sorted: a grouped view with a sort is served by Perspective (unsorted sums come from the frame).
SUM = {
    "group_by": ["region"],
    "columns": ["price", "qty"],
    "aggregates": {"price": "sum", "qty": "sum"},
    "sort": [["region", "asc"]],
}

LONG = "1 + " * 5_000 + "1"  # over MAX_EXPRESSION_CHARS
BUDGETED = [  # no longer refused: the views process's budgets bound them
    "var v[3] := {1, 2, 3}; v[0] + v[2]",
    "var s := 0; for (var i := 0; i < 10; i += 1) { s += i }; s",
    "var n := 0; while (n < 5) { n += 1 }; n",
]


# ---------------------------------------------------------------- pure


def test_an_expression_too_long_to_parse_is_refused() -> None:
    assert len(LONG) > MAX_EXPRESSION_CHARS
    with pytest.raises(ViewConfigError) as e:
        check_expression("e", LONG)
    assert e.value.code == "bad_view"
    limit = MAX_EXPRESSION_CHARS
    assert e.value.details == {"field": "config.expressions", "expression": "e", "limit": limit}
    assert "over the limit" in e.value.message


@pytest.mark.parametrize("text", [*BUDGETED, '"qty" * 2', "concat('for', 'while')"])
def test_vectors_and_loops_pass_the_check(text: str) -> None:
    check_expression("e", text)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _entry(name: str, text: str) -> bytes:
    return _len(1, name.encode()) + _len(2, text.encode())


def _make_view(view_id: str, exprs: dict[str, str]) -> bytes:
    """Request{msg_id, entity_id, table_make_view_req{view_id, config{expressions}}} as 5.5.1 sends it."""
    config = b"".join(_len(6, _entry(n, t)) for n, t in exprs.items())
    return b"\x08\x01" + _len(2, b"sales/main") + _len(6, _len(1, view_id.encode()) + _len(2, config))


def _validate(exprs: dict[str, str]) -> bytes:
    body = b"".join(_len(1, _entry(n, t)) for n, t in exprs.items())
    return b"\x08\x02" + _len(2, b"sales/main") + _len(9, body)


def test_the_dashboard_gate_refuses_expressions_too_long_to_parse() -> None:
    gate = Gate("sales/main")
    ok = gate.check(_make_view("v1", {"double": '"qty" * 2', "loop": BUDGETED[1]}))
    assert ok.allowed and gate.views == {"v1"}
    bad = gate.check(_make_view("v2", {"double": '"qty" * 2', "boom": LONG}))
    assert not bad.allowed and "'boom' is" in bad.reason and "over the limit" in bad.reason
    assert gate.views == {"v1"}  # the refused view is not this connection's
    assert gate.check(_validate({"x": '"qty" + 1', "spin": BUDGETED[2]})).allowed
    refused = gate.check(_validate({"spin": LONG}))
    assert not refused.allowed and "over the limit" in refused.reason


async def test_the_dashboard_gate_reads_what_perspective_sends() -> None:
    """The gate's reading of the bytes matches perspective-python 5.5.1's own requests."""
    import perspective

    server = perspective.Server()
    server.new_local_client().table(pa.table({"qty": [1.0, 2.0]}), name="sales/main")
    frames: list[bytes] = []
    client: Any = None
    session = server.new_session(lambda b: client.handle_response(bytes(b)))

    def send(b: bytes) -> None:
        frames.append(bytes(b))
        session.handle_request(bytes(b))

    client = perspective.Client(send)
    table = client.open_table("sales/main")
    table.view(expressions={"ok": '"qty" * 2', "boom": LONG})
    table.validate_expressions({"spin": LONG})
    gate = Gate("sales/main")
    made, validated = (d for d in map(check_request, frames) if d.field in (6, 9))
    assert (made.name, validated.name) == ("table_make_view_req", "table_validate_expr_req")
    made, validated = gate.check(frames[made_at(frames, 6)]), gate.check(frames[made_at(frames, 9)])
    assert not made.allowed and "'boom' is" in made.reason
    assert not validated.allowed and "'spin' is" in validated.reason


def made_at(frames: list[bytes], field: int) -> int:
    return next(i for i, f in enumerate(frames) if check_request(f).field == field)


def test_uint64_values_past_int64_go_to_perspective_as_float64() -> None:
    values = [1, 2**53 + 1, 2**63 + 5, 2**64 - 1, None]
    out = to_perspective(
        pa.table({"_rid": pa.array(range(5), pa.uint64()), "u": pa.array(values, pa.uint64())})
    )
    assert out.schema.field("u").type == pa.float64()
    assert out.column("u").to_pylist() == [1.0, 2.0**53, 2.0**63, 2.0**64, None]


# ---------------------------------------------------------------- over the protocol


async def test_a_refused_expression_reaches_no_perspective(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(20)}) as srv, connect(srv.url, "sales") as room:
        with pytest.raises(OpRejected) as e:
            await room.subscribe_view(expressions={"v": LONG}, columns=["v"])
        assert e.value.code == "bad_view" and e.value.details["field"] == "config.expressions"
        assert e.value.details["expression"] == "v"
        views = srv.room().views
        assert views.built is None and views.subs == {}  # the table was not even built
        ok = await room.subscribe_view(expressions={"d": '"qty" * 2', "v": BUDGETED[0]}, columns=["d", "v"])
        assert ok.frame["d"].to_list()[:3] == [0.0, 2.0, 4.0]
        assert ok.frame["v"].to_list()[:2] == [4.0, 4.0]  # a vector, bounded by the views budget


async def test_open_views_per_connection_are_limited(make_server: Any) -> None:
    settings = Settings(demo=False, max_views_per_connection=3)
    async with make_server(settings=settings, frames={"sales": small_frame(20)}) as srv:
        async with connect(srv.url, "sales") as room:
            views = [await room.subscribe_view(**SUM) for _ in range(3)]
            with pytest.raises(OpRejected) as e:
                await room.subscribe_view(sort=[["price", "asc"]])
            assert e.value.code == "too_many"
            assert e.value.details == {"limit": "max_views_per_connection", "max": 3}
            assert "unsubscribe one" in e.value.message
            live = srv.room().views
            held = (await live.process.stats())["sales/main"]
            assert (held["views"], held["refs"]) == (1, 3)  # nothing opened; identical configs share one
            await room.ping()  # the socket stays up
            await views[0].close()
            again = await room.subscribe_view(**SUM)
            assert again.frame.height == 3
            assert srv.room().config.max_views_per_connection == 3  # wired from the settings
        async with connect(srv.url, "sales") as other:  # the limit is per connection
            await other.subscribe_view(columns=["qty"])


class GatedTransport(FakeTransport):
    """A client that does not read until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, data: bytes | str) -> None:
        await self.gate.wait()
        await super().send(data)


def _room(config: RoomConfig | None = None, **kw: Any) -> Room:
    df, catalog = normalize_frame(small_frame(50))
    room = Room("sales", "main", State(df, catalog, df.height), config=config, **kw)
    room.start()
    return room


async def _sent_until(t: FakeTransport, done: Any) -> list[Any]:
    async with asyncio.timeout(timeout(20)):
        while True:
            msgs = [decode_server(d) for d in t.sent]
            if done(msgs):
                return msgs
            t.arrived.clear()
            await t.arrived.wait()


async def test_queries_in_flight_are_limited_until_their_results_left() -> None:
    room = _room(RoomConfig(max_queries_per_connection=4))
    t = GatedTransport()
    s = room.join(Hello("reader"), t, binary=True)
    for i in range(10):  # a client that sends and does not read
        room.submit(s, Query("diff", "live", "live", id=i))
    # The first four run; the others are refused at once, and nothing is started for them.
    assert room.requests.queries[s] == 4 and len(room._tasks) == 4
    # The four results wait in the session's queue: they stay in flight until they left.
    await asyncio.wait_for(asyncio.gather(*room._tasks), timeout(20))
    assert room.requests.queries[s] == 4
    room.submit(s, Query("log", id=10))
    t.gate.set()  # it reads: four results, seven refusals
    msgs = await _sent_until(t, lambda ms: len([m for m in ms if m.type in ("result", "error")]) == 11)
    replies = {m.re: m for m in msgs if m.type in ("result", "error")}
    assert sorted(replies) == list(range(11))
    assert [i for i in range(11) if replies[i].type == "result"] == [0, 1, 2, 3]
    for i in range(4, 11):
        assert replies[i].code == "too_many"
        assert replies[i].details == {"limit": "max_queries_per_connection", "max": 4}
        assert "read their results" in replies[i].message
    assert s not in room.requests.queries  # all four left: nothing in flight
    room.submit(s, Query("diff", "live", "live", id=99))
    await _sent_until(t, lambda ms: any(m.type == "result" and m.re == 99 for m in ms))
    await room.close()


def _model(requests: list[tuple[str, str]], limit: int) -> list[str]:
    """What each request gets when a connection's view requests run one at a time, in order."""
    open_: set[str] = set()
    out = []
    for kind, name in requests:
        if kind == "unsubscribe":
            out.append("closed" if name in open_ else "no_such_view")
            open_.discard(name)
        elif len(open_) >= limit:
            out.append("too_many")
        elif name in open_:
            out.append("view_exists")
        else:
            out.append("snapshot")
            open_.add(name)
    return out


async def test_a_burst_of_subscribe_and_unsubscribe_is_answered_once_each_in_order(make_server: Any) -> None:
    limit = 4
    settings = Settings(demo=False, max_views_per_connection=limit)
    rng = random.Random(10)
    names = ["a", "b", "c", "d", "e", "f"]
    requests = [("subscribe" if rng.random() < 0.6 else "unsubscribe", rng.choice(names)) for _ in range(50)]
    want = _model(requests, limit)
    assert {"snapshot", "closed", "no_such_view", "view_exists", "too_many"} <= set(want)
    configs = [SUM, {"sort": [["qty", "desc"]]}, {"columns": ["name", "qty"]}]
    async with make_server(settings=settings, frames={"sales": small_frame(40)}) as srv:
        peer = await RawPeer.open(srv.url, "sales")
        await peer.hello("burst")
        ops = 0
        for i, (kind, name) in enumerate(requests):  # no wait for any reply between sends
            msg: dict[str, Any] = {"type": kind, "id": i, "view": name}
            if kind == "subscribe":
                msg["config"] = configs[i % len(configs)]
            await peer.send(msg)
            if i % 7 == 3:  # edits in between, so updates flow while the requests run
                ops += 1
                sets = [{"op": "set", "rows": [i % 40], "col": "qty", "values": [1000 + i]}]
                await peer.send({"type": "op", "client_seq": ops, "base_seq": 0, "ops": sets})
        async with asyncio.timeout(timeout(60)):
            while len([m for m in peer.seen if m.type in ("view", "error") and m.re is not None]) < 50:
                await peer.recv(timeout(60))
        if not any(m.type == "ack" and m.client_seq == ops for m in peer.seen):
            await peer.recv_until("ack", client_seq=ops)
        await peer.send({"type": "ping", "id": "last"})
        await peer.recv_until("pong")  # anything still due for the burst came before this
        replies = [m for m in peer.seen if m.type in ("view", "error") and m.re is not None]
        assert [m.re for m in replies] == list(range(50)), "each request answered once, in the order sent"
        got = [m.kind if m.type == "view" else m.code for m in replies]
        assert got == want
        for m in replies:
            if m.type == "error" and m.code == "too_many":
                assert m.details["limit"] == "max_views_per_connection"
        # Nothing about a view between its ``closed`` and its next snapshot.
        state: dict[str, bool] = {}
        for m in peer.seen:
            if m.type != "view":
                continue
            if m.kind == "closed":
                state[m.view] = False
            elif m.re is not None and m.kind == "snapshot":
                state[m.view] = True
            else:
                assert state.get(m.view), f"{m.kind} of view {m.view} after its closed"
        still = {name for name, is_open in state.items() if is_open}
        assert {name for _, name in srv.room().views.subs} == still
        await peer.close()


async def test_view_requests_past_the_waiting_bound_are_refused_in_their_turn() -> None:
    views = LiveViews()
    room = _room(RoomConfig(max_views_per_connection=2), views=views)
    t = FakeTransport()
    s = room.join(Hello("flood"), t, binary=True)
    n = VIEW_REQUESTS_QUEUED + 10
    for i in range(n):  # all at once: none has run yet
        room.submit(s, Subscribe(f"v{i}", {"columns": ["qty"]}, id=i))
    msgs = await _sent_until(t, lambda ms: len([m for m in ms if getattr(m, "re", None) is not None]) == n)
    replies = [m for m in msgs if m.type in ("view", "error")]
    assert [m.re for m in replies] == [*range(VIEW_REQUESTS_QUEUED, n), *range(VIEW_REQUESTS_QUEUED)]
    got = {m.re: m.kind if m.type == "view" else m.details["limit"] for m in replies}
    assert [got[i] for i in (0, 1)] == ["snapshot", "snapshot"]
    assert {got[i] for i in range(2, VIEW_REQUESTS_WAITING)} == {"max_views_per_connection"}
    assert {got[i] for i in range(VIEW_REQUESTS_WAITING, n)} == {"view_requests_waiting"}
    assert s not in room.requests.waiting and room.views.open_views(s) == 2
    await room.close()
    await views.close()


async def test_uint64_values_past_int64_do_not_break_any_view(make_server: Any) -> None:
    big = [1, 2**53 + 1, 2**63 + 5, 2**64 - 1, 7, None]
    frame = pl.DataFrame(
        {"u": pl.Series(big, dtype=pl.UInt64), "g": ["x", "y", "x", "y", "x", "y"], "n": [1, 2, 3, 4, 5, 6]}
    )
    async with make_server(frames={"big": frame}) as srv, connect(srv.url, "big") as room:
        plain = await room.subscribe_view(columns=["u", "n"])
        ordered = await room.subscribe_view(columns=["u", "n"], sort=[["u", "desc"]])
        grouped = await room.subscribe_view(group_by=["g"], columns=["u"], aggregates={"u": "sum"})
        by_u = await room.subscribe_view(group_by=["u"], columns=["n"], aggregates={"n": "sum"})
        filtered = await room.subscribe_view(columns=["n"], filter=[["u", ">", 1e19]])
        assert plain.frame["u"].to_list() == [1.0, 2.0**53, 2.0**63, 2.0**64, 7.0, None]
        assert ordered.frame["n"].to_list() == [4, 3, 2, 5, 1, 6]
        sums = dict(grouped.frame.iter_rows())
        assert sums["x"] == pytest.approx(2.0**63 + 8) and sums["y"] == pytest.approx(2.0**64 + 2.0**53)
        assert by_u.frame.height == 6 and filtered.frame["n"].to_list() == [4]
        await room.set_cells([0], "u", [2**64 - 2])  # an update past Int64 follows too
        await ordered.wait_for(lambda f: f["n"].to_list()[:2] in ([1, 4], [4, 1]))
        await grouped.wait_for(lambda f: dict(f.iter_rows())["x"] == pytest.approx(2.0**64 + 2.0**63))
        await filtered.wait_for(lambda f: sorted(f["n"].to_list()) == [1, 4])
        assert not any(v.closed for v in (plain, ordered, grouped, by_u, filtered))
        await room.sync()
        assert room.frame["u"][0] == 2**64 - 2  # coframe's own payloads keep the exact value


# ---------------------------------------------------------------- the views process


async def test_the_registry_owns_the_views_process_and_stops_it(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(10)}) as srv, connect(srv.url, "sales") as room:
        views = srv.registry.views
        assert isinstance(views, LiveViews)
        assert views.process.pid is None  # started on first need
        await room.subscribe_view(**SUM)
        assert isinstance(srv.room().views, RoomViews)
        assert srv.room().views.process is views.process
        pid = views.process.pid
        assert pid is not None and pid != os.getpid()
        proc = psutil.Process(pid)
        assert proc.is_running() and proc.ppid() == os.getpid()
    assert views.process.pid is None
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


async def test_a_room_without_views_answers_subscribe() -> None:
    room = _room()
    t = FakeTransport()
    s = room.join(Hello("c"), t, binary=True)
    room.submit(s, Subscribe("v", {}, id=5))
    _, err = await asyncio.wait_for(t.next_of("error"), timeout(10))
    assert getattr(err, "re", None) == 5 and getattr(err, "code", None) == "bad_view"
    await room.close()
