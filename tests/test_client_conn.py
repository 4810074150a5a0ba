"""The client's sans-I/O connection core, driven by hand: server messages in, events and frames out.

No event loop, no sockets (PROTOCOL.md sections 7 and 8): pending requests,
unacked batches resent on each welcome in client_seq order and before new
sends, dropped requests on a lost socket, and dispatch into events.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from protocol import (
    Ack,
    Commit,
    Committed,
    Delta,
    Error,
    Hello,
    OpBatch,
    Ping,
    Pong,
    Presence,
    PresenceUpdate,
    Result,
    SetCells,
    Subscribe,
    Undo,
    View,
    Welcome,
    decode_client,
    encode,
)
from protocol.client_conn import Answered, ClientConnection, Dropped, Joined, Received, Rejected
from protocol.lifecycle import IllegalTransition

EMPTY = pa.table({"_rid": pa.array([], pa.uint64())})


def welcome(seq: int, *, resumed: bool = False, reason: str = "join") -> Welcome:
    snapshot = None if resumed else EMPTY
    return Welcome("sales/main", seq, "c1", (), snapshot, b"", resumed=resumed, reason=reason)


def batch(cs: int, base: int = 0) -> OpBatch:
    return OpBatch(cs, base, (SetCells((0,), "qty", (cs,)),), id=cs)


def sent(conn: ClientConnection) -> list[Any]:
    return [decode_client(f) for f in conn.data_to_send()]


def live(seq: int = 5) -> ClientConnection:
    conn = ClientConnection("c1", first_id=100, codecs=("zstd",))
    conn.connect()
    [h] = sent(conn)
    assert isinstance(h, Hello) and h.client == "c1" and h.since is None and h.codecs == ("zstd",)
    conn.receive_message(welcome(seq))
    [ev] = conn.events_received()
    assert isinstance(ev, Joined) and ev.load and not ev.resync and ev.welcome.seq == seq
    assert conn.live and conn.seq == seq and conn.base_seq == seq
    return conn


def test_batches_are_sent_when_live_and_answered_by_their_ack() -> None:
    conn = live()
    cs = conn.next_id()
    assert cs == 100 and conn.next_id() == 101
    conn.send_batch(batch(cs, conn.base_seq))
    [msg] = sent(conn)
    assert isinstance(msg, OpBatch) and msg.client_seq == cs and msg.base_seq == 5
    assert list(conn.unacked) == [cs]
    ack = Ack(seq=6, client_seq=cs, re=cs)
    conn.receive_message(ack)
    assert conn.events_received() == [Answered(cs, "op", ack)]
    assert conn.unacked == {} and conn.acked_seq == 6
    conn.receive_message(Ack(seq=7, client_seq=999))  # someone else's: only the acked seq moves
    assert conn.events_received() == [] and conn.acked_seq == 7


def test_unacked_batches_are_resent_on_welcome_in_order_before_new_sends() -> None:
    conn = ClientConnection("c1")
    conn.connect()
    conn.data_to_send()
    for cs in (7, 3, 5):  # sent before the welcome: held, not written
        conn.send_batch(batch(cs))
    conn.send_batch(Undo(4, 0, id=4))
    assert conn.data_to_send() == []
    conn.receive_message(welcome(1))
    conn.send_batch(batch(9))
    assert [m.client_seq for m in sent(conn)] == [3, 4, 5, 7, 9]
    assert [k for k, _ in conn.unacked.values()] == ["op", "op", "op", "undo", "op"]


def test_a_lost_socket_drops_requests_keeps_batches_and_resumes() -> None:
    conn = live(seq=5)
    conn.send_batch(batch(1))
    rid = conn.next_id()
    assert conn.send_request("commit", Commit("m", id=rid))
    sent(conn)
    conn.connection_lost()
    assert conn.events_received() == [Dropped(rid, "commit")]
    assert conn.pending == {} and list(conn.unacked) == [1] and not conn.live
    assert not conn.send_request("ping", Ping(conn.next_id()))  # not live: nothing sent
    assert not conn.send(Presence({"x": 1}))
    conn.connect()
    [h] = sent(conn)
    assert h.since == 5  # resume from the last applied seq
    assert conn.send(Presence({"x": 1}))  # presence may go before the welcome
    conn.receive_message(welcome(9, resumed=True, reason="resume"))
    [ev] = conn.events_received()
    assert isinstance(ev, Joined) and not ev.load and conn.seq == 5  # deltas 6..9 follow
    presence, again = sent(conn)
    assert isinstance(presence, Presence) and again.client_seq == 1
    conn.receive_message(Delta(5, 9, ("x",)))
    [d] = conn.events_received()
    assert isinstance(d, Received) and conn.seq == 9


def test_stale_deltas_are_dropped_and_a_second_snapshot_is_a_resync() -> None:
    conn = live(seq=5)
    conn.receive_message(Delta(4, 5, ("x",)))
    assert conn.events_received() == []
    conn.receive_message(welcome(20, reason="resync"))
    [ev] = conn.events_received()
    assert isinstance(ev, Joined) and ev.load and ev.resync and conn.seq == 20


def test_replies_settle_their_request_and_notifications_are_received() -> None:
    conn = live()
    ids = [conn.next_id() for _ in range(4)]
    assert conn.send_request("commit", Commit("m", id=ids[0]))
    assert conn.send_request("query", Commit("q", id=ids[1]))
    assert conn.send_request("ping", Ping(ids[2]))
    assert conn.send_request("subscribe", Subscribe("v1", {}, None, id=ids[3]))
    assert conn.pending == dict(zip(ids, ["commit", "query", "ping", "subscribe"], strict=True))
    done = Committed("abc", 5, 10, "m", "me", 0.0, re=ids[0])
    mine = Result("log", re=ids[1])
    pong = Pong(ids[2])
    view = View("v1", "snapshot", 5, 0, re=ids[3])
    for msg in (done, mine, pong, view):
        conn.receive_message(msg)
    assert conn.events_received() == [
        Received(done),
        Answered(ids[0], "commit", done),
        Answered(ids[1], "query", mine),
        Answered(ids[2], "ping", pong),
        Received(view),
        Answered(ids[3], "subscribe", view),
    ]
    assert conn.pending == {}
    other = Committed("def", 6, 10, "autocommit", "coframe", 0.0)  # someone else's commit
    update = PresenceUpdate(b"", {"c2": {"x": 1}})
    conn.receive_message(other)
    conn.receive_message(update)
    conn.receive_message(Pong("unknown"))  # nobody waits for it
    assert conn.events_received() == [Received(other), Received(update)]


def test_errors_go_to_the_request_or_batch_they_answer() -> None:
    conn = live()
    conn.send_batch(batch(1))
    assert conn.send_request("resubscribe", Subscribe("v1", {}, None, id="resubscribe:v1"))
    rid = conn.next_id()
    assert conn.send_request("query", Commit("q", id=rid))
    bad_op = Error("bad_value", "no", re=1)
    bad_view = Error("no_such_column", "gone", re="resubscribe:v1")
    bad_query = Error("not_found", "no", re=rid)
    loose = Error("internal", "hm")
    for e in (bad_op, bad_view, bad_query, loose):
        conn.receive_message(e)
    assert conn.events_received() == [
        Rejected(1, "op", bad_op),
        Rejected("resubscribe:v1", "resubscribe", bad_view),
        Rejected(rid, "query", bad_query),
        Received(loose),
    ]
    assert conn.unacked == {} and conn.pending == {}


def test_receive_frame_decodes() -> None:
    conn = live()
    conn.receive_frame(encode(Delta(5, 6, ("x",)), binary=False))
    [ev] = conn.events_received()
    assert isinstance(ev, Received) and ev.msg.seq_to == 6


def test_the_client_table_is_consulted() -> None:
    conn = ClientConnection("c1")
    with pytest.raises(IllegalTransition) as e:
        conn.receive_message(Delta(0, 1, ()))  # no socket open
    assert e.value.state == "disconnected" and e.value.event == "message"
    with pytest.raises(IllegalTransition):
        conn.connection_lost()
    conn.connect()
    with pytest.raises(IllegalTransition):
        conn.connect()  # one socket at a time
    conn.receive_message(welcome(1))
    conn.events_received()
    conn.send_batch(batch(1))
    conn.close()
    assert conn.state == "closed" and conn.unacked == {} and conn.data_to_send() == []
    conn.receive_message(Delta(1, 2, ()))  # a late frame from the socket being torn down
    conn.connection_lost()
    assert conn.events_received() == [] and conn.seq == 1
    with pytest.raises(IllegalTransition):
        conn.connect()
