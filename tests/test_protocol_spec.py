"""The declarative message spec (protocol/_spec.py): tables in, one decode and one encode out.

Pins what the spec must keep: each message's constructor order, the exact
bytes of each message kind in both envelopes, the field semantics (required,
null, blank, defaults) and which field is named when several are bad.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import typing
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from protocol import (
    CLIENT_MESSAGES,
    PROTOCOL_VERSION,
    SERVER_MESSAGES,
    Ack,
    Commit,
    Committed,
    Delta,
    Error,
    ErrorCode,
    Hello,
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
    Result,
    SetCells,
    Subscribe,
    Undo,
    Unsubscribe,
    View,
    Welcome,
    decode_client,
    decode_server,
    encode,
    encode_map,
    table_to_ipc,
    table_to_rows,
)
from protocol._spec import NO_DEFAULT, Field, Message, Record, req

MESSAGES = sorted({*CLIENT_MESSAGES.values(), *SERVER_MESSAGES.values()}, key=lambda c: c.__name__)

# Constructor order is public API: the server and client build messages positionally.
POSITIONAL = {
    Hello: ["client", "version", "since", "id", "codecs"],
    OpBatch: ["client_seq", "base_seq", "ops", "id"],
    Undo: ["client_seq", "base_seq", "id"],
    Redo: ["client_seq", "base_seq", "id"],
    Presence: ["state", "id"],
    Meta: ["update", "id", "re"],
    Commit: ["message", "id"],
    Query: ["kind", "from_", "to", "limit", "id"],
    Ping: ["id"],
    Subscribe: ["view", "config", "viewport", "id"],
    Unsubscribe: ["view", "id"],
    Welcome: [
        "room",
        "seq",
        "client",
        "schema",
        "snapshot",
        "meta",
        "role",
        "resumed",
        "reason",
        "limits",
        "re",
    ],
    Overwrite: ["rid", "column", "value", "by", "seq"],
    Ack: ["seq", "client_seq", "rids", "overwritten", "duplicate", "re"],
    Error: ["code", "message", "details", "re"],
    Delta: ["seq_from", "seq_to", "by", "upserts", "deleted", "schema", "meta"],
    PresenceUpdate: ["update", "states"],
    Committed: ["commit", "seq", "rows", "message", "author", "time", "parents", "re"],
    Result: ["kind", "tables", "data", "re"],
    Pong: ["re"],
    View: ["view", "kind", "seq", "data", "rows", "reason", "re", "config"],
}


def test_constructor_order_is_unchanged() -> None:
    assert set(POSITIONAL) >= set(MESSAGES)
    for cls, names in POSITIONAL.items():
        assert [fld.name for fld in dataclasses.fields(cls)] == names, cls.__name__


@pytest.mark.parametrize("cls", [*MESSAGES, Overwrite], ids=lambda c: c.__name__)
def test_every_attribute_has_exactly_one_wire_field(cls: type[Record]) -> None:
    wires = [fld.wire for fld in cls.FIELDS]
    assert len(wires) == len(set(wires)), cls.__name__
    assert {fld.attr for fld in cls.FIELDS} == {fld.name for fld in dataclasses.fields(cls)}
    assert all(fld.attr.rstrip("_") == fld.wire for fld in cls.FIELDS)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_type_tag_is_a_literal_class_var(cls: type[Message]) -> None:
    hint = typing.get_type_hints(cls)["type"]
    assert typing.get_origin(hint) is typing.ClassVar
    (literal,) = typing.get_args(hint)
    assert typing.get_origin(literal) is typing.Literal
    assert cls.type in typing.get_args(literal)
    assert "type" not in {fld.name for fld in dataclasses.fields(cls)}


def test_required_fields_take_no_default() -> None:
    with pytest.raises(ValueError, match="required"):
        Field("x", str, required=True)
    assert req("x", str).default is NO_DEFAULT
    assert Field("from", str).attr == "from_"


# ------------------------------------------------------------------ exact wire bytes

TABLE = pa.table({"_rid": pa.array([1, 2], pa.int64()), "x": pa.array([1.5, None])})
SCHEMA = ({"id": 0, "name": "x", "dtype": "float64"},)

# One sample per message kind and its wire map, keys in wire order. Tables
# and bytes are shown as they are; the envelopes encode them.
WIRE: list[tuple[Any, dict[str, Any]]] = [
    (
        Hello("bot", 1, 5, 7, ("zstd",)),
        {"type": "hello", "id": 7, "client": "bot", "version": 1, "since": 5, "codecs": ["zstd"]},
    ),
    (
        Hello("bob"),
        {
            "type": "hello",
            "id": None,
            "client": "bob",
            "version": PROTOCOL_VERSION,
            "since": None,
            "codecs": [],
        },
    ),
    (
        OpBatch(3, 40, (SetCells((1,), "x", (2.5,)),), "r"),
        {
            "type": "op",
            "id": "r",
            "client_seq": 3,
            "base_seq": 40,
            "ops": [{"op": "set", "rows": [1], "col": "x", "values": [2.5]}],
        },
    ),
    (Undo(4, 41, 2), {"type": "undo", "id": 2, "client_seq": 4, "base_seq": 41}),
    (Redo(5), {"type": "redo", "id": None, "client_seq": 5, "base_seq": 0}),
    (Presence({"a": [1, None]}, 3), {"type": "presence", "id": 3, "state": {"a": [1, None]}}),
    (Presence(None), {"type": "presence", "id": None, "state": None}),
    (Meta(b"\x00\xff", 4), {"type": "meta", "id": 4, "update": b"\x00\xff"}),
    (Meta(b"\x01", re=4), {"type": "meta", "id": None, "update": b"\x01", "re": 4}),
    (Commit("fix", 5), {"type": "commit", "id": 5, "message": "fix"}),
    (
        Query("diff", "v1", None, 10, 6),
        {"type": "query", "id": 6, "kind": "diff", "from": "v1", "to": None, "limit": 10},
    ),
    (Ping(9), {"type": "ping", "id": 9}),
    (
        Subscribe("v", {"columns": ["x"]}, (0, 50), 11),
        {
            "type": "subscribe",
            "id": 11,
            "view": "v",
            "config": {"columns": ["x"]},
            "viewport": {"start_row": 0, "end_row": 50},
        },
    ),
    (Subscribe("v", {}), {"type": "subscribe", "id": None, "view": "v", "config": {}, "viewport": None}),
    (Unsubscribe("v", 12), {"type": "unsubscribe", "id": 12, "view": "v"}),
    (
        Welcome("r", 42, "c1", SCHEMA, TABLE, b"\x01", "viewer", True, "resume", {"max_ops": 10}, 1),
        {
            "type": "welcome",
            "re": 1,
            "room": "r",
            "seq": 42,
            "client": "c1",
            "schema": list(SCHEMA),
            "snapshot": TABLE,
            "meta": b"\x01",
            "role": "viewer",
            "resumed": True,
            "reason": "resume",
            "limits": {"max_ops": 10},
        },
    ),
    (
        Ack(43, 3, (100,), (Overwrite(7, "x", 1.5, "bob", 40),), True, "r"),
        {
            "type": "ack",
            "re": "r",
            "seq": 43,
            "client_seq": 3,
            "rids": [100],
            "overwritten": [{"rid": 7, "column": "x", "value": 1.5, "by": "bob", "seq": 40}],
            "duplicate": True,
        },
    ),
    (
        Error(ErrorCode.BAD_FIELD, "field 'x' is bad", {"field": "x"}, 5),
        {
            "type": "error",
            "re": 5,
            "code": "bad_field",
            "message": "field 'x' is bad",
            "details": {"field": "x"},
        },
    ),
    (
        Delta(40, 43, ("alice",), TABLE, (3,), SCHEMA, b"\x07"),
        {
            "type": "delta",
            "seq_from": 40,
            "seq_to": 43,
            "by": ["alice"],
            "upserts": TABLE,
            "deleted": [3],
            "schema": list(SCHEMA),
            "meta": b"\x07",
        },
    ),
    (
        Delta(1, 1, ()),
        {
            "type": "delta",
            "seq_from": 1,
            "seq_to": 1,
            "by": [],
            "upserts": None,
            "deleted": [],
            "schema": None,
            "meta": None,
        },
    ),
    (
        PresenceUpdate(b"\x02", {"1": {"n": "a"}}),
        {"type": "presence", "update": b"\x02", "states": {"1": {"n": "a"}}},
    ),
    (
        Committed("ab", 12, 100, "m", "alice", 1.5, ("cd",), 4),
        {
            "type": "committed",
            "re": 4,
            "commit": "ab",
            "seq": 12,
            "rows": 100,
            "message": "m",
            "author": "alice",
            "time": 1.5,
            "parents": ["cd"],
        },
    ),
    (
        Result("diff", {"added": TABLE}, {"n": 2}, 6),
        {"type": "result", "re": 6, "kind": "diff", "tables": {"added": TABLE}, "data": {"n": 2}},
    ),
    (Pong(9), {"type": "pong", "re": 9}),
    (
        View("v", "snapshot", 7, TABLE, 2, None, 11, {"columns": ["x"]}),
        {
            "type": "view",
            "re": 11,
            "view": "v",
            "kind": "snapshot",
            "seq": 7,
            "rows": 2,
            "data": TABLE,
            "reason": None,
            "config": {"columns": ["x"]},
        },
    ),
]


def _envelope(v: Any, *, binary: bool) -> Any:
    """The expected map as an envelope carries it (tables and bytes encoded)."""
    if isinstance(v, pa.Table):
        return table_to_ipc(v) if binary else table_to_rows(v)
    if isinstance(v, bytes):
        return v if binary else base64.b64encode(v).decode("ascii")
    if isinstance(v, dict):
        return {k: _envelope(x, binary=binary) for k, x in v.items()}
    if isinstance(v, list):
        return [_envelope(x, binary=binary) for x in v]
    return v


def test_wire_samples_cover_every_message_kind() -> None:
    assert {type(m) for m, _ in WIRE} == set(MESSAGES)


@pytest.mark.parametrize(
    ("msg", "wire"), WIRE, ids=[f"{type(m).__name__}-{i}" for i, (m, _) in enumerate(WIRE)]
)
def test_wire_bytes_are_exact(msg: Any, wire: dict[str, Any]) -> None:
    assert list(msg.to_wire()) == list(wire)
    assert encode(msg, binary=True) == msgpack.packb(_envelope(wire, binary=True), use_bin_type=True)
    assert encode(msg, binary=False) == json.dumps(_envelope(wire, binary=False), separators=(",", ":"))
    decode = decode_client if type(msg) in CLIENT_MESSAGES.values() else decode_server
    assert decode(encode(msg, binary=True)) == msg


# ------------------------------------------------------------------ field semantics


def _field_error(wire: dict[str, Any], decode: Any = decode_client) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(encode_map(wire))
    return info.value


def test_absent_null_and_blank_values() -> None:
    # Optional: absent and null read as the default; 0 is a value, not an absence.
    assert decode_client(encode_map({"type": "hello", "client": "a", "version": 1, "since": 0})) == Hello(
        "a", 1, 0
    )
    assert decode_client(encode_map({"type": "hello", "client": "a", "version": 1, "since": None})) == Hello(
        "a", 1, None
    )
    # Blank: any false value reads as the default (as the hand-written decoders did).
    for blank in (None, 0, "", [], False):
        wire = {"type": "ack", "seq": 1, "client_seq": 1, "rids": blank, "overwritten": blank}
        assert decode_server(encode_map(wire)) == Ack(1, 1)
        assert decode_client(encode_map({"type": "commit", "message": blank})) == Commit("")
    # Fresh defaults: no two messages share a dict.
    a, b = (decode_server(encode_map({"type": "error", "code": "c", "message": "m"})) for _ in range(2))
    assert a.details == {} and a.details is not b.details


def test_required_absent_and_required_null_are_told_apart() -> None:
    err = _field_error({"type": "undo"})
    assert (err.field, err.message) == ("client_seq", "field 'client_seq' is required")
    err = _field_error({"type": "undo", "client_seq": None})
    assert (err.field, err.message) == ("client_seq", "field 'client_seq' must be an integer, got NoneType")
    # ``time`` has no stand-in: absent or null, it is not a number.
    wire = {"type": "committed", "commit": "c", "seq": 1, "rows": 1, "message": "", "author": ""}
    err = _field_error(wire, decode_server)
    assert (err.field, err.message) == ("time", "field 'time' must be a number")


def test_nested_records_name_their_path() -> None:
    wire = {"type": "ack", "seq": 1, "client_seq": 1, "overwritten": [{"rid": 1, "column": "x", "by": "b"}]}
    err = _field_error(wire, decode_server)
    assert (err.field, err.message) == ("overwritten[0].seq", "field 'overwritten[0].seq' is required")


def test_cross_field_rule_runs_after_the_fields() -> None:
    err = _field_error({"type": "query", "kind": "diff"})
    assert (err.field, err.message) == ("from", "field 'from' is required for a diff")
    assert decode_client(encode_map({"type": "query", "kind": "log"})) == Query("log")


def test_first_bad_field_in_wire_order_is_named() -> None:
    # With several bad fields, the first in the table (the wire order) is named.
    assert _field_error({"type": "op", "id": [1], "ops": []}).field == "id"
    assert _field_error({"type": "op", "ops": []}).field == "client_seq"
    assert _field_error({"type": "view", "kind": "junk"}, decode_server).field == "view"
