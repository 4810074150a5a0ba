"""Roles against generated op batches (issue 12 §2; docs/security.md "Roles", PROTOCOL.md §3-4, §11).

End to end: a real ``auth="token"`` server holding a 200-row demo ``sales``,
a viewer and an editor speaking raw protocol frames (tests/wire.py), and an
admin client whose mirror is the reference. Hypothesis draws messages: op
batches mixing set, insert, delete (rows and where), fill_null, add_column
(default and expr), drop_column, rename_column and cast_column, plus undo,
redo and commit, over the demo's columns and rids and some that do not
exist.

- A viewer's every message is answered ``forbidden`` (with ``details.role``
  and ``details.needed``), nothing changes, and its connection still reads.
- An editor's batch with a schema op is ``forbidden`` as a whole; a batch of
  data ops applies, or is rejected with another code and changes nothing;
  the schema never changes.

The role each message needs is written down here from the issue's table,
not taken from ``server.auth.roles``, so the test checks that table too.
"""

from __future__ import annotations

import datetime as dt
import itertools
import string
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from client import connect
from client.room import Room
from server.demo import demo_sales
from server.storage.auth_types import Grant
from tests.conftest import LiveServer, timeout
from tests.helpers import signed_in
from tests.wire import RawPeer

ROWS = 200
DEMO = demo_sales(ROWS)
RIDS = list(range(ROWS))  # a new dataset's rids are 0..n-1 (checked by the fixture)
MISSING_RIDS = [ROWS + 10_000, 2**40]


def _family(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    return "str"


FAMILIES = {name: _family(dtype) for name, dtype in DEMO.schema.items()}
NAMES = list(FAMILIES)
# Column references: names, server ids (the demo's are 0..9), and ones that name nothing.
COL_REFS = st.sampled_from(NAMES) | st.integers(0, len(NAMES) + 2) | st.sampled_from(["nope", "Qty"])
SCHEMA_OPS = frozenset({"add_column", "drop_column", "rename_column", "cast_column"})
# The table: what each role may send (an op batch needs its strongest op's role).
EDITOR_MESSAGES = frozenset({"undo", "redo", "commit"})
EDITOR_OPS = frozenset({"set", "insert", "delete", "fill_null"})

TEXT = st.text(alphabet=string.ascii_letters + string.digits + " -", max_size=6)
FITTING: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(-1000, 1000),
    "float": st.floats(-1e6, 1e6, allow_nan=False),
    "str": TEXT,
    "bool": st.booleans(),
    "date": st.dates(dt.date(2000, 1, 1), dt.date(2030, 12, 31)).map(dt.date.isoformat),
    "datetime": st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2030, 1, 1)).map(dt.datetime.isoformat),
}
WIRE_KINDS = [FITTING[k] for k in ("int", "float", "str", "bool")]
ANY_SCALAR = st.sampled_from(WIRE_KINDS).flatmap(lambda s: s)


def kind_for(col: object) -> st.SearchStrategy[st.SearchStrategy[Any]]:
    """The values of one wire type for ``col``: its own, mostly, else another (a bad_value for an editor).

    One wire type per op, so the op decodes (a table column of mixed types is
    ``bad_field`` before any role check).
    """
    family = FAMILIES.get(col) if isinstance(col, str) else None
    own = [FITTING[family]] * 8 if family is not None else []
    return st.sampled_from(own + WIRE_KINDS)


def rids(min_size: int = 1) -> st.SearchStrategy[list[int]]:
    pick = st.sampled_from(RIDS) | st.sampled_from(MISSING_RIDS)
    return st.lists(pick, min_size=min_size, max_size=4, unique=True)


@st.composite
def set_op(draw: st.DrawFn) -> dict[str, Any]:
    col = draw(COL_REFS)
    rows = draw(rids())
    kind = draw(kind_for(col))
    if draw(st.booleans()):  # one scalar for every row
        return {"op": "set", "rows": rows, "col": col, "values": draw(kind)}
    return {"op": "set", "rows": rows, "col": col, "values": [draw(kind | st.none()) for _ in rows]}


