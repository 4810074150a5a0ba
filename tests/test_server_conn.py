"""The server's sans-I/O connection core, driven by hand: frames and a fake clock in, events out.

No event loop, no sockets: each test feeds frames to a ServerConnection with
the time, and reads the events and close decisions it makes (PROTOCOL.md
sections 2 and 10).
"""

from __future__ import annotations

from typing import Any

import pytest

from protocol import Error, ErrorCode, Pong, encode_map
from protocol import lifecycle as lc
from protocol.lifecycle import IllegalTransition
from protocol.server_conn import (
    CloseNeeded,
    ConnectionLimits,
    HelloReceived,
    MessageReceived,
    ReplyNeeded,
    ServerConnection,
    TokenBucket,
)

LIMITS = ConnectionLimits(max_message_bytes=1024, ops_per_second=1.0, ops_burst=3, hello_timeout=10.0)


def frame(d: dict[str, Any], binary: bool = True) -> bytes | str:
    return encode_map(d, binary=binary)


def hello(client: str = "c1", version: int = 1, binary: bool = True) -> bytes | str:
    return frame({"type": "hello", "id": 0, "client": client, "version": version}, binary)


def op(cs: int) -> bytes | str:
    return frame(
        {"type": "op", "id": cs, "client_seq": cs, "base_seq": 0, "ops": [{"op": "delete", "rows": [0]}]}
    )


def joined(now: float = 0.0, binary: bool = True) -> ServerConnection:
    conn = ServerConnection(LIMITS, now)
    conn.receive_frame(hello(binary=binary), now)
    [ev] = conn.events_received()
    assert isinstance(ev, HelloReceived) and ev.binary is binary and ev.hello.client == "c1"
    assert conn.state == "joining"
    conn.joined()
    assert conn.state == "joined"
    return conn


def only_error(events: list[Any]) -> Error:
    [ev] = events
    assert isinstance(ev, ReplyNeeded) and isinstance(ev.msg, Error)
    return ev.msg


def test_hello_then_messages_flow_to_the_room() -> None:
    conn = joined()
    conn.receive_frame(op(1), 0.0)
    conn.receive_frame(frame({"type": "presence", "state": {"x": 1}}), 0.0)
    events = conn.events_received()
    assert [type(e) for e in events] == [MessageReceived, MessageReceived]
    assert events[0].msg.type == "op" and events[0].msg.client_seq == 1
    assert events[1].msg.type == "presence"
    assert conn.events_received() == []


@pytest.mark.parametrize("binary", [True, False])
def test_ping_is_answered_by_the_connection_in_the_hello_envelope(binary: bool) -> None:
    conn = joined(binary=binary)
    conn.receive_frame(frame({"type": "ping", "id": "p"}, binary=True), 0.0)
    [ev] = conn.events_received()
    assert ev == ReplyNeeded(Pong("p"), binary)


def test_message_before_hello_is_not_joined_then_close_1008() -> None:
    conn = ServerConnection(LIMITS, 0.0)
    conn.receive_frame(op(5), 0.0)
    reply, close = conn.events_received()
    assert isinstance(reply, ReplyNeeded) and reply.binary is True
    assert reply.msg == Error(ErrorCode.NOT_JOINED, "'op' not allowed now: send 'hello' first", re=5)
    assert close == CloseNeeded(1008, "send 'hello' first")
    assert conn.state == "closed" and (conn.close_code, conn.close_reason) == (1008, "send 'hello' first")
    conn.receive_frame(hello(), 0.0)  # after the close decision frames are discarded
    assert conn.events_received() == [] and conn.hello_deadline is None


def test_ping_before_hello_is_a_violation_too() -> None:
    conn = ServerConnection(LIMITS, 0.0)
    conn.receive_frame(frame({"type": "ping", "id": 1}, binary=False), 0.0)
    reply, close = conn.events_received()
    assert isinstance(reply, ReplyNeeded) and reply.binary is False and reply.msg.code == "not_joined"
    assert isinstance(close, CloseNeeded) and close.code == 1008


def test_second_hello_is_already_joined_then_close_1008() -> None:
    conn = joined()
    conn.receive_frame(hello(), 0.0)
    reply, close = conn.events_received()
    assert isinstance(reply, ReplyNeeded)
    assert reply.msg == Error(
        ErrorCode.ALREADY_JOINED, "'hello' not allowed now: only one 'hello' per connection", re=0
    )
    assert close == CloseNeeded(1008, "only one 'hello' per connection")


def test_wrong_protocol_version_is_bad_version_then_close_1008() -> None:
    conn = ServerConnection(LIMITS, 0.0)
    conn.receive_frame(hello(version=99, binary=False), 0.0)
    reply, close = conn.events_received()
    assert isinstance(reply, ReplyNeeded) and reply.binary is False
    assert reply.msg.code == "bad_version" and reply.msg.re == 0 and "99" in reply.msg.message
    assert isinstance(close, CloseNeeded) and close.code == 1008 and "not supported" in close.reason
    assert conn.state == "closed"


@pytest.mark.parametrize("before_hello", [True, False])
def test_too_large_is_an_error_and_the_connection_stays_up(before_hello: bool) -> None:
    conn = ServerConnection(LIMITS, 0.0) if before_hello else joined()
    big = frame({"type": "presence", "state": {"x": "y" * 2000}})
    conn.receive_frame(big, 0.0)
    err = only_error(conn.events_received())
    assert err.code == "too_large" and err.details == {"limit": 1024, "size": len(big)}
    assert "split the op" in err.message
    assert conn.state == ("connected" if before_hello else "joined")


