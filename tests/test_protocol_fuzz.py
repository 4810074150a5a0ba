"""Fuzz the decoders: whatever arrives, they return a message or raise ProtocolError.

The parser never raises out of the core with anything but a
coded error. Anything a decoder accepts must also encode again, in both
envelopes, and decode back to the same message (the server re-broadcasts).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import msgpack
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    CLIENT_MESSAGES,
    FILL_STRATEGIES,
    OP_TYPES,
    SERVER_MESSAGES,
    Ack,
    Delete,
    Delta,
    ErrorCode,
    FillNull,
    Hello,
    Insert,
    Meta,
    OpBatch,
    Overwrite,
    Presence,
    ProtocolError,
    SetCells,
    Welcome,
    decode_client,
    decode_server,
    encode,
    table_to_ipc,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECODERS = (decode_client, decode_server)

MSGPACK_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
BIG_INTS = st.integers(min_value=2**64, max_value=2**70) | st.integers(
    max_value=-(2**63) - 1, min_value=-(2**70)
)
TYPE_NAMES = sorted({*CLIENT_MESSAGES, *SERVER_MESSAGES})
OP_NAMES = sorted(OP_TYPES)


def check(data: bytes | str) -> None:
    """Both decoders return a message or raise a coded ProtocolError; nothing else."""
    for decode in DECODERS:
        try:
            msg = decode(data)
        except ProtocolError as e:
            assert e.code in ErrorCode.ALL, e.code
            assert isinstance(e.message, str) and e.message
            if e.code != ErrorCode.BAD_FRAME:
                # A validator that crashed would surface without the field it choked on.
                assert e.field is not None and names_field(e.message, e.field), e.message
            continue
        check_reencodes(msg, decode, came_as_binary=isinstance(data, bytes))


def names_field(message: str, field: str) -> bool:
    """The message names ``field``: its whole path, or the op's path and the key."""
    parent, _, leaf = field.rpartition(".")
    return field in message or bool(parent) and f"'{parent}'" in message and f"'{leaf}'" in message


def check_reencodes(msg: Any, decode: Any, *, came_as_binary: bool) -> None:
    """An accepted message encodes in both envelopes (the server re-sends to either
    kind of peer), and decoding that loses nothing the envelope can carry."""
    for binary in (True, False):
        data = encode(msg, binary=binary)
        try:
            once = decode(data)
        except ProtocolError as e:
            # Known gap: an Arrow table with nested columns (list, struct) has no
            # row form that JSON frames accept; table cells there are scalars.
            assert came_as_binary and not binary, e.message
            assert "must be a null, boolean, number or string" in e.message, e.message
            continue
        assert type(once) is type(msg)
        assert encode(once, binary=binary) == data  # compares NaN-safely, unlike ==


# ------------------------------------------------------------------ seeds

_TABLE = pa.table({"a": [1, None], "b": ["x", None], "c": [0.5, 2.0]})
SEEDS: list[Any] = [
    Hello("alice", 1, since=3, id=1),
    OpBatch(
        4,
        3,
        (
            SetCells((1, 2), "a", (1, None)),
            Insert(_TABLE),
            Delete(where="a > 1"),
            FillNull("a", strategy="mean"),
        ),
        id="x",
    ),
    Presence({"cursor": [1, 2]}),
    Meta(b"\x00\x01"),
    Welcome("r", 1, "c", ({"id": 0, "name": "a", "dtype": "int64"},), _TABLE, b"\x02", limits={"n": 1}),
    Ack(2, 4, (7,), (Overwrite(1, "a", 2, "bob", 1),)),
    Delta(1, 2, ("alice",), upserts=_TABLE, deleted=(3,), meta=b"\x05"),
]
BINARY_SEEDS = [encode(m, binary=True) for m in SEEDS]
TEXT_SEEDS = [encode(m, binary=False) for m in SEEDS]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Any], alphabet: st.SearchStrategy[Any]) -> Any:
    """A valid frame with a few bytes (or characters) replaced, cut, or inserted."""
    data = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "cut", "insert", "truncate"]))
        piece = draw(alphabet)
        if kind == "replace":
            data = data[:i] + piece + data[i + 1 :]
        elif kind == "cut":
            data = data[:i] + data[i + draw(st.integers(1, 8)) :]
        elif kind == "insert":
            data = data[:i] + piece + data[i:]
        else:
            data = data[:i]
    return data


# ------------------------------------------------------------------ (a) random bytes


@FUZZ
@given(st.binary(max_size=256) | mutated(BINARY_SEEDS, st.binary(min_size=1, max_size=3)))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    check(data)


# ------------------------------------------------------------------ (b) random text


