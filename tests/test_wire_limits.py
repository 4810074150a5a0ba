"""Bounded cost per request on the wire (issue 10; PROTOCOL.md section 10).

The connection core (protocol/server_conn.py) is driven by hand with frames
and a fake clock: request ids, the soft size limit in bytes, rows per op and
per message, tables' decompressed bytes (read from the Arrow IPC metadata,
before anything is decompressed), big tables built off the loop, presence
and meta sizes. The metadata doc (server/rooms/metadoc.py) is bounded and
compacted. Then the same limits over a real socket, in-process.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pycrdt
import pytest
from pycrdt import Array, Doc, Map

from protocol import Error, Insert, Pong, SetCells, encode, encode_map, table_to_ipc
from protocol.costs import materialized_bytes
from protocol.ipcmeta import ipc_info
from protocol.lifecycle import IllegalTransition
from protocol.server_conn import (
    ConnectionLimits,
    DecodeNeeded,
    HelloReceived,
    MessageReceived,
    ReplyNeeded,
    ServerConnection,
)
from server.ops.state import Catalog, Column, OpError
from server.rooms.metadoc import MetaDoc
from server.rooms.tick import check_limits
from server.settings import Settings
from tests.conftest import LiveServer
from tests.wire import RawPeer

MB = 1024 * 1024
LIMITS = ConnectionLimits(
    max_message_bytes=MB,
    max_rows_per_op=1000,
    max_rows_per_message=1500,
    max_decompressed_bytes=MB,
    max_presence_bytes=1024,
    max_meta_bytes=512,
)


def joined(limits: ConnectionLimits = LIMITS, binary: bool = True) -> ServerConnection:
    conn = ServerConnection(limits, 0.0)
    conn.receive_frame(
        encode_map({"type": "hello", "id": 0, "client": "c", "version": 1}, binary=binary), 0.0
    )
    [ev] = conn.events_received()
    assert isinstance(ev, HelloReceived)
    conn.joined()
    return conn


def only_error(conn: ServerConnection) -> Error:
    [ev] = conn.events_received()
    assert isinstance(ev, ReplyNeeded) and isinstance(ev.msg, Error), ev
    return ev.msg


def op_frame(*ops: dict[str, Any], cs: int = 1, binary: bool = True) -> bytes | str:
    return encode_map(
        {"type": "op", "id": cs, "client_seq": cs, "base_seq": 0, "ops": list(ops)}, binary=binary
    )


def zstd_rows(n: int, **columns: Any) -> bytes:
    """An Arrow IPC stream of ``n`` rows, zstd-compressed: a few hundred bytes whatever ``n``."""
    cols = columns or {"qty": np.zeros(n, dtype=np.int64)}
    return table_to_ipc(pa.table(cols), compression="zstd")


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any Arrow IPC payload is decompressed or decoded."""

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("a table was decoded for a request over a limit")

    monkeypatch.setattr("protocol.arrow.table_from_ipc", refuse)


# ---------------------------------------------------------------- request ids


@pytest.mark.parametrize(
    ("rid", "binary"),
    [(2**63, True), (2**64 - 1, True), (-(2**63) - 1, False), (10**30, False), (-(10**30), False),
     ("x" * 257, True), (1.5, False), ([1], True), (True, False)],
)  # fmt: skip
def test_a_request_id_that_is_not_int64_or_a_short_string_is_bad_field(rid: Any, binary: bool) -> None:
    conn = joined(binary=binary)
    for kind in ("ping", "op", "nope"):
        conn.receive_frame(encode_map({"type": kind, "id": rid}, binary=binary), 0.0)
        err = only_error(conn)
        assert err.re is None  # never echoed: it could not be encoded back
        assert err.code == ("unknown_type" if kind == "nope" else "bad_field")
        if kind != "nope":
            assert err.details["field"] == "id" and "64-bit integer" in err.message
        encode(err, binary=binary)  # the reply can be sent in the connection's envelope
    conn.receive_frame(encode_map({"type": "ping", "id": 2**63 - 1}, binary=binary), 0.0)
    [ev] = conn.events_received()
    assert isinstance(ev, ReplyNeeded) and ev.msg == Pong(2**63 - 1) and conn.state == "joined"


