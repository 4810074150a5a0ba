"""The wire protocol, fed bytes and text with no I/O.

Every message and every op round-trips through both envelopes: binary frames
(msgpack, tables as Arrow IPC) and text frames (JSON, tables as row objects,
bytes as base64). Every rejection carries a stable code and names the field.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import re
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from protocol import (
    CLIENT_MESSAGES,
    CLIENT_OPS,
    FILL_STRATEGIES,
    OP_TYPES,
    PROTOCOL_VERSION,
    PROTOCOL_VIOLATIONS,
    SERVER_MESSAGES,
    Ack,
    AddColumn,
    CastColumn,
    Commit,
    Committed,
    Delete,
    Delta,
    DropColumn,
    Error,
    ErrorCode,
    FillNull,
    Hello,
    Insert,
    Meta,
    OpBatch,
    Overwrite,
    Ping,
    Pong,
    Presence,
    PresenceUpdate,
    ProtocolError,
    Query,
    Redo,
    RenameColumn,
    RestoreColumn,
    RestoreRows,
    Result,
    SetCells,
    Subscribe,
    Undo,
    Unsubscribe,
    View,
    Welcome,
    decode_client,
    decode_map,
    decode_server,
    encode,
    encode_map,
    op_from_wire,
    table_from_ipc,
    table_to_ipc,
    table_to_rows,
)

UTC = dt.UTC


# ------------------------------------------------------------------ sample data


def mixed_table() -> pa.Table:
    """Several dtypes, each with a null."""
    return pa.table(
        {
            "i": pa.array([1, None, -3], pa.int64()),
            "f": pa.array([1.5, None, -2.0], pa.float64()),
            "s": pa.array(["a", None, "ü ✓"], pa.string()),
            "b": pa.array([True, None, False], pa.bool_()),
            "d": pa.array([dt.date(2024, 1, 31), None, dt.date(1999, 12, 31)], pa.date32()),
            "ts": pa.array(
                [dt.datetime(2024, 1, 31, 12, 30, 5), None, dt.datetime(2000, 1, 1, 0, 0, 0, 250000)],
                pa.timestamp("us"),
            ),
            "tsz": pa.array(
                [dt.datetime(2024, 1, 31, 12, 30, 5, tzinfo=UTC), None, None], pa.timestamp("us", tz="UTC")
            ),
        }
    )


def rid_table() -> pa.Table:
    """A table as the server keeps it: ``_rid`` first."""
    return pa.table(
        {
            "_rid": pa.array([10, 11, 12], pa.int64()),
            "price": pa.array([9.5, None, 0.25], pa.float64()),
            "name": pa.array(["x", "y", None], pa.string()),
        }
    )


SCHEMA = (
    {"id": 0, "name": "price", "dtype": "float64"},
    {"id": 1, "name": "name", "dtype": "string"},
    {"id": 5, "name": "when", "dtype": "date"},
)

CLIENT_OP_SAMPLES: list[Any] = [
    SetCells((1, 2, 3), "price", (1.5, None, 3.0)),
    SetCells((4,), 7, ("x",), if_unchanged=True),
    SetCells((5, 6), "flag", (True, False)),
    SetCells((), "price", ()),
    Insert(mixed_table()),
    Insert(pa.table({"price": pa.array([1.0], pa.float64())})),
    Delete(rows=(1, 2, 99)),
    Delete(where="price > 3 AND name = 'x'"),
    AddColumn("qty", "int64", default=0),
    AddColumn("ok", "bool", default=False),
    AddColumn("total", "float64", expr="price * qty"),
    AddColumn("double", expr="price * 2"),  # dtype inferred from the expr
    AddColumn("note", "string"),
    DropColumn("qty"),
    DropColumn(3),
    RenameColumn("price", "cost"),
    RenameColumn(0, "cost"),
    CastColumn("qty", "float64", strict=False),
    CastColumn(1, "string"),
    FillNull("price", value=0.0),
    FillNull(2, value="n/a"),
    *[FillNull("price", strategy=s) for s in FILL_STRATEGIES],
]
INTERNAL_OP_SAMPLES: list[Any] = [
    RestoreRows(rid_table()),
    RestoreColumn(
        id=3,
        name="price",
        dtype="float64",
        position=2,
        values=pa.table({"_rid": pa.array([10, 11], pa.int64()), "value": pa.array([1.0, None])}),
    ),
]
OP_SAMPLES = CLIENT_OP_SAMPLES + INTERNAL_OP_SAMPLES

CLIENT_SAMPLES: list[Any] = [
    Hello("bot", 1, 5, 7, ("zstd", "lz4")),
    Hello("alice", PROTOCOL_VERSION, since=41, id=1),
    Hello("bob"),
    OpBatch(client_seq=3, base_seq=40, ops=tuple(CLIENT_OP_SAMPLES), id="req-7"),
    OpBatch(client_seq=0, base_seq=0, ops=(DropColumn("x"),)),
    Undo(4, 41, id=2),
    Undo(5),
    Redo(6, 42, id="r"),
    Presence({"cursor": {"row": 3, "col": "price"}, "name": "alice", "tags": [1, 2.5, None, True]}, id=3),
    Presence(None),
    Meta(bytes(range(256)), id=4),
    Meta(b""),
    Ping(id=9),
    Ping(),
    Commit("fix prices", id=4),
    Commit(""),
    Query("diff", "v1", "live", None, id=5),
    Query("log", None, None, 10),
    Subscribe(
        "by-region",
        {
            "group_by": ["region"],
            "split_by": [],
            "columns": ["price", "x"],
            "aggregates": {"price": "sum"},
            "filter": [["qty", ">", 2], ["note", "is null"]],
            "sort": [["price", "desc"]],
            "expressions": {"x": '"price" * 2'},
            "group_rollup_mode": "flat",
        },
        (0, 50),
        id=11,
    ),
    Subscribe("plain", {}),
    Unsubscribe("plain", id=12),
]
SERVER_SAMPLES: list[Any] = [
    Welcome(
        room="sales",
        seq=42,
        client="c1",
        schema=SCHEMA,
        snapshot=rid_table(),
        meta=b"\x01\x00\xff",
        role="viewer",
        resumed=False,
        reason="join",
        limits={"max_ops": 1000, "max_frame": 1 << 20},
        re=1,
    ),
    Welcome("sales", 43, "c2", SCHEMA, None, b"", resumed=True, reason="resume"),
    Welcome("empty", 0, "c3", (), mixed_table(), b"\x00", reason="resync"),
    Ack(
        seq=43,
        client_seq=3,
        rids=(100, 101),
        overwritten=(Overwrite(7, "price", 1.5, "bob", 40), Overwrite(8, "name", None, "carol", 41)),
        duplicate=True,
        re="req-7",
    ),
    Ack(1, 1),
    Error(
        ErrorCode.BAD_FIELD, "field 'ops[2].values' has 2 values for 3 rows", {"field": "ops[2].values"}, re=5
    ),
    Error(ErrorCode.INTERNAL, "server error"),
    Delta(40, 43, ("alice", "bob"), upserts=rid_table(), deleted=(3, 4), schema=SCHEMA, meta=b"\x07"),
    Delta(44, 44, ("carol",), upserts=mixed_table()),
    Delta(1, 1, ()),
    PresenceUpdate(b"\x01\x02", {"1": {"name": "alice", "cursor": [1, 2]}, "2": None}),
    PresenceUpdate(b"", {}),
    Meta(b"\x00sync", id=None),
    Meta(b"\x01step2", re=4),
    Pong(re=9),
    Pong(),
    Committed("ab" * 32, 12, 100, "fix prices", "alice", 1763870000.5, ("cd" * 32,), re=4),
    Committed("ef" * 32, 0, 0, "", "", 0.0),
    Result("log", {}, [{"commit": "ab", "seq": 3}], re=6),
    View(
        "by-region",
        "snapshot",
        7,
        pa.table({"region": ["EU"], "price": [1.5]}),
        1,
        re=11,
        config={"group_by": ["region"], "aggregates": {"price": "sum"}},
    ),
    View("plain", "update", 8, pa.table({"_rid": pa.array([1], pa.uint64())}), 1000),
    View("plain", "closed", 9, None, 0, "column 'price' was dropped at seq 9", re=12),
    Result("diff", {"added": pa.table({"rid": pa.array([1, 2], pa.uint64())})}, {"summary": {"added": 2}}),
]


def _ident(v: Any) -> str:
    return type(v).__name__


# ------------------------------------------------------------------ comparison


def assert_same(got: Any, want: Any, *, binary: bool, path: str = "msg") -> None:
    """Deep equality; tables compare with ``.equals`` (binary) or as JSON rows (text)."""
    if isinstance(want, pa.Table):
        assert isinstance(got, pa.Table), path
        if binary:
            assert got.schema == want.schema, path
            assert got.equals(want), path
        else:
            # JSON carries no Arrow types: dates and timestamps come back as ISO text.
            assert got.to_pylist() == table_to_rows(want), path
            assert got.column_names == want.column_names, path
        return
    if isinstance(want, enum.Enum):  # an ErrorCode goes on the wire as its plain string
        want = want.value
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if dataclasses.is_dataclass(want):
        for fld in dataclasses.fields(want):
            assert_same(
                getattr(got, fld.name), getattr(want, fld.name), binary=binary, path=f"{path}.{fld.name}"
            )
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, binary=binary, path=f"{path}[{i}]")
    elif isinstance(want, dict):
        assert list(got) == list(want), path
        for k in want:
            assert_same(got[k], want[k], binary=binary, path=f"{path}.{k}")
    else:
        assert got == want, path


# ------------------------------------------------------------------ catalogs


def test_samples_cover_every_message_and_op() -> None:
    assert set(CLIENT_MESSAGES.values()) <= {type(m) for m in CLIENT_SAMPLES}
    assert set(SERVER_MESSAGES.values()) <= {type(m) for m in SERVER_SAMPLES}
    assert set(OP_TYPES.values()) <= {type(o) for o in OP_SAMPLES}
    assert {type(o).op for o in CLIENT_OP_SAMPLES} == set(CLIENT_OPS)


def test_catalog_keys_are_the_type_tags() -> None:
    for catalog in (CLIENT_MESSAGES, SERVER_MESSAGES):
        for name, cls in catalog.items():
            assert cls.type == name
    for name, cls in OP_TYPES.items():
        assert cls.op == name
    assert CLIENT_OPS == {k for k in OP_TYPES if k not in ("restore_rows", "restore_column")}


@pytest.mark.parametrize(
    "cls",
    sorted(
        {*CLIENT_MESSAGES.values(), *SERVER_MESSAGES.values(), *OP_TYPES.values()}, key=lambda c: c.__name__
    ),
)
def test_messages_and_ops_are_frozen_slotted_dataclasses(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in vars(cls)


def test_error_codes_are_lowercase_snake_case() -> None:
    names = {k for k in vars(ErrorCode) if k.isupper() and k != "ALL"}
    assert ErrorCode.ALL == {getattr(ErrorCode, k) for k in names}
    assert len(ErrorCode.ALL) == len(names), "two codes share a value"
    for code in ErrorCode.ALL:
        assert isinstance(code, str)
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code), code
    assert PROTOCOL_VIOLATIONS <= ErrorCode.ALL


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
@pytest.mark.parametrize("msg", CLIENT_SAMPLES, ids=_ident)
def test_client_message_round_trip(msg: Any, binary: bool) -> None:
    data = encode(msg, binary=binary)
    assert isinstance(data, bytes if binary else str)
    got = decode_client(data)
    assert_same(got, msg, binary=binary)
    if binary:
        assert got == msg


@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
@pytest.mark.parametrize("msg", SERVER_SAMPLES, ids=_ident)
def test_server_message_round_trip(msg: Any, binary: bool) -> None:
    data = encode(msg, binary=binary)
    assert isinstance(data, bytes if binary else str)
    got = decode_server(data)
    assert_same(got, msg, binary=binary)
    if binary:
        assert got == msg


@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
@pytest.mark.parametrize("op", OP_SAMPLES, ids=_ident)
def test_op_round_trip(op: Any, binary: bool) -> None:
    # Every op, server-internal ones included, as the WAL and undo stack carry them.
    data = encode_map({"ops": [op.to_wire()]}, binary=binary)
    got = op_from_wire(decode_map(data)["ops"][0], "ops[0]", internal=True)
    assert_same(got, op, binary=binary, path="op")
    # Client ops also travel inside an op batch from a client.
    if type(op).op in CLIENT_OPS:
        batch = decode_client(encode(OpBatch(1, 2, (op,)), binary=binary))
        assert isinstance(batch, OpBatch)
        assert_same(batch.ops[0], op, binary=binary, path="ops[0]")


def test_json_round_trip_is_a_fixpoint() -> None:
    # Once a table has been through JSON its types are JSON's; a second trip changes nothing.
    for decode, samples in ((decode_client, CLIENT_SAMPLES), (decode_server, SERVER_SAMPLES)):
        for msg in samples:
            once = decode(encode(msg, binary=False))
            twice = decode(encode(once, binary=False))
            assert twice == once
            assert encode(twice, binary=False) == encode(once, binary=False)


def test_binary_frame_carries_arrow_ipc_and_raw_bytes() -> None:
    table = mixed_table()
    wire = msgpack.unpackb(encode(OpBatch(1, 0, (Insert(table),)), binary=True), raw=False)
    ipc = wire["ops"][0]["rows"]
    assert isinstance(ipc, bytes)
    assert table_from_ipc(ipc).equals(table)
    assert table_from_ipc(table_to_ipc(table)).schema == table.schema
    wire = msgpack.unpackb(encode(Meta(b"\x00\xff"), binary=True), raw=False)
    assert wire["update"] == b"\x00\xff"


def test_text_frame_carries_rows_iso_dates_and_base64() -> None:
    text = encode(OpBatch(1, 0, (Insert(mixed_table()),)), binary=False)
    assert isinstance(text, str)
    rows = json.loads(text)["ops"][0]["rows"]
    assert rows[0] == {
        "i": 1,
        "f": 1.5,
        "s": "a",
        "b": True,
        "d": "2024-01-31",
        "ts": "2024-01-31T12:30:05",
        "tsz": "2024-01-31T12:30:05+00:00",
    }
    assert rows[1] == dict.fromkeys(["i", "f", "s", "b", "d", "ts", "tsz"])
    assert rows[2]["d"] == "1999-12-31"
    assert rows[2]["ts"] == "2000-01-01T00:00:00.250000"
    # The ISO text parses back to the same instants.
    assert dt.date.fromisoformat(rows[0]["d"]) == dt.date(2024, 1, 31)
    assert dt.datetime.fromisoformat(rows[0]["tsz"]) == dt.datetime(2024, 1, 31, 12, 30, 5, tzinfo=UTC)

    wire = json.loads(encode(Meta(b"\x00\xff\x10"), binary=False))
    assert wire["update"] == base64.b64encode(b"\x00\xff\x10").decode("ascii")


def test_text_frame_writes_nan_as_null() -> None:
    table = pa.table({"f": pa.array([1.0, float("nan"), None])})
    text = encode(Delta(1, 1, (), upserts=table), binary=False)
    assert "NaN" not in text
    got = decode_server(text)
    assert isinstance(got, Delta) and got.upserts is not None
    assert got.upserts.to_pylist() == [{"f": 1.0}, {"f": None}, {"f": None}]


def test_text_frame_writes_infinities_as_null_in_tables_and_scalars() -> None:
    # JSON has no NaN or infinity; a msgpack peer may still send them, and the
    # server must be able to pass the result on to a JSON peer.
    table = pa.table({"f": pa.array([float("inf"), float("-inf"), 1.0])})
    got = decode_server(encode(Delta(1, 1, (), upserts=table), binary=False))
    assert isinstance(got, Delta) and got.upserts is not None
    assert got.upserts.to_pylist() == [{"f": None}, {"f": None}, {"f": 1.0}]
    ack = Ack(
        2,
        1,
        overwritten=(Overwrite(1, "f", float("nan"), "bob", 1), Overwrite(2, "f", float("inf"), "bob", 1)),
    )
    text = encode(ack, binary=False)
    assert "NaN" not in text and "Infinity" not in text
    got = decode_server(text)
    assert isinstance(got, Ack)
    assert [o.value for o in got.overwritten] == [None, None]
    # msgpack carries them as they are.
    got = decode_server(encode(ack, binary=True))
    assert isinstance(got, Ack) and got.overwritten[1].value == float("inf")


def test_text_frame_writes_dates_python_cannot_hold_as_text() -> None:
    table = pa.table({"d": pa.array([10**7, 1, None], pa.date32()), "x": [1, 2, 3]})
    rows = json.loads(encode(Delta(1, 1, (), upserts=table), binary=False))["upserts"]
    assert rows == [{"d": "29349-01-26", "x": 1}, {"d": "1970-01-02", "x": 2}, {"d": None, "x": 3}]
    assert decode_server(encode(Delta(1, 1, (), upserts=table), binary=True)) == Delta(
        1, 1, (), upserts=table
    )


def test_json_rows_keep_every_column_when_rows_have_different_keys() -> None:
    # A JSON client may leave a null out of a row: that must not drop the column.
    frame = json.dumps(
        {
            "type": "op",
            "client_seq": 1,
            "base_seq": 0,
            "ops": [{"op": "insert", "rows": [{"a": 1}, {"a": 2, "b": "x"}, {"c": True}]}],
        }
    )
    msg = decode_client(frame)
    assert isinstance(msg, OpBatch)
    table = msg.ops[0].rows
    assert table.column_names == ["a", "b", "c"]
    assert table.to_pylist() == [
        {"a": 1, "b": None, "c": None},
        {"a": 2, "b": "x", "c": None},
        {"a": None, "b": None, "c": True},
    ]


def test_set_scalar_values_broadcast_to_every_row() -> None:
    def decode_set(values: Any, rows: list[int]) -> SetCells:
        op = {"op": "set", "rows": rows, "col": "price", "values": values}
        msg = decode_client(encode_map({"type": "op", "client_seq": 1, "base_seq": 0, "ops": [op]}))
        assert isinstance(msg, OpBatch)
        assert isinstance(msg.ops[0], SetCells)
        return msg.ops[0]

    assert decode_set(5, [1, 2, 3]).values == (5, 5, 5)
    assert decode_set("x", [7]).values == ("x",)
    assert decode_set(None, [1, 2]).values == (None, None)
    assert decode_set(2.5, []).values == ()
    assert decode_set([1, None], [1, 2]).values == (1, None)


def test_defaults_apply_when_optional_fields_are_absent() -> None:
    msg = decode_client(json.dumps({"type": "undo", "client_seq": 3}))
    assert msg == Undo(3, 0, None)
    msg = decode_client(
        json.dumps(
            {
                "type": "op",
                "client_seq": 1,
                "base_seq": 0,
                "ops": [{"op": "cast_column", "col": "a", "dtype": "int64"}],
            }
        )
    )
    assert isinstance(msg, OpBatch) and msg.ops == (CastColumn("a", "int64", strict=True),)
    msg = decode_server(json.dumps({"type": "ack", "seq": 4, "client_seq": 1}))
    assert msg == Ack(4, 1)
    msg = decode_server(json.dumps({"type": "delta", "seq_from": 1, "seq_to": 2}))
    assert msg == Delta(1, 2, ())


# ------------------------------------------------------------------ bad frames


def _codes(data: bytes | str) -> set[str]:
    codes = set()
    for decode in (decode_client, decode_server):
        with pytest.raises(ProtocolError) as info:
            decode(data)
        assert info.value.code in ErrorCode.ALL
        assert str(info.value) == info.value.message
        codes.add(info.value.code)
    return codes


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x83\xa4type",  # a map cut short
        msgpack.packb({"type": "ping"}) + b"\x00",  # trailing bytes
        "",
        "{not json",
        '{"type": "ping"',
        '{"type": "ping"} {}',
        '{"type": NaN}',  # NaN and Infinity are not JSON
        '{"type": "ping", "id": Infinity}',
        '{"type": "ping", "id": 1e400}',  # overflows to infinity
    ],
    ids=repr,
)
def test_undecodable_frames_are_bad_frame(data: bytes | str) -> None:
    assert _codes(data) == {ErrorCode.BAD_FRAME}


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb([1, 2]),
        msgpack.packb(5),
        msgpack.packb("hello"),
        msgpack.packb(None),
        msgpack.packb(b"x"),
        "[1, 2]",
        '"hello"',
        "null",
        "3.5",
        "true",
    ],
    ids=repr,
)
def test_frames_that_are_not_maps_are_bad_frame(data: bytes | str) -> None:
    assert _codes(data) == {ErrorCode.BAD_FRAME}
    with pytest.raises(ProtocolError, match="map"):
        decode_map(data)


@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
@pytest.mark.parametrize(
    "wire",
    [{}, {"type": "nope"}, {"type": 5}, {"type": None}, {"type": ["ping"]}, {"kind": "ping"}],
    ids=repr,
)
def test_unknown_types(wire: dict[str, Any], binary: bool) -> None:
    data = encode_map(wire, binary=binary)
    assert _codes(data) == {ErrorCode.UNKNOWN_TYPE}
    with pytest.raises(ProtocolError) as info:
        decode_client(data)
    assert info.value.field == "type"
    assert "hello" in info.value.message  # says what to send instead


def test_each_side_only_decodes_its_own_messages() -> None:
    for name in set(SERVER_MESSAGES) - set(CLIENT_MESSAGES):
        with pytest.raises(ProtocolError) as info:
            decode_client(encode_map({"type": name}))
        assert info.value.code == ErrorCode.UNKNOWN_TYPE
    for name in set(CLIENT_MESSAGES) - set(SERVER_MESSAGES):
        with pytest.raises(ProtocolError) as info:
            decode_server(encode_map({"type": name}))
        assert info.value.code == ErrorCode.UNKNOWN_TYPE


# ------------------------------------------------------------------ bad fields


def _op(*ops: Any) -> dict[str, Any]:
    return {"type": "op", "client_seq": 1, "base_seq": 0, "ops": list(ops)}


GOOD = {"op": "drop_column", "col": "a"}
SET = {"op": "set", "rows": [1, 2, 3], "col": "price", "values": [1, 2, 3]}

# (wire map, code, field): each field error names the path to the bad value.
CLIENT_FIELD_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"type": "hello", "version": 1}, ErrorCode.BAD_FIELD, "client"),
    ({"type": "hello", "client": 5, "version": 1}, ErrorCode.BAD_FIELD, "client"),
    ({"type": "hello", "client": "", "version": 1}, ErrorCode.BAD_FIELD, "client"),
    ({"type": "hello", "client": "x" * 129, "version": 1}, ErrorCode.BAD_FIELD, "client"),
    ({"type": "hello", "client": "a"}, ErrorCode.BAD_FIELD, "version"),
    ({"type": "hello", "client": "a", "version": "1"}, ErrorCode.BAD_FIELD, "version"),
    ({"type": "hello", "client": "a", "version": True}, ErrorCode.BAD_FIELD, "version"),
    ({"type": "hello", "client": "a", "version": 1, "since": -1}, ErrorCode.BAD_FIELD, "since"),
    ({"type": "hello", "client": "a", "version": 1, "since": 1.5}, ErrorCode.BAD_FIELD, "since"),
    ({"type": "hello", "client": "a", "version": 1, "id": [1]}, ErrorCode.BAD_FIELD, "id"),
    ({"type": "hello", "client": "a", "version": 1, "id": True}, ErrorCode.BAD_FIELD, "id"),
    ({"type": "hello", "client": "a", "version": 2**64}, ErrorCode.BAD_FIELD, "version"),
    ({"type": "op", "client_seq": 1, "base_seq": 0}, ErrorCode.BAD_FIELD, "ops"),
    (_op(), ErrorCode.BAD_FIELD, "ops"),
    ({**_op(), "ops": "drop"}, ErrorCode.BAD_FIELD, "ops"),
    ({**_op(GOOD), "client_seq": None}, ErrorCode.BAD_FIELD, "client_seq"),
    ({"type": "op", "client_seq": 1, "ops": [GOOD]}, ErrorCode.BAD_FIELD, "base_seq"),
    (_op(GOOD, GOOD, "drop"), ErrorCode.BAD_FIELD, "ops[2]"),
    (_op(GOOD, {"op": "explode"}), ErrorCode.BAD_OP, "ops[1].op"),
    (_op({"col": "a"}), ErrorCode.BAD_OP, "ops[0].op"),
    (_op({"op": 3}), ErrorCode.BAD_OP, "ops[0].op"),
    (_op({"op": "restore_rows", "rows": [{"_rid": 1}]}), ErrorCode.BAD_OP, "ops[0].op"),
    (
        _op(
            GOOD,
            {
                "op": "restore_column",
                "id": 1,
                "name": "a",
                "dtype": "int64",
                "position": 0,
                "values": [{"_rid": 1, "value": 2}],
            },
        ),
        ErrorCode.BAD_OP,
        "ops[1].op",
    ),
    # set
    (_op(GOOD, GOOD, {**SET, "values": [1, 2]}), ErrorCode.BAD_FIELD, "ops[2].values"),
    (_op({**SET, "values": [1, 2, 3, 4]}), ErrorCode.BAD_FIELD, "ops[0].values"),
    (_op({**SET, "values": [1, {"x": 1}, 3]}), ErrorCode.BAD_FIELD, "ops[0].values[1]"),
    (_op({**SET, "values": {"x": 1}}), ErrorCode.BAD_FIELD, "ops[0].values"),
    (_op({**SET, "values": 2**64}), ErrorCode.BAD_FIELD, "ops[0].values"),
    (_op({k: v for k, v in SET.items() if k != "values"}), ErrorCode.BAD_FIELD, "ops[0].values"),
    (_op({**SET, "rows": [1, -1, 3]}), ErrorCode.BAD_FIELD, "ops[0].rows[1]"),
    (_op({**SET, "rows": [1, "2", 3]}), ErrorCode.BAD_FIELD, "ops[0].rows[1]"),
    (_op({**SET, "rows": [1, 2, 2**63]}), ErrorCode.BAD_FIELD, "ops[0].rows[2]"),
    (_op({**SET, "rows": "1"}), ErrorCode.BAD_FIELD, "ops[0].rows"),
    (_op({**SET, "col": ""}), ErrorCode.BAD_FIELD, "ops[0].col"),
    (_op({**SET, "col": True}), ErrorCode.BAD_FIELD, "ops[0].col"),
    (_op({**SET, "col": -1}), ErrorCode.BAD_FIELD, "ops[0].col"),
    (_op({k: v for k, v in SET.items() if k != "col"}), ErrorCode.BAD_FIELD, "ops[0].col"),
    (_op({**SET, "if_unchanged": "yes"}), ErrorCode.BAD_FIELD, "ops[0].if_unchanged"),
    # insert
    (_op({"op": "insert"}), ErrorCode.BAD_FIELD, "ops[0].rows"),
    (_op({"op": "insert", "rows": [{"_rid": 1, "a": 2}]}), ErrorCode.BAD_FIELD, "ops[0].rows"),
    (_op({"op": "insert", "rows": 5}), ErrorCode.BAD_FIELD, "ops[0].rows"),
    (_op({"op": "insert", "rows": [{"a": 1}, 5]}), ErrorCode.BAD_FIELD, "ops[0].rows[1]"),
    (_op({"op": "insert", "rows": [{"a": 1}, {"a": "x"}]}), ErrorCode.BAD_FIELD, "ops[0].rows"),
    (_op({"op": "insert", "rows": [{"a": [1, 2]}]}), ErrorCode.BAD_FIELD, "ops[0].rows[0].a"),
    # delete
    (_op({"op": "delete"}), ErrorCode.BAD_FIELD, "ops[0]"),
    (_op(GOOD, {"op": "delete", "rows": [1], "where": "a > 1"}), ErrorCode.BAD_FIELD, "ops[1]"),
    (_op({"op": "delete", "rows": [1, "x"]}), ErrorCode.BAD_FIELD, "ops[0].rows[1]"),
    (_op({"op": "delete", "rows": {"a": 1}}), ErrorCode.BAD_FIELD, "ops[0].rows"),
    (_op({"op": "delete", "where": ""}), ErrorCode.BAD_FIELD, "ops[0].where"),
    (_op({"op": "delete", "where": 5}), ErrorCode.BAD_FIELD, "ops[0].where"),
    # add_column
    (_op({"op": "add_column", "dtype": "int64"}), ErrorCode.BAD_FIELD, "ops[0].name"),
    (_op({"op": "add_column", "name": "a"}), ErrorCode.BAD_FIELD, "ops[0].dtype"),
    (
        _op({"op": "add_column", "name": "a", "dtype": "int64", "default": 1, "expr": "b"}),
        ErrorCode.BAD_FIELD,
        "ops[0]",
    ),
    (
        _op({"op": "add_column", "name": "a", "dtype": "int64", "default": [1]}),
        ErrorCode.BAD_FIELD,
        "ops[0].default",
    ),
    (_op({"op": "add_column", "name": "a", "dtype": "int64", "expr": 5}), ErrorCode.BAD_FIELD, "ops[0].expr"),
    # drop, rename, cast
    (_op({"op": "drop_column"}), ErrorCode.BAD_FIELD, "ops[0].col"),
    (_op({"op": "rename_column", "col": "a"}), ErrorCode.BAD_FIELD, "ops[0].name"),
    (_op({"op": "rename_column", "col": "a", "name": ""}), ErrorCode.BAD_FIELD, "ops[0].name"),
    (_op({"op": "cast_column", "col": "a"}), ErrorCode.BAD_FIELD, "ops[0].dtype"),
    (
        _op({"op": "cast_column", "col": "a", "dtype": "int64", "strict": 1}),
        ErrorCode.BAD_FIELD,
        "ops[0].strict",
    ),
    # fill_null
    (_op({"op": "fill_null", "col": "a"}), ErrorCode.BAD_FIELD, "ops[0]"),
    (_op({"op": "fill_null", "col": "a", "value": None}), ErrorCode.BAD_FIELD, "ops[0]"),
    (_op({"op": "fill_null", "col": "a", "value": 0, "strategy": "mean"}), ErrorCode.BAD_FIELD, "ops[0]"),
    (_op({"op": "fill_null", "col": "a", "strategy": "average"}), ErrorCode.BAD_FIELD, "ops[0].strategy"),
    (_op({"op": "fill_null", "col": "a", "strategy": 5}), ErrorCode.BAD_FIELD, "ops[0].strategy"),
    (_op({"op": "fill_null", "col": "a", "value": {"x": 1}}), ErrorCode.BAD_FIELD, "ops[0].value"),
    (_op({"op": "fill_null", "value": 0}), ErrorCode.BAD_FIELD, "ops[0].col"),
    # undo, redo, presence, meta, ping
    ({"type": "undo"}, ErrorCode.BAD_FIELD, "client_seq"),
    ({"type": "redo", "client_seq": -1}, ErrorCode.BAD_FIELD, "client_seq"),
    ({"type": "undo", "client_seq": 1, "base_seq": "0"}, ErrorCode.BAD_FIELD, "base_seq"),
    ({"type": "presence", "state": [1, 2]}, ErrorCode.BAD_FIELD, "state"),
    ({"type": "presence", "state": "here"}, ErrorCode.BAD_FIELD, "state"),
    ({"type": "presence", "state": {"n": 2**64}}, ErrorCode.BAD_FIELD, "state.n"),
    ({"type": "presence", "state": {"a": [1, {"b": 2**64}]}}, ErrorCode.BAD_FIELD, "state.a[1].b"),
    ({"type": "meta"}, ErrorCode.BAD_FIELD, "update"),
    ({"type": "meta", "update": 5}, ErrorCode.BAD_FIELD, "update"),
    ({"type": "meta", "update": "not base64!"}, ErrorCode.BAD_FIELD, "update"),
    ({"type": "meta", "update": "é"}, ErrorCode.BAD_FIELD, "update"),
    ({"type": "ping", "id": 1.5}, ErrorCode.BAD_FIELD, "id"),
]

SCHEMA_WIRE = [{"id": 0, "name": "a", "dtype": "int64"}]
WELCOME = {
    "type": "welcome",
    "room": "r",
    "seq": 1,
    "client": "c",
    "schema": SCHEMA_WIRE,
    "meta": "",
    "role": "editor",
    "reason": "join",
}
ACK = {"type": "ack", "seq": 2, "client_seq": 1}
OVERWRITE = {"rid": 1, "column": "a", "value": 3, "by": "bob", "seq": 1}
SERVER_FIELD_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({k: v for k, v in WELCOME.items() if k != "room"}, ErrorCode.BAD_FIELD, "room"),
    ({**WELCOME, "seq": -1}, ErrorCode.BAD_FIELD, "seq"),
    ({**WELCOME, "schema": {"a": "int64"}}, ErrorCode.BAD_FIELD, "schema"),
    ({**WELCOME, "schema": [*SCHEMA_WIRE, 5]}, ErrorCode.BAD_FIELD, "schema[1]"),
    ({**WELCOME, "schema": [{"id": 0, "name": "a"}]}, ErrorCode.BAD_FIELD, "schema[0].dtype"),
    (
        {**WELCOME, "schema": [{"id": "0", "name": "a", "dtype": "int64"}]},
        ErrorCode.BAD_FIELD,
        "schema[0].id",
    ),
    ({**WELCOME, "snapshot": 5}, ErrorCode.BAD_FIELD, "snapshot"),
    ({**WELCOME, "snapshot": [{"a": 1}, {"a": [2]}]}, ErrorCode.BAD_FIELD, "snapshot[1].a"),
    ({k: v for k, v in WELCOME.items() if k != "meta"}, ErrorCode.BAD_FIELD, "meta"),
    ({**WELCOME, "resumed": "no"}, ErrorCode.BAD_FIELD, "resumed"),
    ({**WELCOME, "limits": [["max_ops", 5]]}, ErrorCode.BAD_FIELD, "limits"),
    ({**WELCOME, "limits": "ab"}, ErrorCode.BAD_FIELD, "limits"),
    ({**WELCOME, "re": {"a": 1}}, ErrorCode.BAD_FIELD, "re"),
    ({"type": "ack", "seq": 2}, ErrorCode.BAD_FIELD, "client_seq"),
    ({**ACK, "rids": [1, -1]}, ErrorCode.BAD_FIELD, "rids[1]"),
    ({**ACK, "overwritten": "x"}, ErrorCode.BAD_FIELD, "overwritten"),
    ({**ACK, "overwritten": [OVERWRITE, 5]}, ErrorCode.BAD_FIELD, "overwritten[1]"),
    (
        {**ACK, "overwritten": [{k: v for k, v in OVERWRITE.items() if k != "rid"}]},
        ErrorCode.BAD_FIELD,
        "overwritten[0].rid",
    ),
    ({**ACK, "overwritten": [{**OVERWRITE, "value": [1]}]}, ErrorCode.BAD_FIELD, "overwritten[0].value"),
    ({**ACK, "duplicate": 1}, ErrorCode.BAD_FIELD, "duplicate"),
    ({"type": "error", "message": "m"}, ErrorCode.BAD_FIELD, "code"),
    ({"type": "error", "code": "c"}, ErrorCode.BAD_FIELD, "message"),
    ({"type": "error", "code": "c", "message": "m", "details": [1]}, ErrorCode.BAD_FIELD, "details"),
    ({"type": "delta", "seq_to": 1}, ErrorCode.BAD_FIELD, "seq_from"),
    ({"type": "delta", "seq_from": 1, "seq_to": 1, "by": [1]}, ErrorCode.BAD_FIELD, "by"),
    ({"type": "delta", "seq_from": 1, "seq_to": 1, "by": "alice"}, ErrorCode.BAD_FIELD, "by"),
    ({"type": "delta", "seq_from": 1, "seq_to": 1, "deleted": ["x"]}, ErrorCode.BAD_FIELD, "deleted[0]"),
    ({"type": "delta", "seq_from": 1, "seq_to": 1, "upserts": 5}, ErrorCode.BAD_FIELD, "upserts"),
    ({"type": "delta", "seq_from": 1, "seq_to": 1, "schema": [1]}, ErrorCode.BAD_FIELD, "schema[0]"),
    ({"type": "delta", "seq_from": 1, "seq_to": 1, "meta": 5}, ErrorCode.BAD_FIELD, "meta"),
    ({"type": "presence"}, ErrorCode.BAD_FIELD, "update"),
    ({"type": "presence", "update": "", "states": [1]}, ErrorCode.BAD_FIELD, "states"),
    ({"type": "presence", "update": "", "states": {"1": {"x": 2**64}}}, ErrorCode.BAD_FIELD, "states.1.x"),
    ({"type": "pong", "re": [1]}, ErrorCode.BAD_FIELD, "re"),
]


def _check_field_error(info: pytest.ExceptionInfo[ProtocolError], code: str, field: str) -> None:
    err = info.value
    assert err.code == code, err.message
    assert err.field == field, err.message
    assert err.details.get("field") == field
    # The whole path ("ops[2].values"), or the op's path and the key ("op at 'ops[0]' needs a 'dtype'").
    parent, _, leaf = field.rpartition(".")
    assert field in err.message or (parent and f"'{parent}'" in err.message and f"'{leaf}'" in err.message)


def _leaves(v: Any) -> list[Any]:
    if isinstance(v, dict):
        return [x for item in v.values() for x in _leaves(item)]
    if isinstance(v, list):
        return [x for item in v for x in _leaves(item)]
    return [v]


def _msgpack_can_carry(wire: dict[str, Any]) -> bool:
    return all(not isinstance(v, int) or -(2**63) <= v < 2**64 for v in _leaves(wire))


def _envelope_cases(cases: list[tuple[dict[str, Any], str, str]]) -> list[Any]:
    """Each case in both envelopes, except integers only JSON can carry."""
    return [
        pytest.param(wire, code, field, binary, id=f"{field}-{'msgpack' if binary else 'json'}")
        for wire, code, field in cases
        for binary in (True, False)
        if not binary or _msgpack_can_carry(wire)
    ]


@pytest.mark.parametrize(("wire", "code", "field", "binary"), _envelope_cases(CLIENT_FIELD_CASES))
def test_client_field_errors_name_the_field(
    wire: dict[str, Any], code: str, field: str, binary: bool
) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client(encode_map(wire, binary=binary))
    _check_field_error(info, code, field)


@pytest.mark.parametrize(("wire", "code", "field", "binary"), _envelope_cases(SERVER_FIELD_CASES))
def test_server_field_errors_name_the_field(
    wire: dict[str, Any], code: str, field: str, binary: bool
) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_server(encode_map(wire, binary=binary))
    _check_field_error(info, code, field)


def test_set_length_mismatch_says_what_to_send() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client(encode_map(_op(GOOD, GOOD, {**SET, "values": [1, 2]})))
    assert info.value.field == "ops[2].values"
    assert "2 values for 3 rows" in info.value.message
    assert "single scalar" in info.value.message


def test_insert_with_rid_is_rejected_in_both_envelopes() -> None:
    table = pa.table({"_rid": [1, 2], "a": [1.0, 2.0]})
    for binary in (True, False):
        with pytest.raises(ProtocolError) as info:
            decode_client(encode(OpBatch(1, 0, (Insert(table),)), binary=binary))
        _check_field_error(info, ErrorCode.BAD_FIELD, "ops[0].rows")
        assert "_rid" in info.value.message
    # The server-internal restore_rows is where a _rid column belongs.
    restored = op_from_wire(
        decode_map(encode_map({"ops": [RestoreRows(table).to_wire()]}))["ops"][0], "ops[0]", internal=True
    )
    assert isinstance(restored, RestoreRows) and restored.rows.equals(table)


@pytest.mark.parametrize("op", INTERNAL_OP_SAMPLES, ids=_ident)
@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
def test_client_may_not_send_restore_ops(op: Any, binary: bool) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client(encode(OpBatch(1, 0, (DropColumn("a"), op)), binary=binary))
    _check_field_error(info, ErrorCode.BAD_OP, "ops[1].op")
    assert op.op not in info.value.message.split("use one of", 1)[1]


def _reads_but_is_invalid(ipc: bytes) -> bool:
    try:
        with pa.ipc.open_stream(pa.py_buffer(ipc)) as reader:
            table = reader.read_all()
    except (pa.ArrowException, OSError, ValueError):
        return False
    try:
        table.validate(full=True)
    except ValueError:  # ArrowInvalid, or a column name that is not UTF-8
        return True
    return False


def test_arrow_ipc_with_bad_buffers_is_refused() -> None:
    # Well-framed IPC whose buffers disagree with its lengths (found by setting
    # one byte): the IPC reader accepts it, full validation does not. Using such
    # a table would read past its buffers.
    good = table_to_ipc(pa.table({"s": pa.array(["x", None, "zz"]), "l": pa.array([[1], [], None])}))
    corrupt = [
        bad
        for at in range(len(good))
        for byte in (0x7F, 0xFF)
        if _reads_but_is_invalid(bad := good[:at] + bytes([byte]) + good[at + 1 :])
    ]
    assert corrupt, "no single-byte corruption slips past the IPC reader; pick another table"
    for ipc in corrupt:
        with pytest.raises(ProtocolError) as info:
            decode_client(encode_map(_op({"op": "insert", "rows": ipc})))
        _check_field_error(info, ErrorCode.BAD_FIELD, "ops[0].rows")


def test_bad_arrow_ipc_names_the_field() -> None:
    for blob in (b"", b"not arrow", table_to_ipc(mixed_table())[:-20]):
        with pytest.raises(ProtocolError) as info:
            decode_client(encode_map(_op({"op": "insert", "rows": blob})))
        _check_field_error(info, ErrorCode.BAD_FIELD, "ops[0].rows")
        with pytest.raises(ProtocolError) as info:
            decode_server(encode_map({**WELCOME, "snapshot": blob}))
        _check_field_error(info, ErrorCode.BAD_FIELD, "snapshot")


def test_msgpack_extension_types_are_rejected_by_field() -> None:
    # msgpack can carry timestamps and extension types; JSON-shaped fields take neither.
    ext = msgpack.ExtType(5, b"\x01")
    stamp = msgpack.Timestamp(1, 0)
    for value in (ext, stamp, b"raw"):
        with pytest.raises(ProtocolError) as info:
            decode_client(encode_map(_op({**SET, "values": [1, value, 3]})))
        _check_field_error(info, ErrorCode.BAD_FIELD, "ops[0].values[1]")
        with pytest.raises(ProtocolError) as info:
            decode_client(encode_map({"type": "presence", "state": {"k": [value]}}))
        _check_field_error(info, ErrorCode.BAD_FIELD, "state.k[0]")
    with pytest.raises(ProtocolError) as info:
        decode_client(encode_map({"type": "presence", "state": {b"k": 1}}))
    _check_field_error(info, ErrorCode.BAD_FIELD, "state")


def test_accepted_presence_state_re_encodes_in_both_envelopes() -> None:
    # The server fans presence out to msgpack and JSON clients alike.
    state = {"cursor": {"row": 2**63 - 1, "cols": ["a", None, 1.5, False]}, "": {}}
    for binary in (True, False):
        msg = decode_client(encode_map({"type": "presence", "state": state}, binary=binary))
        for out in (True, False):
            assert decode_client(encode(msg, binary=out)) == msg


def test_compressed_ipc_snapshot_round_trips() -> None:
    from protocol import table_to_ipc

    table = pa.table({"a": list(range(1000)), "s": ["x" * 20] * 1000})
    for codec in ("zstd", "lz4"):
        schema = ({"id": 0, "name": "a", "dtype": "Int64"},)
        w = Welcome("r/main", 3, "c", schema, table_to_ipc(table, codec), b"")
        back = decode_server(encode(w, binary=True))
        assert back.snapshot.equals(table)
    # Unknown codecs in hello are ignored, not errors: the server only uses what both know.
    assert decode_client(encode(Hello("c", codecs=("brotli", "zstd")), binary=True)).codecs == ("zstd",)
    hello = Hello("c", codecs=("brotli", "parquet", "lz4"))
    assert decode_client(encode(hello, binary=True)).codecs == ("parquet", "lz4")


def test_a_parquet_snapshot_reads_as_a_polars_frame_and_garbage_is_a_bad_field() -> None:
    import polars as pl

    from protocol.arrow import frame_to_parquet

    df = pl.DataFrame({"_rid": pl.Series([0, 1], dtype=pl.UInt64), "s": ["x", None]})
    schema = ({"id": 0, "name": "s", "dtype": "String"},)
    back = decode_server(encode(Welcome("r/main", 3, "c", schema, frame_to_parquet(df), b""), binary=True))
    assert isinstance(back.snapshot, pl.DataFrame) and back.snapshot.equals(df)
    bad = Welcome("r/main", 3, "c", schema, b"PAR1 but not a parquet file", b"")
    with pytest.raises(ProtocolError) as e:
        decode_server(encode(bad, binary=True))
    assert e.value.code == ErrorCode.BAD_FIELD and "field 'snapshot' is not a Parquet file" in e.value.message