@st.composite
def insert_op(draw: st.DrawFn) -> dict[str, Any]:
    cols = draw(st.lists(st.sampled_from([*NAMES, "nope"]), min_size=1, max_size=4, unique=True))
    kinds = {c: draw(kind_for(c)) | st.none() for c in cols}
    n = draw(st.integers(1, 3))
    return {"op": "insert", "rows": [{c: draw(kinds[c]) for c in cols} for _ in range(n)]}


WHERES = [
    "qty > 45",
    "region = 'EU' AND paid",
    "price < 0",
    "note IS NULL AND qty < 3",
    "nope > 1",  # no_such_column
    "qty >",  # bad_expr
]
EXPRS = ["price * qty", "upper(region)", "qty + 1", "price / nope", "qty +"]
DTYPES = ["Int64", "Int32", "Float64", "String", "Boolean", "Date", "Datetime", "Nope"]
NEW_NAMES = st.sampled_from(["extra", "total", "qty", "_rid", "région"])

OP_STRATEGIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "set": set_op(),
    "insert": insert_op(),
    "delete": st.one_of(
        rids().map(lambda r: {"op": "delete", "rows": r}),
        st.sampled_from(WHERES).map(lambda w: {"op": "delete", "where": w}),
    ),
    "fill_null": st.one_of(
        st.builds(lambda c, v: {"op": "fill_null", "col": c, "value": v}, COL_REFS, ANY_SCALAR),
        st.builds(
            lambda c, s: {"op": "fill_null", "col": c, "strategy": s},
            COL_REFS,
            st.sampled_from(["forward", "backward", "mean", "zero", "mode"]),
        ),
    ),
    "add_column": st.one_of(
        st.builds(
            lambda n, d, v: {"op": "add_column", "name": n, "dtype": d, "default": v},
            NEW_NAMES,
            st.sampled_from(DTYPES),
            st.none() | ANY_SCALAR,
        ),
        st.builds(lambda n, e: {"op": "add_column", "name": n, "expr": e}, NEW_NAMES, st.sampled_from(EXPRS)),
    ),
    "drop_column": st.builds(lambda c: {"op": "drop_column", "col": c}, COL_REFS),
    "rename_column": st.builds(
        lambda c, n: {"op": "rename_column", "col": c, "name": n}, COL_REFS, NEW_NAMES
    ),
    "cast_column": st.builds(
        lambda c, d, s: {"op": "cast_column", "col": c, "dtype": d, "strict": s},
        COL_REFS,
        st.sampled_from(DTYPES),
        st.booleans(),
    ),
}
DATA_OPS = st.sampled_from(sorted(EDITOR_OPS)).flatmap(lambda k: OP_STRATEGIES[k])
ANY_OP = st.sampled_from(sorted(OP_STRATEGIES)).flatmap(lambda k: OP_STRATEGIES[k])

MESSAGE = st.one_of(
    # Batches of data ops only, and batches of anything (a schema op among them, usually).
    st.lists(DATA_OPS, min_size=1, max_size=4).map(lambda ops: {"type": "op", "ops": ops}),
    st.lists(ANY_OP, min_size=1, max_size=4).map(lambda ops: {"type": "op", "ops": ops}),
    st.sampled_from([{"type": "undo"}, {"type": "redo"}, {"type": "commit", "message": "roles"}]),
)
BATCHES = st.lists(MESSAGE, min_size=1, max_size=6)


def needed(msg: dict[str, Any]) -> str:
    """The weakest role that may send ``msg``, by the issue's table."""
    if msg["type"] in EDITOR_MESSAGES:
        return "editor"
    assert msg["type"] == "op"
    kinds = {op["op"] for op in msg["ops"]}
    assert kinds <= EDITOR_OPS | SCHEMA_OPS
    return "admin" if kinds & SCHEMA_OPS else "editor"