# ---------------------------------------------------------------- the soft size limit counts bytes


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_the_soft_limit_counts_a_text_frames_utf8_bytes(char: str) -> None:
    limits = dataclasses.replace(LIMITS, max_message_bytes=1024, max_presence_bytes=10 * MB)
    conn = joined(limits, binary=False)
    text = json.dumps({"type": "presence", "state": {"x": char * 600}}, ensure_ascii=False)
    assert len(text) <= 1024 < len(text.encode())
    conn.receive_frame(text, 0.0)
    err = only_error(conn)
    assert err.code == "too_large" and err.details == {"limit": 1024, "size": len(text.encode())}
    ascii_text = json.dumps({"type": "presence", "state": {"x": "a" * 600}})
    conn.receive_frame(ascii_text, 0.0)
    [ev] = conn.events_received()
    assert isinstance(ev, MessageReceived)


# ---------------------------------------------------------------- rows per op and per message


def test_rows_across_the_ops_of_a_message_are_refused_before_decoding(no_decoding: None) -> None:
    conn = joined()
    inserts = [{"op": "insert", "rows": zstd_rows(1000)} for _ in range(5)]
    frame = op_frame(*inserts, cs=7)
    assert len(frame) < 4096  # 5,000 rows in a few KB
    conn.receive_frame(frame, 0.0)
    err = only_error(conn)
    assert err.code == "too_large" and err.re == 7
    assert err.details == {"field": "ops", "limit": 1500, "rows": 5000}
    assert "rows per message" in err.message


def test_a_sets_and_a_deletes_rows_count_too() -> None:
    conn = joined(binary=False)
    sets = [{"op": "set", "rows": list(range(800)), "col": "qty", "values": 1} for _ in range(2)]
    conn.receive_frame(op_frame(*sets, binary=False), 0.0)
    assert only_error(conn).details["rows"] == 1600
    conn.receive_frame(op_frame(sets[0], {"op": "delete", "rows": list(range(701))}, binary=False), 0.0)
    assert only_error(conn).details["rows"] == 1501
    conn.receive_frame(op_frame(sets[0], {"op": "delete", "rows": list(range(700))}, binary=False), 0.0)
    [ev] = conn.events_received()
    assert isinstance(ev, MessageReceived)


def test_the_per_op_limit_is_kept(no_decoding: None) -> None:
    conn = joined()
    conn.receive_frame(op_frame({"op": "set", "rows": [0], "col": "q", "values": 1},
                                {"op": "insert", "rows": zstd_rows(1001)}), 0.0)  # fmt: skip
    err = only_error(conn)
    assert err.code == "too_large" and err.details["op_index"] == 1 and err.message.startswith("ops[1]:")
    assert "rows per op" in err.message


# ---------------------------------------------------------------- decompressed bytes


def test_a_zstd_bomb_is_refused_before_decompressing(no_decoding: None) -> None:
    conn = joined(dataclasses.replace(LIMITS, max_rows_per_op=10**9, max_rows_per_message=10**9))
    bomb = zstd_rows(300_000)  # 2.4 MB of zeros once decompressed
    assert len(bomb) < 4096
    conn.receive_frame(op_frame({"op": "insert", "rows": bomb}), 0.0)
    err = only_error(conn)
    assert err.code == "too_large" and err.details["size"] >= 300_000 * 8 and err.details["limit"] == MB


