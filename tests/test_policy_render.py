"""Deltas rendered for a row predicate and hidden columns, tick by tick (server.rooms.narrow).

A mirror that applies each rendered delta (deletes, then upserts) must hold
exactly the audience's rows and columns of the room after every tick,
whether the renderer evaluates the predicate on the touched rows or looks
them up in the outbound's :class:`Visibility` masks, which it keeps in step
(with what the delta touched worked out as the outbound does, from the
tick's builder).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Delete, Delta, Insert, SetCells
from protocol.dtypes import RID
from server.ops import State, normalize_frame
from server.rooms.core import RoomCore, run_general
from server.rooms.deltas import DeltaBuilder
from server.rooms.narrow import Touched, Visibility, render_delta
from server.rooms.policy import Audience, narrow_state

OWNERS = ["a", "b", "c"]


def _state() -> State:
    df = pl.DataFrame({"owner": OWNERS * 4, "qty": list(range(12)), "note": [f"n{i}" for i in range(12)]})
    frame, catalog = normalize_frame(df)
    return State(frame, catalog, frame.height)


def _apply(mirror: pl.DataFrame, d: Delta) -> pl.DataFrame:
    if d.deleted:
        mirror = mirror.filter(~pl.col(RID).is_in(list(d.deleted)))
    if d.upserts is not None and d.upserts.num_rows:
        up = pl.from_arrow(d.upserts)
        assert isinstance(up, pl.DataFrame)
        old = mirror.filter(pl.col(RID).is_in(up[RID].to_list()))
        rest = mirror.filter(~pl.col(RID).is_in(up[RID].to_list()))
        if old.height:  # an update: its other columns stay as they were
            up = old.drop([c for c in up.columns if c != RID]).join(up, on=RID, how="right")
            up = up.select(mirror.columns)
        mirror = pl.concat([rest, up.select(mirror.columns)]).sort(RID)
    return mirror


edit = st.one_of(
    st.tuples(st.just("owner"), st.integers(0, 40), st.sampled_from(OWNERS)),
    st.tuples(st.just("qty"), st.integers(0, 40), st.integers(-5, 5)),
    st.tuples(st.just("note"), st.integers(0, 40), st.text("xyz", max_size=3)),
    st.tuples(st.just("insert"), st.sampled_from(OWNERS), st.integers(0, 9)),
    st.tuples(st.just("delete"), st.integers(0, 40), st.just(None)),
)


def _op(state: State, step: tuple[str, Any, Any]) -> Any:
    kind, a, b = step
    rids = state.frame[RID].to_list()
    if kind == "insert":
        return Insert(pa.table({"owner": [a], "qty": [b]}))
    if not rids:
        return None
    rid = rids[a % len(rids)]
    return Delete((rid,)) if kind == "delete" else SetCells((rid,), kind, (b,))


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.lists(edit, min_size=1, max_size=3), min_size=1, max_size=12))
def test_a_mirror_of_rendered_deltas_holds_exactly_the_audiences_rows(steps: list[Any]) -> None:
    core = RoomCore(_state())
    note = next(c.id for c in core.state.catalog.columns if c.name == "note")
    audiences = [
        Audience(rows="owner = 'a'", hide=frozenset({note})),
        # A predicate that reads no column (``current_user() = 'bob'``, bound): an insert
        # touches none of its columns, yet its row is new to the audience.
        Audience(rows="'bob' = 'bob'", hide=frozenset({note})),
    ]
    vis = Visibility()
    with_masks = {a: narrow_state(core.state, a).frame for a in audiences}
    without = dict(with_masks)
    for i, tick in enumerate(steps):
        before, builder = core.state, DeltaBuilder()
        for j, step in enumerate(tick):  # one tick: several batches, one delta
            op = _op(core.state, step)
            if op is None:
                continue
            result = run_general(core.state, core.clock, "c", core.seq, (op,))
            core.commit_general("c", i * 10 + j, result, builder, "op")
        core.flush()
        if core.state is before:
            continue
        delta = builder.build(before, core.state, core.seq, core.seq, ("c",), None)
        touched = Touched(delta, before, bool(builder.inserted))  # as the room's outbound makes it
        for a in audiences:
            mine = render_delta(delta, before, core.state, a, vis, touched)
            with_masks[a] = _apply(with_masks[a], mine)
            without[a] = _apply(without[a], render_delta(delta, before, core.state, a))
            expected = narrow_state(core.state, a).frame
            assert with_masks[a].equals(expected), (a, tick, with_masks[a], expected)
            assert without[a].equals(expected), (a, tick, without[a], expected)