@FUZZ
@given(st.text(max_size=256) | mutated(TEXT_SEEDS, st.text(min_size=1, max_size=3)))
def test_random_text_raises_only_protocol_error(data: str) -> None:
    check(data)


# ------------------------------------------------------------------ corrupt Arrow IPC

_IPC_TABLE = pa.table(
    {
        "i": pa.array([1, None, 3], pa.int64()),
        "s": pa.array(["x", "yy", None]),
        "l": pa.array([[1], [], None], pa.list_(pa.int64())),
        "d": pa.array([1, None, 19000], pa.date32()),
    }
)
IPC_SEEDS = [table_to_ipc(_IPC_TABLE), table_to_ipc(_IPC_TABLE.slice(0, 0))]


@FUZZ
@given(mutated(IPC_SEEDS, st.binary(min_size=1, max_size=2)))
def test_corrupt_arrow_ipc_is_refused_or_usable(ipc: bytes) -> None:
    # Arrow IPC in a table field is refused by field, or is a table that is sound
    # all the way down and can be passed on to a JSON peer.
    frame = msgpack.packb(
        {"type": "op", "client_seq": 1, "base_seq": 0, "ops": [{"op": "insert", "rows": ipc}]}
    )
    try:
        msg = decode_client(frame)
    except ProtocolError as e:
        assert (e.code, e.field) == (ErrorCode.BAD_FIELD, "ops[0].rows"), e.message
        return
    assert isinstance(msg, OpBatch)
    table = msg.ops[0].rows
    table.validate(full=True)
    check_reencodes(msg, decode_client, came_as_binary=True)


# ------------------------------------------------------------------ (c) random maps
#
# Maps start close to valid (every field of the type, with plausible values) and
# are then perturbed: keys dropped, values swapped for junk, junk keys added. That
# reaches the field validators, not just the "unknown type" check.