def test_ipc_info_reads_what_the_stream_declares() -> None:
    table = pa.table({"a": np.arange(10_000), "s": ["x" * 20] * 10_000})
    plain = sum(b.size for c in table.columns for ch in c.chunks for b in ch.buffers() if b is not None)
    for codec in (None, "zstd", "lz4"):
        info = ipc_info(table_to_ipc(table, codec))
        assert (info.rows, info.bytes, info.compressed) == (10_000, plain, codec is not None)
    two = pa.Table.from_batches(table.slice(0, 3).to_batches() + table.slice(3, 4).to_batches())
    assert ipc_info(table_to_ipc(two, "zstd")).rows == 7
    data = table_to_ipc(table, "zstd")
    for cut in (3, 9, 100, len(data) // 2):
        with pytest.raises(Exception) as e:
            ipc_info(data[:cut], "ops[0].rows")
        assert getattr(e.value, "code", None) == "bad_field" and e.value.details["field"] == "ops[0].rows"


def test_big_tables_are_built_off_the_loop() -> None:
    conn = joined(dataclasses.replace(LIMITS, max_rows_per_op=10**6, max_rows_per_message=10**6))
    conn.receive_frame(op_frame({"op": "insert", "rows": zstd_rows(100_000)}), 0.0)  # 800 KB decompressed
    [ev] = conn.events_received()
    assert isinstance(ev, DecodeNeeded)  # nothing decompressed yet: the driver runs it in a thread
    with pytest.raises(IllegalTransition):
        conn.receive_frame(encode_map({"type": "ping"}), 0.0)
    with pytest.raises(IllegalTransition):
        conn.decoded(dataclasses.replace(ev), ev.run(), 0.0)  # not the decode it waits for
    conn.decoded(ev, ev.run(), 0.0)
    [received] = conn.events_received()
    assert isinstance(received, MessageReceived)
    [insert] = received.msg.ops
    assert isinstance(insert, Insert) and insert.rows.num_rows == 100_000
    conn.receive_frame(op_frame({"op": "insert", "rows": zstd_rows(10)}), 0.0)  # small: built inline
    [small] = conn.events_received()
    assert isinstance(small, MessageReceived)


@pytest.mark.parametrize(("rows", "width"), [(3000, 1), (100, 5000)])
def test_big_json_tables_are_built_off_the_loop_too(rows: int, width: int) -> None:
    conn = joined(
        dataclasses.replace(LIMITS, max_rows_per_op=10**6, max_rows_per_message=10**6), binary=False
    )
    table = [{"name": "x" * width} for _ in range(rows)]  # many rows, or a big frame
    conn.receive_frame(op_frame({"op": "insert", "rows": table}, binary=False), 0.0)
    [ev] = conn.events_received()
    assert isinstance(ev, DecodeNeeded)
    conn.decoded(ev, ev.run(), 0.0)
    [received] = conn.events_received()
    assert isinstance(received, MessageReceived) and received.msg.ops[0].rows.num_rows == rows


def test_a_bad_table_built_off_the_loop_is_bad_field() -> None:
    conn = joined(dataclasses.replace(LIMITS, max_rows_per_op=10**6, max_rows_per_message=10**6))
    data = bytearray(zstd_rows(100_000))
    data[-20:-12] = b"\xff" * 8  # garble the compressed body
    conn.receive_frame(op_frame({"op": "insert", "rows": bytes(data)}, cs=3), 0.0)
    [ev] = conn.events_received()
    assert isinstance(ev, DecodeNeeded)
    conn.decoded(ev, ev.run(), 0.0)
    err = only_error(conn)
    assert err.code == "bad_field" and err.re == 3 and err.details["field"] == "ops[0].rows"


def test_dictionaries_and_views_count_with_every_value_written_out() -> None:
    big = "x" * (64 * 1024)
    dictionary = pa.DictionaryArray.from_arrays(pa.array(np.zeros(100, dtype=np.int32)), pa.array([big]))
    views = pa.array([big] * 3, type=pa.string_view())
    assert materialized_bytes(pa.table({"d": dictionary})) >= 100 * len(big)
    assert materialized_bytes(pa.table({"v": views})) >= 3 * len(big)
    conn = joined()
    payload = table_to_ipc(pa.table({"name": dictionary}), compression="zstd")
    assert ipc_info(payload).bytes < MB  # what the buffers declare is small...
    conn.receive_frame(op_frame({"op": "insert", "rows": payload}, cs=4), 0.0)
    err = only_error(conn)  # ...what the values take is not
    assert err.code == "too_large" and err.re == 4 and err.details["size"] >= 100 * len(big)
    ree = pa.RunEndEncodedArray.from_arrays([100], ["a"])
    conn.receive_frame(op_frame({"op": "insert", "rows": table_to_ipc(pa.table({"name": ree}))}), 0.0)
    assert only_error(conn).code == "bad_field"


# ---------------------------------------------------------------- presence and meta


def test_presence_over_its_limit_counts_the_json_the_awareness_update_carries() -> None:
    conn = joined()
    conn.receive_frame(encode_map({"type": "presence", "id": 1, "state": {"n": "é" * 600}}), 0.0)
    err = only_error(conn)  # 600 characters, 1,200 bytes of UTF-8
    assert (
        err.code == "too_large" and err.re == 1 and err.details == {"limit": 1024, "size": 1208}
    )  # {"n":"..."}
    conn.receive_frame(encode_map({"type": "presence", "state": {"n": "a" * 900}}), 0.0)
    conn.receive_frame(encode_map({"type": "presence", "state": None}), 0.0)
    assert [type(e) for e in conn.events_received()] == [MessageReceived, MessageReceived]


def test_a_meta_update_over_its_limit_is_too_large() -> None:
    conn = joined()
    conn.receive_frame(encode_map({"type": "meta", "id": 2, "update": b"\x00\x02" + b"\x00" * 600}), 0.0)
    err = only_error(conn)
    assert err.code == "too_large" and err.re == 2 and err.details == {"limit": 512, "size": 602}
    conn.receive_frame(encode_map({"type": "meta", "update": b"\x00\x02\x02\x00\x00"}), 0.0)
    [ev] = conn.events_received()
    assert isinstance(ev, MessageReceived)


# ---------------------------------------------------------------- the metadata doc


CATALOG = Catalog((Column(1, "name", "String"), Column(2, "qty", "Int64")), 3)


def client_doc(meta: MetaDoc) -> Doc:
    d = Doc()
    d.apply_update(meta.state())
    return d


def edit(doc: Doc, change: Any) -> bytes:
    """A y-websocket update message for what ``change(doc)`` does."""
    before = doc.get_state()
    change(doc)
    return pycrdt.create_update_message(doc.get_update(before))


def describe(col: str, text: str) -> Any:
    return lambda d: d.get("columns", type=Map)[col].__setitem__("description", text)


def test_the_meta_doc_is_compacted_and_its_size_stays_bounded() -> None:
    meta = MetaDoc(CATALOG, max_bytes=32 * 1024)
    doc, compactions = client_doc(meta), 0
    for i in range(200):  # 200 KB of history for a 1 KB description
        out = meta.handle(edit(doc, describe("1", f"{i}:" + "d" * 1000)))
        if out.compacted is not None:
            compactions += 1
            assert not out.compacted.dropped and out.relay is None
            doc = client_doc(meta)  # the client replaces its doc (the room sends it in a resync)
        assert len(meta.state()) <= 32 * 1024 + 2048
    assert compactions >= 5 and meta.compactions == compactions
    fresh = client_doc(meta)
    assert fresh.get("columns", type=Map)["1"]["description"] == "199:" + "d" * 1000
    assert [str(x) for x in fresh.get("order", type=Array)] == ["1", "2"]


def test_compaction_drops_other_types_and_descriptions_over_half_the_limit() -> None:
    meta = MetaDoc(CATALOG, max_bytes=16 * 1024)
    doc = client_doc(meta)
    meta.handle(edit(doc, describe("2", "short")))
    meta.handle(edit(doc, lambda d: d.get("notes", type=pycrdt.Text).insert(0, "n" * 2000)))
    out = meta.handle(edit(doc, describe("1", "L" * 15_000)))
    assert out.compacted is not None and out.compacted.roots == ("notes",)
    assert out.compacted.descriptions == ("name",) and "name" in out.compacted.why(16 * 1024)
    fresh = client_doc(meta)
    assert fresh.get("columns", type=Map)["1"]["description"] == ""
    assert fresh.get("columns", type=Map)["2"]["description"] == "short"
    assert len(meta.state()) < 8 * 1024


def test_read_only_parts_are_written_back_and_the_rest_is_kept() -> None:
    meta = MetaDoc(CATALOG)
    doc = client_doc(meta)

    def rename_and_describe(d: Doc) -> None:
        cols = d.get("columns", type=Map)
        cols["1"]["name"] = "hijacked"
        cols["2"]["description"] = "how many"
        cols["9"] = Map({"name": "extra", "dtype": "Int64"})

    out = meta.handle(edit(doc, rename_and_describe))
    assert out.refused is not None and "rename_column" in out.refused and out.relay is not None
    doc.apply_update(pycrdt.read_message(out.relay[2:]))  # the correction comes back as a sync update
    for d in (doc, client_doc(meta)):
        cols = d.get("columns", type=Map)
        assert cols["1"]["name"] == "name" and cols["2"]["description"] == "how many" and "9" not in cols
    out = meta.handle(edit(doc, describe("1", "ok")))
    assert out.refused is None and out.relay is not None


def test_updates_that_wait_for_missing_changes_still_count() -> None:
    meta = MetaDoc(CATALOG, max_bytes=16 * 1024)
    other = Doc()
    text = other.get("t", type=pycrdt.Text)
    text.insert(0, "seed")
    compacted = False
    for _ in range(40):  # each depends on the one before, which the server never gets
        before = other.get_state()
        text.insert(len(str(text)), "p" * 1000)
        out = meta.handle(pycrdt.create_update_message(other.get_update(before)))
        assert out.relay is None  # nothing integrated, nothing relayed
        compacted = compacted or out.compacted is not None
    assert compacted and meta.base + meta.grown <= 16 * 1024 + 2048


def test_a_bad_state_vector_is_bad_field() -> None:
    meta = MetaDoc(CATALOG)
    with pytest.raises(Exception) as e:
        meta.handle(b"\x00\x00\x05\xff\xff\xff\xff\xff")
    assert getattr(e.value, "code", None) == "bad_field"


# ---------------------------------------------------------------- over a real socket


async def still_up(peer: RawPeer) -> None:
    await peer.send({"type": "ping", "id": "alive"})
    assert (await peer.recv_until("pong")).re == "alive"


@pytest.mark.parametrize("binary", [True, False])
async def test_an_id_outside_int64_gets_bad_field_and_the_socket_stays_up(
    server: LiveServer, binary: bool
) -> None:
    peer = await RawPeer.open(server.url, binary=binary)
    await peer.hello("ids")
    big = 2**64 - 1 if binary else 10**30
    for kind in ("op", "ping", "presence"):
        if binary:
            await peer.send({"type": kind, "id": big})
        else:
            await peer.send_raw(json.dumps({"type": kind, "id": big}))
        err = await peer.recv_until("error")
        assert err.code == "bad_field" and err.re is None and err.details["field"] == "id"
    await still_up(peer)
    await peer.close()


async def test_limits_over_the_socket(make_server: Any) -> None:
    settings = Settings(demo=False, max_message_bytes=64 * 1024, max_presence_bytes=4096,
                        max_decompressed_bytes=8 * MB)  # fmt: skip
    async with make_server(settings) as srv:
        watcher = await RawPeer.open(srv.url)
        welcome = await watcher.hello("watcher")
        assert (
            welcome.limits["max_rows_per_message"] == 1_000_000
            and welcome.limits["max_presence_bytes"] == 4096
        )
        peer = await RawPeer.open(srv.url, binary=False)
        await peer.hello("text")
        before = srv.room().core.state.frame
        # 30,000 characters, 90,000 bytes: over the 64 KiB limit.
        await peer.send_raw(
            json.dumps({"type": "presence", "state": {"x": "€" * 30_000}}, ensure_ascii=False)
        )
        assert (await peer.recv_until("error")).code == "too_large"
        await peer.send({"type": "presence", "id": 5, "state": {"x": "é" * 3000}})  # 6,000 bytes
        assert (await peer.recv_until("error", re=5)).code == "too_large"
        await peer.send({"type": "presence", "state": {"x": "ok"}})
        seen = await watcher.recv_until("presence")
        assert seen.states == {"text": {"x": "ok"}}  # the refused states were never relayed
        bin_peer = await RawPeer.open(srv.url)
        await bin_peer.hello("binary")
        inserts = [{"op": "insert", "rows": zstd_rows(1_000_000)} for _ in range(5)]
        await bin_peer.send_raw(op_frame(*inserts, cs=1))
        err = await bin_peer.recv_until("error", re=1)
        assert err.code == "too_large" and err.details["rows"] == 5_000_000
        wide = zstd_rows(600_000, qty=np.zeros(600_000, dtype=np.int64), price=np.zeros(600_000))
        await bin_peer.send_raw(op_frame({"op": "insert", "rows": wide}, cs=2))  # 9.6 MB decompressed
        assert (await bin_peer.recv_until("error", re=2)).details["limit"] == 8 * MB
        assert srv.room().core.state.frame.equals(before)
        # 1.6 MB once decompressed: built in a worker thread, then applied.
        await bin_peer.send_raw(op_frame({"op": "insert", "rows": zstd_rows(200_000)}, cs=3))
        ack = await bin_peer.recv_until("ack", re=3)
        assert len(ack.rids) == 200_000 and srv.room().core.state.frame.height == before.height + 200_000
        for p in (watcher, peer, bin_peer):
            await still_up(p)
            await p.close()


async def test_meta_flooding_compacts_the_doc_and_resyncs_every_client(make_server: Any) -> None:
    limit = 32 * 1024
    async with make_server(Settings(demo=False, max_meta_doc_bytes=limit)) as srv:
        flooder, other = await RawPeer.open(srv.url), await RawPeer.open(srv.url)
        doc = Doc()
        doc.apply_update((await flooder.hello("flooder")).meta)
        await other.hello("other")
        col = next(iter(doc.get("order", type=Array)))
        for i in range(100):  # 100 KB of history
            await flooder.send({"type": "meta", "update": edit(doc, describe(col, f"{i}" + "m" * 1000))})
            await flooder.send({"type": "ping", "id": i})
            await flooder.recv_until("pong", re=i)
            resync = [m for m in flooder.seen if m.type == "welcome" and m.reason == "resync"]
            if resync:  # the doc was compacted: replace ours, as a client must
                doc = Doc()
                doc.apply_update(resync[-1].meta)
                flooder.seen.clear()
        w = await other.recv_until("welcome", reason="resync")
        assert w.resumed and w.snapshot is None  # the frame stays; only the doc is new
        fresh = await RawPeer.open(srv.url)
        welcome = await fresh.hello("late")
        assert len(welcome.meta) <= limit + 2048
        desc = Doc()
        desc.apply_update(welcome.meta)
        assert desc.get("columns", type=Map)[col]["description"] == "99" + "m" * 1000
        for p in (flooder, other, fresh):
            await still_up(p)
            await p.close()


def test_the_room_checks_rows_per_message_too() -> None:
    """The tick's own guard (an op message that did not come through the connection core)."""
    sets = tuple(SetCells(tuple(range(8)), "qty", (1,) * 8) for _ in range(3))
    check_limits(sets, 10, 24)
    with pytest.raises(OpError) as e:
        check_limits(sets, 10, 20)
    assert e.value.code == "too_large" and "rows per message" in str(e.value)
    with pytest.raises(OpError) as e:
        check_limits(sets, 7, 100)
    assert e.value.details["op_index"] == 0