@dataclass
class World:
    """One server, its users and their peers, shared by every example of one test."""

    srv: LiveServer
    tokens: dict[str, str]  # user name -> token
    mirror: Room  # the admin's live mirror: the reference
    schema: list[dict[str, Any]]
    frame: pl.DataFrame
    peers: dict[tuple[str, str], RawPeer] = field(default_factory=dict)
    ids: Callable[[], int] = field(default_factory=lambda: itertools.count(1).__next__)
    base_seq: int = 0

    async def peer(self, user: str, client: str = "c") -> RawPeer:
        """``user``'s joined connection as ``client``: opened on first use, then the same one.

        Only the tests that use a peer open it: a peer nobody reads stops
        reading its socket once its queue fills, and then cannot close.
        """
        peer = self.peers.get((user, client))
        if peer is None:
            peer = self.peers[user, client] = await _joined(self.srv, self.tokens[user], client)
        return peer

    async def send(self, peer: RawPeer, msg: dict[str, Any]) -> Any:
        """Send ``msg`` with a fresh id and client_seq; return its reply (ack, committed or error)."""
        n = self.ids()
        out = {**msg, "id": f"m{n}"}
        if msg["type"] in ("op", "undo", "redo"):
            out["client_seq"] = n
        if msg["type"] == "op":
            out["base_seq"] = self.base_seq
        await peer.send(out)
        while True:  # deltas, presence and others' commits may come first
            reply = await peer.recv(timeout(15))
            if reply.type in ("ack", "committed", "error") and getattr(reply, "re", None) == out["id"]:
                return reply

    async def snapshot(self) -> tuple[list[dict[str, Any]], pl.DataFrame]:
        """The dataset as a fresh admin client sees it: schema and frame."""
        async with connect(self.srv.url, "sales", token=self.tokens["ada"]) as room:
            return room.schema, room.frame


async def _joined(srv: LiveServer, token: str, client: str) -> RawPeer:
    peer = await RawPeer.open(srv.url, "sales", additional_headers={"Authorization": f"Bearer {token}"})
    await peer.hello(client)
    return peer


@pytest.fixture
async def world(make_server: Any) -> AsyncIterator[World]:
    async with make_server(auth="token", frames={"sales": DEMO}) as srv:
        roles = {"ada": "admin", "vic": "viewer", "eve": "editor", "ann": "admin"}
        tokens = {user: await signed_in(srv, user, role) for user, role in roles.items()}
        async with connect(srv.url, "sales", token=tokens["ada"]) as mirror:
            assert mirror.frame.get_column("_rid").to_list() == RIDS
            assert [c["name"] for c in mirror.schema] == NAMES
            assert [c["id"] for c in mirror.schema] == list(range(len(NAMES)))
            w = World(srv, tokens, mirror, mirror.schema, mirror.frame)
            try:
                yield w
            finally:
                for peer in w.peers.values():
                    await peer.close()


EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@EXAMPLES
@given(batch=BATCHES)
async def test_a_viewer_is_refused_every_write_and_changes_nothing(world: World, batch: list[Any]) -> None:
    room, viewer = world.srv.room(), await world.peer("vic")
    for msg in batch:
        reply = await world.send(viewer, msg)
        assert reply.type == "error" and reply.code == "forbidden", (msg, reply)
        assert reply.details == {"role": "viewer", "needed": needed(msg)}, (msg, reply)
        assert "viewer" in reply.message and needed(msg) in reply.message
    assert room.core.seq == 0
    schema, frame = await world.snapshot()
    assert schema == world.schema
    assert frame.equals(world.frame)
    # Still joined, and still reads: a ping, and a query.
    await viewer.send({"type": "ping", "id": "p"})
    await viewer.recv_until("pong", within=timeout(10), re="p")
    await viewer.send({"type": "query", "id": "q", "kind": "log"})
    await viewer.recv_until("result", within=timeout(10), re="q")


@EXAMPLES
@given(batch=BATCHES)
async def test_an_editor_edits_data_but_never_the_schema(world: World, batch: list[Any]) -> None:
    room, editor = world.srv.room(), await world.peer("eve")
    for msg in batch:
        seq, frame = room.core.seq, room.state.frame.clone()
        reply = await world.send(editor, msg)
        event(f"editor {msg['type']} needing {needed(msg)}: {getattr(reply, 'code', reply.type)}")
        if needed(msg) == "admin":
            assert reply.type == "error" and reply.code == "forbidden", (msg, reply)
            assert reply.details == {"role": "editor", "needed": "admin"}, (msg, reply)
        else:
            assert reply.type != "error" or reply.code != "forbidden", (msg, reply)
        if reply.type == "error":  # atomic: nothing of the batch applied
            assert room.core.seq == seq, (msg, reply)
            assert room.state.frame.equals(frame), (msg, reply)
        if reply.type == "ack":
            world.base_seq = reply.seq
            await world.mirror.wait_for_seq(reply.seq)
        assert world.mirror.schema == world.schema, (msg, reply)
        assert world.mirror.frame.columns == ["_rid", *NAMES]
    await world.mirror.wait_for_seq(room.core.seq)
    assert world.mirror.frame.equals(room.state.frame)


