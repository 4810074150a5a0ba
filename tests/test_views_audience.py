"""Tables per audience (issue 11 §2): only the audience's columns and rows, kept in step by a filtered stream.

Identity (the next issue) will give sessions their audiences; here a
:class:`RoomViews` is driven directly, with the real views process, states
and deltas made by the pure ops (as a room's tick makes them), and sessions
that carry an audience. Waits are on messages, never on sleeps.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pytest

from protocol import Op, SetCells, Subscribe, Unsubscribe, View
from server.ops import State, apply, normalize_frame
from server.perspective.audience import expression_columns, needed_columns, stream_for
from server.perspective.service import LiveViews
from server.rooms.deltas import DeltaBuilder
from server.rooms.outbound import EVERYONE, Audience
from tests.conftest import timeout

SECRET = "salary"
MINE = Audience(columns=frozenset({"name", "region", "qty"}), rows="region = 'EU'")
NARROW = {
    "group_by": ["region"],
    "columns": [SECRET],
    "aggregates": {SECRET: "median"},
}  # Perspective: a median (the frame's engine serves count, sum, mean, max and min)


@dataclass(eq=False)
class FakeSession:
    client: str
    audience: Audience = EVERYONE
    closed: bool = False


@dataclass
class Harness:
    """A room's state and seq, and what its views sent."""

    state: State
    seq: int = 0
    sent: list[tuple[Any, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def current(self) -> tuple[State, int]:
        return self.state, self.seq

    def send(self, session: Any, msg: Any, droppable: bool) -> None:
        self.sent.append((session, msg))
        self.arrived.set()

    def tick(self, ops: list[Op]) -> Any:
        builder = DeltaBuilder()
        before = after = self.state
        for op in ops:
            applied = apply(after, op)
            builder.add(applied.effect)
            after = applied.state
        self.state, self.seq = after, self.seq + 1
        return builder.build(before, after, self.seq, self.seq, ("u",), None)

    async def next_view(self, session: Any, view: str) -> View:
        while True:
            for i, (s, msg) in enumerate(self.sent):
                if s is session and isinstance(msg, View) and msg.view == view:
                    del self.sent[i]
                    return msg
                if s is session and getattr(msg, "type", None) == "error":
                    del self.sent[i]
                    raise AssertionError(f"error: {msg}")
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout(20))


def _state() -> State:
    df = pl.DataFrame(
        {
            "name": ["ann", "bob", "cid", "dan"],
            "region": ["EU", "US", "EU", "US"],
            "qty": [1, 2, 3, 4],
            SECRET: [100.0, 200.0, 300.0, 400.0],
        }
    )
    frame, catalog = normalize_frame(df)
    return State(frame, catalog, df.height)


def test_needed_columns_and_expression_names() -> None:
    assert needed_columns({}) is None  # no columns: a view shows them all
    config = {
        "columns": ["x", "qty"],
        "group_by": ["region"],
        "sort": [["name", "asc"]],
        "filter": [["qty", ">", 1]],
        "expressions": {"x": '"qty" * 2 + "a\\"b"'},
    }
    assert needed_columns(config) == {"qty", "region", "name", 'a"b'}
    assert expression_columns("'not a column' + \"qty\"") == {"qty"}


def test_the_stream_moves_rows_across_the_predicate() -> None:
    h = Harness(_state())
    delta = h.tick([SetCells((0, 1), "region", ("US", "EU"))])  # ann leaves EU, bob enters
    ((removed, upserts),) = stream_for([delta], h.state, MINE, None)
    assert removed == [0]
    assert upserts is not None and upserts.column_names == ["_rid", "name", "region", "qty"]
    assert upserts.to_pylist() == [{"_rid": 1, "name": "bob", "region": "EU", "qty": 2}]
    delta = h.tick([SetCells((2,), SECRET, (1.0,))])  # only a hidden column: nothing to send
    assert stream_for([delta], h.state, Audience(columns=frozenset({"name"})), None) == []


async def test_a_table_per_audience_holds_only_its_columns_and_rows() -> None:
    h = Harness(_state())
    views = LiveViews()
    room = views("staff/main", h.current, lambda: None, h.send)
    alice, boss = FakeSession("alice", MINE), FakeSession("boss")
    try:
        await room.subscribe(alice, Subscribe("mine", {"columns": ["name", "qty"], "sort": [["qty", "asc"]]}))
        snap = await h.next_view(alice, "mine")
        assert snap.kind == "snapshot" and snap.data is not None
        assert snap.data.column("name").to_pylist() == ["ann", "cid"]  # EU rows only
        boss_view = {"group_by": ["name"], "columns": [SECRET], "aggregates": {SECRET: "median"}}
        await room.subscribe(boss, Subscribe("all", boss_view))
        everyone = await h.next_view(boss, "all")
        assert everyone.data is not None and everyone.data.num_rows == 4

        held = await views.process.stats()
        mine = next(v for k, v in held.items() if k.startswith("staff/main#"))
        assert SECRET not in mine["columns"] and mine["rows"] == 2  # not in its schema at all
        assert SECRET in held["staff/main"]["columns"]

        # A hidden column named anywhere, in an expression too, is an unknown column.
        for config in (
            {"columns": ["name", SECRET]},
            {"expressions": {"pay": f'"{SECRET}" * 2'}, "columns": ["pay"]},
        ):
            await room.subscribe(alice, Subscribe("peek", config, id=9))
            err = next(m for s, m in h.sent if s is alice and getattr(m, "type", None) == "error")
            h.sent.clear()
            assert err.code == "no_such_column" and err.details["column"] == SECRET
            assert SECRET not in [c for c in err.message.split("columns: ")[-1].split(", ")]

        # bob moves into EU, ann out of it: the audience's view follows.
        room.on_delta(h.tick([SetCells((1, 0), "region", ("EU", "US"))]))
        update = await h.next_view(alice, "mine")
        assert update.kind == "update" and update.data is not None
        assert update.data.column("name").to_pylist() == ["bob", "cid"]
        room.on_delta(h.tick([SetCells((2,), "region", ("US",))]))
        update = await h.next_view(alice, "mine")
        assert update.data is not None and update.data.column("name").to_pylist() == ["bob"]
    finally:
        await room.close()
        await views.close()


@pytest.mark.parametrize("ttl", [0.05])
async def test_unused_tables_and_columns_go_after_the_ttl(ttl: float) -> None:
    h = Harness(_state())
    views = LiveViews(ttl=ttl)
    room = views("staff/main", h.current, lambda: None, h.send)
    s = FakeSession("s")
    try:
        wide = {
            "group_by": ["name"],
            "columns": ["qty", SECRET],
            "aggregates": {"qty": "sum", SECRET: "median"},
        }
        await room.subscribe(s, Subscribe("wide", wide, id=1))
        await h.next_view(s, "wide")
        await room.subscribe(s, Subscribe("narrow", NARROW, id=2))
        await h.next_view(s, "narrow")
        held = sorted((await views.process.stats())["staff/main"]["columns"])
        assert held == ["_rid", "name", "qty", "region", SECRET]  # widened for the second view
        assert (await h.next_view(s, "wide")).kind == "snapshot"  # the first view's fresh snapshot
        await room.unsubscribe(s, Unsubscribe("wide", id=3))
        closed = await h.next_view(s, "wide")
        assert closed.kind == "closed"
        fresh = await h.next_view(s, "narrow")  # rebuilt without the unused columns: a fresh snapshot
        assert fresh.kind == "snapshot"
        assert sorted((await views.process.stats())["staff/main"]["columns"]) == ["_rid", "region", SECRET]
        await room.unsubscribe(s, Unsubscribe("narrow", id=4))
        assert (await h.next_view(s, "narrow")).kind == "closed"
        await asyncio.wait_for(room.tables[EVERYONE].dropped.wait(), timeout(10))  # unused for ttl
        assert "staff/main" not in await views.process.stats()
        again = await _reopen(room, h, s)  # and built again on next need
        assert again.kind == "snapshot"
    finally:
        await room.close()
        await views.close()


async def _reopen(room: Any, h: Harness, s: FakeSession) -> View:
    await room.subscribe(s, Subscribe("back", NARROW, id=5))
    return await h.next_view(s, "back")


async def test_a_fast_sorted_viewport_equals_perspectives_after_random_edits() -> None:
    """The same sorted plain view, once served from the frame (EVERYONE) and once by Perspective
    (an audience that sees every column, so it gets a Perspective table): equal after every tick."""
    import random

    h = Harness(_state())
    views = LiveViews()
    room = views("staff/main", h.current, lambda: None, h.send)
    fast, slow = (
        FakeSession("fast"),
        FakeSession("slow", Audience(columns=frozenset({"name", "region", "qty", SECRET}))),
    )
    config = {"columns": ["name", "qty", SECRET], "sort": [["qty", "desc"], ["name", "asc"]]}
    rng = random.Random(11)
    try:
        await room.subscribe(fast, Subscribe("v", dict(config), viewport=(0, 3), id=1))
        await room.subscribe(slow, Subscribe("v", dict(config), viewport=(0, 3), id=1))
        a, b = await h.next_view(fast, "v"), await h.next_view(slow, "v")
        subs = {s.session.client: s for s in room.subs.values()}
        assert subs["fast"].fast is not None and subs["slow"].fast is None and subs["slow"].vkey
        for _ in range(25):
            assert a.data is not None and b.data is not None and a.data.equals(b.data), (a.data, b.data)
            assert a.rows == b.rows
            rid = rng.randrange(4)
            col, value = rng.choice([("qty", rng.randrange(-3, 6)), (SECRET, rng.choice([None, 1.5, 9.0]))])
            room.on_delta(h.tick([SetCells((rid,), col, (value,))]))
            await asyncio.wait_for(room.settled(), timeout(20))
            a, b = _latest(h, fast, a), _latest(h, slow, b)
    finally:
        await room.close()
        await views.close()


def _latest(h: Harness, session: FakeSession, last: View) -> View:
    """The view's newest message for ``session`` (``last`` if none came: its content did not change)."""
    mine = [m for s, m in h.sent if s is session and isinstance(m, View)]
    h.sent[:] = [(s, m) for s, m in h.sent if s is not session]
    return mine[-1] if mine else last