def values(binary: bool) -> st.SearchStrategy[Any]:
    """Anything the envelope can carry: msgpack adds bytes; JSON adds huge integers."""
    ints = wire_ints(binary)
    leaves = (
        st.none()
        | st.booleans()
        | ints
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=8)
    )
    if binary:
        leaves = leaves | st.binary(max_size=8)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=12,
    )


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` four times in five, else ``bad``: most maps stay valid deep down."""
    return st.integers(0, 4).flatmap(lambda n: good if n else bad)


def wire_ints(binary: bool) -> st.SearchStrategy[int]:
    """Edge integers: any msgpack integer, and in JSON also past 64 bits."""
    return MSGPACK_INTS if binary else MSGPACK_INTS | BIG_INTS


def scalars(binary: bool) -> st.SearchStrategy[Any]:
    ints = st.integers(-5, 100) | wire_ints(binary)
    floats = st.floats(allow_nan=False, allow_infinity=False)
    return st.none() | st.booleans() | ints | floats | st.text(max_size=6)


def tables(binary: bool) -> st.SearchStrategy[Any]:
    """Row objects (JSON) or, in msgpack, also Arrow IPC built from them."""
    typed = st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "a": st.none() | st.integers(-5, 2**40),
                "b": st.none() | st.text(max_size=4),
                "c": st.none() | st.floats(allow_nan=False, allow_infinity=False),
                "_rid": st.integers(0, 50),
            },
        ),
        max_size=4,
    )
    untyped = st.lists(
        st.dictionaries(st.sampled_from(["a", "b", "c"]), scalars(binary), max_size=3), max_size=4
    )
    rows = mostly(typed, untyped)
    if not binary:
        return rows
    return mostly(rows | rows.map(_rows_to_ipc), st.binary(max_size=32))


def _rows_to_ipc(rows: list[dict[str, Any]]) -> Any:
    try:
        return table_to_ipc(pa.Table.from_pylist(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return rows


def rid_lists(binary: bool) -> st.SearchStrategy[Any]:
    return mostly(
        st.lists(st.integers(0, 20), max_size=4),
        st.lists(wire_ints(binary) | st.integers(-2, 20), max_size=4),
    )


def seqs(binary: bool) -> st.SearchStrategy[Any]:
    return mostly(st.integers(0, 100), st.integers(-2, -1) | wire_ints(binary))


def blobs(binary: bool) -> st.SearchStrategy[Any]:
    b64 = st.binary(max_size=16).map(lambda b: base64.b64encode(b).decode("ascii"))
    return (st.binary(max_size=16) | b64) if binary else mostly(b64, st.text(max_size=8))


def objects(binary: bool) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.text(max_size=6), values(binary), max_size=3)


NAMES = mostly(st.text(min_size=1, max_size=6), st.just(""))
COLS = mostly(NAMES | st.integers(0, 5), st.integers(-2, -1))
DTYPES = st.sampled_from(["int64", "float64", "string", "bool", ""])
STRATEGIES = mostly(st.sampled_from(FILL_STRATEGIES), st.sampled_from(["average", ""]))
EXCLUSIVE = (("rows", "where"), ("default", "expr"), ("value", "strategy"))


def op_fields(binary: bool) -> dict[str, dict[str, st.SearchStrategy[Any]]]:
    """Plausible fields for each op; exclusive ones ('rows'/'where', ...) are all offered."""
    sc = scalars(binary)
    return {
        "set": {
            "rows": rid_lists(binary),
            "col": COLS,
            "values": st.lists(sc, max_size=4) | sc,
            "if_unchanged": st.booleans(),
        },
        "insert": {"rows": tables(binary)},
        "delete": {"rows": rid_lists(binary), "where": NAMES},
        "add_column": {"name": NAMES, "dtype": DTYPES, "default": sc, "expr": NAMES},
        "drop_column": {"col": COLS},
        "rename_column": {"col": COLS, "name": NAMES},
        "cast_column": {"col": COLS, "dtype": DTYPES, "strict": st.booleans()},
        "fill_null": {"col": COLS, "value": sc, "strategy": STRATEGIES},
        "restore_rows": {"rows": tables(binary)},
        "restore_column": {
            "id": seqs(binary),
            "name": NAMES,
            "dtype": DTYPES,
            "position": seqs(binary),
            "values": tables(binary),
        },
    }


def message_fields(binary: bool) -> dict[str, dict[str, st.SearchStrategy[Any]]]:
    """Plausible fields for each message type ('presence' and 'meta' serve both sides)."""
    ids = st.none() | seqs(binary) | st.text(max_size=4)
    seq = seqs(binary)
    schema = st.lists(st.fixed_dictionaries({"id": seq, "name": NAMES, "dtype": DTYPES}), max_size=3)
    overwrite = st.fixed_dictionaries(
        {"rid": seq, "column": NAMES, "value": scalars(binary), "by": NAMES, "seq": seq}
    )
    undo = {"client_seq": seq, "base_seq": seq, "id": ids}
    return {
        "hello": {
            "client": NAMES,
            "version": st.just(1) | seq,
            "since": seq,
            "id": ids,
            "codecs": st.lists(st.sampled_from(["zstd", "lz4", "brotli"]) | NAMES, max_size=3),
        },
        "op": {
            "client_seq": seq,
            "base_seq": seq,
            "id": ids,
            "ops": st.lists(op_maps(binary), min_size=1, max_size=2),
        },
        "undo": undo,
        "redo": undo,
        "presence": {
            "state": objects(binary),
            "id": ids,
            "update": blobs(binary),
            "states": st.dictionaries(NAMES, objects(binary) | st.none(), max_size=3),
        },
        "meta": {"update": blobs(binary), "id": ids, "re": ids},
        "ping": {"id": ids},
        "commit": {"message": NAMES, "id": ids},
        "query": {
            "kind": st.sampled_from(["diff", "log", "junk"]),
            "from": NAMES,
            "to": NAMES,
            "limit": seq,
            "id": ids,
        },
        "subscribe": {
            "view": NAMES,
            "config": st.fixed_dictionaries(
                {},
                optional={
                    "group_by": st.lists(NAMES, max_size=2) | NAMES,
                    "columns": st.lists(NAMES, max_size=2),
                    "aggregates": st.dictionaries(NAMES, NAMES | seq, max_size=2),
                    "filter": st.lists(st.lists(NAMES | scalars(binary), max_size=4), max_size=2),
                    "sort": st.lists(st.lists(NAMES, max_size=3), max_size=2),
                    "expressions": st.dictionaries(NAMES, NAMES, max_size=2),
                    "group_rollup_mode": st.sampled_from(["flat", "junk"]),
                    "junk": NAMES,
                },
            )
            | objects(binary),
            "viewport": st.fixed_dictionaries({"start_row": seq, "end_row": seq}) | objects(binary),
            "id": ids,
        },
        "unsubscribe": {"view": NAMES, "id": ids},
        "view": {
            "view": NAMES,
            "kind": st.sampled_from(["snapshot", "update", "closed", "junk"]),
            "seq": seq,
            "data": tables(binary),
            "rows": seq,
            "reason": NAMES,
            "re": ids,
            "config": st.fixed_dictionaries({}, optional={"columns": st.lists(NAMES, max_size=2)})
            | objects(binary),
        },
        "result": {
            "kind": NAMES,
            "tables": st.dictionaries(NAMES, tables(binary), max_size=2),
            "data": objects(binary),
            "re": ids,
        },
        "committed": {
            "commit": NAMES,
            "seq": seq,
            "rows": seq,
            "message": NAMES,
            "author": NAMES,
            "time": st.floats(min_value=0, max_value=2e9),
            "parents": st.lists(NAMES, max_size=2),
            "re": ids,
        },
        "welcome": {
            "room": NAMES,
            "seq": seq,
            "client": NAMES,
            "schema": schema,
            "snapshot": tables(binary),
            "meta": blobs(binary),
            "role": st.sampled_from(["editor", "viewer"]),
            "resumed": st.booleans(),
            "reason": st.sampled_from(["join", "resume", "resync"]),
            "limits": objects(binary),
            "re": ids,
        },
        "ack": {
            "seq": seq,
            "client_seq": seq,
            "rids": rid_lists(binary),
            "overwritten": st.lists(overwrite, max_size=2),
            "duplicate": st.booleans(),
            "re": ids,
        },
        "error": {
            "code": st.sampled_from(sorted(ErrorCode.ALL)),
            "message": NAMES,
            "details": objects(binary),
            "re": ids,
        },
        "delta": {
            "seq_from": seq,
            "seq_to": seq,
            "by": st.lists(NAMES, max_size=3),
            "upserts": tables(binary),
            "deleted": rid_lists(binary),
            "schema": schema,
            "meta": blobs(binary),
        },
        "pong": {"re": ids},
    }


@st.composite
def perturbed(
    draw: st.DrawFn,
    tag: str,
    catalog: dict[str, dict[str, st.SearchStrategy[Any]]],
    binary: bool,
    favour: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A map for a real or junk ``tag`` value, with plausible fields, then a few perturbations."""
    junk = values(binary)
    name = draw(mostly(st.sampled_from([*sorted(catalog), *favour]), NAMES | junk))
    fields = catalog.get(name, {}) if isinstance(name, str) else {}
    d: dict[Any, Any] = {tag: name}
    for key, strategy in fields.items():
        if draw(st.integers(0, 9)):  # most fields present
            d[key] = draw(strategy)
    for pair in EXCLUSIVE:  # mostly keep one of two exclusive fields
        if all(k in d for k in pair) and draw(st.integers(0, 3)):
            del d[pair[draw(st.integers(0, 1))]]
    if name == "set" and isinstance(d.get("rows"), list) and isinstance(d.get("values"), list):
        if draw(st.integers(0, 3)):  # mostly one value per row
            d["values"] = (d["values"] + [None] * len(d["rows"]))[: len(d["rows"])]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        kind = draw(st.sampled_from(["drop", "junk", "extra"])) if d else "extra"
        key = draw(st.sampled_from(sorted(d, key=str))) if kind != "extra" else draw(NAMES)
        if kind == "drop":
            d.pop(key, None)
        else:
            d[key] = draw(junk)
    return d


def op_maps(binary: bool) -> st.SearchStrategy[dict[str, Any]]:
    return perturbed("op", op_fields(binary), binary)


def message_maps(binary: bool) -> st.SearchStrategy[dict[str, Any]]:
    # Op batches hold the most validation, so they come up more often.
    return perturbed("type", message_fields(binary), binary, favour=("op",) * 3)


def test_fuzz_catalog_knows_every_field() -> None:
    # New message types, ops and fields must be fuzzed too: the tables above follow the catalogs.
    for binary in (True, False):
        msgs, ops = message_fields(binary), op_fields(binary)
        assert set(msgs) == {*CLIENT_MESSAGES, *SERVER_MESSAGES}
        assert set(ops) == set(OP_TYPES)
        for catalog in (CLIENT_MESSAGES, SERVER_MESSAGES):
            for name, cls in catalog.items():
                # A Python keyword field (``from_``) is its wire key without the underscore.
                assert {fld.name.rstrip("_") for fld in dataclasses.fields(cls)} <= set(msgs[name]), name
        for name, cls in OP_TYPES.items():
            assert {fld.name for fld in dataclasses.fields(cls)} <= set(ops[name]), name


@FUZZ
@given(message_maps(binary=True))
def test_random_msgpack_maps_raise_only_protocol_error(wire: dict[str, Any]) -> None:
    check(msgpack.packb(wire, use_bin_type=True))


@FUZZ
@given(message_maps(binary=False))
def test_random_json_maps_raise_only_protocol_error(wire: dict[str, Any]) -> None:
    check(json.dumps(wire))


def test_seed_frames_decode() -> None:
    # The mutations above start from real frames, so the seeds themselves must be valid.
    for msg, data, text in zip(SEEDS, BINARY_SEEDS, TEXT_SEEDS):
        decode = decode_client if type(msg) in CLIENT_MESSAGES.values() else decode_server
        assert decode(data) == msg
        assert type(decode(text)) is type(msg)