@pytest.mark.parametrize(
    ("data", "code", "field", "re"),
    [
        (b"\xc1\xff garbage", "bad_frame", None, None),
        ("{not json", "bad_frame", None, None),
        (frame({"type": "launch", "id": 3}), "unknown_type", "type", 3),
        (frame({"type": "op", "id": 7, "client_seq": 1, "base_seq": 0, "ops": []}), "bad_field", "ops", 7),
    ],
)
def test_decode_errors_name_the_field_and_keep_the_connection(
    data: bytes | str, code: str, field: str | None, re: Any
) -> None:
    for conn in (ServerConnection(LIMITS, 0.0), joined()):
        state = conn.state
        conn.receive_frame(data, 0.0)
        err = only_error(conn.events_received())
        assert err.code == code and err.re == re and err.message
        assert err.details.get("field") == field
        assert conn.state == state


def test_rate_limit_follows_the_callers_clock() -> None:
    conn = joined(now=100.0)
    for cs in range(1, 6):  # a burst of 3, then 2 refused, all at the same instant
        conn.receive_frame(op(cs), 100.0)
    events = conn.events_received()
    assert [type(e) for e in events] == [MessageReceived] * 3 + [ReplyNeeded] * 2
    assert [e.msg.code for e in events[3:]] == ["rate_limited", "rate_limited"]
    assert [e.msg.re for e in events[3:]] == [4, 5]
    assert "over 1 op messages per second" in events[3].msg.message
    # Ping and presence are not counted.
    conn.receive_frame(frame({"type": "ping", "id": 1}), 100.0)
    conn.receive_frame(frame({"type": "undo", "id": 9, "client_seq": 9}), 100.0)
    pong, limited = conn.events_received()
    assert isinstance(pong.msg, Pong) and limited.msg.code == "rate_limited"
    conn.receive_frame(op(10), 101.0)  # one second later: one token back
    conn.receive_frame(op(11), 101.0)
    ok, refused = conn.events_received()
    assert isinstance(ok, MessageReceived) and refused.msg.code == "rate_limited"


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=2, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert bucket.take(100.0) and bucket.take(100.0) and not bucket.take(100.0)  # capped at the burst
    assert not bucket.take(99.0)  # a clock that goes back adds nothing


def test_hello_deadline_closes_1008_and_ends_with_the_hello() -> None:
    conn = ServerConnection(LIMITS, 50.0)
    assert conn.hello_deadline == 60.0
    conn.tick(59.9)
    assert conn.events_received() == []
    conn.receive_frame(b"\xc1", 55.0)  # a bad frame does not move the deadline
    conn.events_received()
    assert conn.hello_deadline == 60.0
    conn.tick(60.0)
    assert conn.events_received() == [CloseNeeded(1008, "no hello within 10s")]
    assert conn.state == "closed"

    late = joined(now=50.0)
    assert late.hello_deadline is None
    late.tick(1000.0)
    assert late.events_received() == [] and late.state == "joined"


def test_fail_replies_in_the_hello_envelope_and_closes_once() -> None:
    conn = ServerConnection(LIMITS, 0.0)
    conn.receive_frame(hello(binary=False), 0.0)
    conn.events_received()
    err = Error(ErrorCode.BAD_FIELD, "no branch 'x'", re=0)
    conn.fail(4004, "no branch 'x' in dataset " + "d" * 200, err)
    reply, close = conn.events_received()
    assert reply == ReplyNeeded(err, False)
    assert isinstance(close, CloseNeeded) and close.code == 4004 and len(close.reason) == 120
    conn.fail(1011, "again")
    assert conn.events_received() == [] and conn.close_code == 4004


def test_the_table_is_consulted_for_local_events() -> None:
    conn = ServerConnection(LIMITS, 0.0)
    with pytest.raises(IllegalTransition) as e:
        conn.joined()  # no hello is waiting
    assert e.value.code is None and e.value.state == "connected" and e.value.event == "joined"
    conn.receive_frame(hello(), 0.0)
    with pytest.raises(IllegalTransition):
        conn.receive_frame(op(1), 0.0)  # the driver must answer the hello first
    conn.joined()
    with pytest.raises(IllegalTransition):
        conn.joined()


def test_the_table_drives_peer_events(monkeypatch: pytest.MonkeyPatch) -> None:
    # Take "message in joined" out of the table and name it a violation: the
    # connection now refuses ops after the join, so the table is what decides.
    monkeypatch.delitem(lc.CONNECTION, ("joined", "message"))
    monkeypatch.setitem(lc.CONNECTION_VIOLATIONS, ("joined", "message"), ErrorCode.NOT_JOINED)
    conn = joined()
    conn.receive_frame(op(1), 0.0)
    reply, close = conn.events_received()
    assert isinstance(reply, ReplyNeeded) and reply.msg.code == "not_joined"
    assert isinstance(close, CloseNeeded) and close.code == 1008
    # And an event that is neither legal nor a named violation is the driver's bug.
    monkeypatch.delitem(lc.CONNECTION_VIOLATIONS, ("joined", "message"))
    other = joined()
    with pytest.raises(IllegalTransition) as e:
        other.receive_frame(op(2), 0.0)
    assert e.value.code is None


def test_every_violation_is_a_coded_close() -> None:
    for (state, event), code in lc.CONNECTION_VIOLATIONS.items():
        assert (state, event) not in lc.CONNECTION
        with pytest.raises(IllegalTransition) as e:
            lc.next_state(lc.CONNECTION, state, event, machine="t", violations=lc.CONNECTION_VIOLATIONS)
        assert e.value.code == code