async def test_the_generated_forms_apply_for_an_admin(world: World) -> None:
    """The strategies' valid forms are real ops: an admin's batch of each kind is acked."""
    admin = await world.peer("ada")
    batches = [
        [{"op": "set", "rows": [0, 1], "col": "qty", "values": [3, None]}],
        [{"op": "set", "rows": [2], "col": "date", "values": "2025-02-03"}],
        [{"op": "insert", "rows": [{"region": "EU", "updated_at": "2025-02-03T04:05:06"}]}],
        [{"op": "delete", "rows": [3]}, {"op": "delete", "where": WHERES[0]}],
        [{"op": "fill_null", "col": "note", "value": "x"}, {"op": "fill_null", "col": 4, "strategy": "zero"}],
        [{"op": "add_column", "name": "extra", "dtype": "Int64", "default": 1}],
        [{"op": "add_column", "name": "total", "expr": EXPRS[0]}],
        [{"op": "rename_column", "col": "extra", "name": "région"}, {"op": "drop_column", "col": "région"}],
        [{"op": "cast_column", "col": "qty", "dtype": "Int64", "strict": True}],
    ]
    for ops in batches:
        reply = await world.send(admin, {"type": "op", "ops": ops})
        assert reply.type == "ack", (ops, reply)
    for msg in ({"type": "undo"}, {"type": "redo"}, {"type": "commit", "message": "roles"}):
        reply = await world.send(admin, msg)
        assert reply.type in ("ack", "committed"), (msg, reply)


async def test_an_undo_is_checked_against_what_it_applies(world: World) -> None:
    """Regression: an admin made editor could undo an add_column (a drop_column) or redo one.

    ``undo`` and ``redo`` need editor, but the batch they pop may hold schema
    ops this client made as admin; that batch needs admin when it applies,
    and a refused one stays on its stack.
    """
    srv, auth = world.srv, world.srv.app.state.auth
    ann = await world.peer("ann")
    room = srv.room()
    for ops in (
        [{"op": "add_column", "name": "extra", "dtype": "Int64"}],
        [{"op": "add_column", "name": "total", "expr": "price * qty"}],
    ):
        assert (await world.send(ann, {"type": "op", "ops": ops})).type == "ack"
    assert (await world.send(ann, {"type": "undo"})).type == "ack"  # drops total; redo would add it
    columns, seq = room.state.frame.columns, room.core.seq

    async def regrant(role: str) -> None:
        await auth.store.put_grant(Grant("sales", "ann", role))
        auth.forget("ann")
        await auth.recheck()  # what the catalog poll does after a change, without waiting for it

    await regrant("editor")
    for kind, op in (("undo", "drop_column"), ("redo", "restore_column")):
        reply = await world.send(ann, {"type": kind})
        assert reply.type == "error" and reply.code == "forbidden", reply
        assert reply.details == {"role": "editor", "needed": "admin"}
        assert op in reply.message and "admin" in reply.message
    assert room.state.frame.columns == columns and room.core.seq == seq
    # A data edit is still the editor's to make and to undo; the refused entry is still there.
    set_qty = {"op": "set", "rows": [0], "col": "qty", "values": [7]}
    assert (await world.send(ann, {"type": "op", "ops": [set_qty]})).type == "ack"
    assert (await world.send(ann, {"type": "undo"})).type == "ack"
    await world.peers.pop(("ann", "c")).close()
    ann = await world.peer("ann")  # the same client id: its stacks survive a reconnect, and so does the check
    reply = await world.send(ann, {"type": "undo"})
    assert reply.type == "error" and reply.code == "forbidden", reply
    assert room.state.frame.columns == columns
    await regrant("admin")
    assert (await world.send(ann, {"type": "undo"})).type == "ack"
    assert "extra" not in room.state.frame.columns
