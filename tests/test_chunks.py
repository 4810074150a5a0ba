"""The chunk store and commits: exact round trips, content addressing, chunk sharing, atomic writes."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from protocol import AddColumn, CastColumn, Delete, DropColumn, Insert, Op, RenameColumn, SetCells
from server.ops import RID, Effect, OpError, State, apply, normalize_frame
from server.storage.chunks import ChunkStore, LocalFS, MemoryFS
from server.storage.commits import (
    CHUNK_RIDS,
    ChunkPool,
    dirty_ranges,
    load_state,
    manifest_id,
    write_commit,
)
from server.storage.types import Manifest

R = 4  # rids per chunk in these tests: 20 rows -> 5 chunks


def typed_frame(n: int = 20) -> pl.DataFrame:
    """One column of each common dtype, with nulls (and a NaN)."""
    utc = dt.UTC
    base = dt.datetime(2024, 1, 1, 12, 30, 15, 123456)
    return pl.DataFrame(
        {
            "i64": pl.Series([None if i % 5 == 0 else i * 1_000_000_007 for i in range(n)], dtype=pl.Int64),
            "i32": pl.Series([None if i % 4 == 1 else -i for i in range(n)], dtype=pl.Int32),
            "f64": pl.Series(
                [None if i % 6 == 2 else (float("nan") if i == 3 else i / 3) for i in range(n)],
                dtype=pl.Float64,
            ),
            "f32": pl.Series([None if i % 7 == 0 else i * 0.1 for i in range(n)], dtype=pl.Float32),
            "u8": pl.Series([None if i % 3 == 0 else i for i in range(n)], dtype=pl.UInt8),
            "s": pl.Series([None if i % 3 == 2 else f"é{i}" * (i % 4) for i in range(n)], dtype=pl.String),
            "b": pl.Series([None if i % 5 == 4 else i % 2 == 0 for i in range(n)], dtype=pl.Boolean),
            "d": pl.Series(
                [None if i % 4 == 3 else dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n)],
                dtype=pl.Date,
            ),
            "ts": pl.Series(
                [None if i % 6 == 5 else base + dt.timedelta(hours=i) for i in range(n)],
                dtype=pl.Datetime("us"),
            ),
            "ts_utc": pl.Series(
                [
                    None if i % 5 == 1 else (base + dt.timedelta(minutes=i)).replace(tzinfo=utc)
                    for i in range(n)
                ],
                dtype=pl.Datetime("us", "UTC"),
            ),
            "ts_paris": pl.Series(
                [None if i % 8 == 0 else (base + dt.timedelta(days=i)).replace(tzinfo=utc) for i in range(n)],
                dtype=pl.Datetime("us", "UTC"),
            ).dt.convert_time_zone("Europe/Paris"),
        }
    )


def make_state(n: int = 20) -> State:
    frame, catalog = normalize_frame(typed_frame(n))
    return State(frame, catalog, frame.height)


def commit(
    store: ChunkStore,
    state: State,
    parent: Manifest | None = None,
    dirty: set[int] | None = None,
    seq: int = 1,
) -> Manifest:
    return write_commit(
        store,
        state,
        dataset="ds",
        parent=parent,
        dirty=dirty,
        author="tester",
        message=f"seq {seq}",
        seq=seq,
        time=1_700_000_000.5,
        clients={"c1": seq},
        chunk_rids=R,
    )


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def stored(store: ChunkStore) -> set[str]:
    """The keys of every stored chunk, on disk or in memory."""
    if isinstance(store.fs, MemoryFS):
        return set(store.fs.blobs)
    return files(Path(store.fs.locate("x")).parent)


def assert_same_state(got: State, want: State) -> None:
    assert_frame_equal(got.frame, want.frame, check_exact=True)
    assert got.frame.schema == want.frame.schema
    assert got.frame.equals(want.frame)
    assert got.catalog == want.catalog
    assert got.next_rid == want.next_rid


@pytest.fixture(params=["files", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ChunkStore:
    """Both chunk stores run the same tests: files on disk, and bytes in memory (``--memory``)."""
    return ChunkStore(tmp_path / "chunks") if request.param == "files" else ChunkStore.memory()


# --------------------------------------------------------------------------- round trips


def test_round_trip_every_dtype_with_nulls(store: ChunkStore) -> None:
    state = make_state()
    m = commit(store, state)
    assert m.rows == 20 and len(m.chunks) == 5 and m.next_rid == 20 and m.next_col == 11
    assert [c["name"] for c in m.schema] == list(typed_frame().columns)
    assert {c["dtype"] for c in m.schema} >= {
        "Int64",
        "Int32",
        "Float64",
        "String",
        "Boolean",
        "Date",
        "Datetime",
        "Datetime[UTC]",
        "Datetime[Europe/Paris]",
    }
    assert_same_state(load_state(store, m), state)
    loaded = load_state(store, m, rechunk=True)
    assert_same_state(loaded, state)
    assert loaded.frame.n_chunks("all") == [1] * 12
    assert load_state(store, m).frame.get_column(RID).n_chunks() == 1  # ops read rids zero-copy


def test_round_trip_after_edits_with_gaps_in_rids(store: ChunkStore) -> None:
    state = make_state()
    for op in (
        Delete(rows=(0, 5, 6, 7, 8, 13)),
        SetCells((1, 19), "s", ("x", None)),
        Insert(pl.DataFrame({"i32": pl.Series([7, None], dtype=pl.Int32)}).to_arrow()),
        RenameColumn("f64", "ratio"),
        DropColumn("u8"),
        CastColumn("i32", "Float64"),
    ):
        state = apply(state, op).state
    m = commit(store, state)
    assert {(c.rid_lo, c.rid_hi) for c in m.chunks} == {(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 24)}
    assert_same_state(load_state(store, m), state)


def test_round_trip_empty_states(store: ChunkStore) -> None:
    state = make_state()
    empty_rows = apply(state, Delete(rows=tuple(range(20)))).state
    m = commit(store, empty_rows)
    assert m.chunks == () and m.rows == 0
    assert_same_state(load_state(store, m), empty_rows)

    frame, catalog = normalize_frame(pl.DataFrame())
    no_cols = State(frame, catalog, 0)
    assert_same_state(load_state(store, commit(store, no_cols)), no_cols)

    frame, catalog = normalize_frame(pl.DataFrame({"a": [1, 2, 3]}).drop("a"))
    no_cols_rows = State(frame, catalog, 3)
    assert_same_state(load_state(store, commit(store, no_cols_rows)), no_cols_rows)


@settings(max_examples=40, deadline=None)
@given(
    ints=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=0, max_size=30),
    data=st.data(),
)
def test_round_trip_random_values(ints: list[int | None], data: st.DataObject) -> None:
    n = len(ints)
    floats = data.draw(st.lists(st.one_of(st.none(), st.floats()), min_size=n, max_size=n))
    texts = data.draw(st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=n, max_size=n))
    days = data.draw(st.lists(st.one_of(st.none(), st.dates()), min_size=n, max_size=n))
    frame, catalog = normalize_frame(
        pl.DataFrame(
            {
                "i": pl.Series(ints, dtype=pl.Int64),
                "f": pl.Series(floats, dtype=pl.Float64),
                "t": pl.Series(texts, dtype=pl.String),
                "d": pl.Series(days, dtype=pl.Date),
            }
        )
    )
    state = State(frame, catalog, n)
    with tempfile.TemporaryDirectory() as tmp:
        s = ChunkStore(Path(tmp))
        assert_same_state(load_state(s, commit(s, state)), state)


def test_missing_column_in_old_chunk_reads_as_nulls(store: ChunkStore) -> None:
    state = make_state(6)
    m = commit(store, state)
    extra = {"id": 99, "name": "later", "dtype": "Int32"}
    m2 = replace(m, schema=(*m.schema, extra), next_col=100)
    got = load_state(store, m2)
    assert got.frame.get_column("later").dtype == pl.Int32
    assert got.frame.get_column("later").null_count() == 6
    assert got.frame.drop("later").equals(state.frame)


def test_chunk_stored_as_another_type_is_cast_on_load(store: ChunkStore) -> None:
    state = make_state(9)
    m = commit(store, state)
    schema = tuple({**c, "dtype": "Int64"} if c["name"] == "i32" else c for c in m.schema)
    got = load_state(store, replace(m, schema=schema))
    want = state.frame.with_columns(pl.col("i32").cast(pl.Int64))
    assert_frame_equal(got.frame, want, check_exact=True)


# --------------------------------------------------------------------------- content addressing


def test_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "chunks")
    root = Path(store.path("ab" * 32)).parents[1]
    state = make_state()
    m1 = commit(store, state)
    before = files(root)
    assert len(before) == 5
    for ref in m1.chunks:
        p = Path(store.path(ref.hash))
        assert p.read_bytes() and hashlib.sha256(p.read_bytes()).hexdigest() == ref.hash
        assert p.parent.name == ref.hash[:2] and p.name == ref.hash[2:] + ".parquet"
        assert p.stat().st_size == ref.bytes and store.exists(ref.hash)
    m2 = commit(store, state)  # full recompute, same bytes: nothing new on disk
    m3 = commit(store, state, parent=m1, dirty=set())  # shares everything
    assert m1 == m2 and m1.id == m2.id
    assert m3.chunks == m1.chunks and m3.parents == (m1.id,)
    assert files(root) == before

    # An equal state built independently hashes the same.
    other = ChunkStore(root.parent / "other")
    assert commit(other, make_state()).chunks == m1.chunks


def test_hashes_do_not_depend_on_memory_layout(store: ChunkStore) -> None:
    state = make_state()
    f = state.frame
    pieces = pl.concat([f.slice(0, 3), f.slice(3, 9), f.slice(12, 8)], rechunk=False)
    assert max(pieces.n_chunks("all")) == 3
    split = State(pieces, state.catalog, state.next_rid)
    assert commit(store, split).chunks == commit(store, state).chunks
    loaded = load_state(store, commit(store, state))
    assert commit(store, loaded).chunks == commit(store, state).chunks


def test_bad_hashes_are_rejected(store: ChunkStore) -> None:
    for bad in ("../../etc/passwd", "AB" * 32, "a" * 63, ""):
        with pytest.raises(ValueError, match="not a chunk hash"):
            store.path(bad)


def test_manifest_id_is_canonical_json(store: ChunkStore) -> None:
    m = commit(store, make_state())
    assert m.id == manifest_id(m) == manifest_id(Manifest.from_json(m.to_json()))
    assert commit(store, make_state(), seq=2).id != m.id
    assert m.parents == () and m.clients == {"c1": 1}
    child = commit(store, make_state(), parent=m, dirty=set(), seq=2)
    assert child.parents == (m.id,)


def test_read_gives_the_stored_columns(store: ChunkStore) -> None:
    state = make_state()
    m = commit(store, state)
    ref = m.chunks[1]
    table = store.read(ref.hash)
    assert table.column_names == [RID, *(f"c{i}" for i in range(11))]
    assert table.schema.field(RID).type == pa.uint64()
    assert table.schema.field("c10").type == pa.timestamp("us", "Europe/Paris")
    assert table.column(RID).to_pylist() == [4, 5, 6, 7]
    assert store.read(ref.hash, columns=["c3"]).column_names == ["c3"]


# --------------------------------------------------------------------------- sharing


def new_chunks(parent: Manifest, child: Manifest) -> list[int]:
    old = set(parent.chunks)
    return [c.rid_lo // R for c in child.chunks if c not in old]


def test_one_cell_change_rewrites_exactly_one_chunk(store: ChunkStore) -> None:
    state = make_state()
    m1 = commit(store, state)
    before = stored(store)
    applied = apply(state, SetCells((9,), "s", ("changed",)))
    dirty = dirty_ranges(applied.effect.cells[5], R)
    assert dirty == {2}
    m2 = commit(store, applied.state, parent=m1, dirty=dirty, seq=2)
    assert new_chunks(m1, m2) == [2]
    assert len(stored(store) - before) == 1
    assert_same_state(load_state(store, m2), applied.state)
    # Without dirty tracking: everything is re-encoded, but the same single file is new.
    assert commit(store, applied.state, parent=m1, dirty=None, seq=2) == m2
    assert len(stored(store) - before) == 1


def test_rename_and_drop_write_no_chunk(store: ChunkStore) -> None:
    state = make_state()
    m1 = commit(store, state)
    before = stored(store)
    renamed = apply(state, RenameColumn("s", "label")).state
    m2 = commit(store, renamed, parent=m1, dirty=set(), seq=2)
    assert m2.chunks == m1.chunks and stored(store) == before
    assert_same_state(load_state(store, m2), renamed)

    dropped = apply(renamed, DropColumn("i32")).state
    m3 = commit(store, dropped, parent=m2, dirty=set(), seq=3)
    assert m3.chunks == m1.chunks and stored(store) == before
    assert_same_state(load_state(store, m3), dropped)

    # An edit after the drop rewrites that chunk without the dropped column.
    edited = apply(dropped, SetCells((0,), "label", ("z",))).state
    m4 = commit(store, edited, parent=m3, dirty={0}, seq=4)
    assert new_chunks(m3, m4) == [0]
    assert 1 not in m4.chunks[0].columns and 1 in m4.chunks[1].columns
    assert_same_state(load_state(store, m4), edited)


def test_add_restore_and_cast_rewrite_every_chunk(store: ChunkStore) -> None:
    state = make_state()
    m1 = commit(store, state)
    added = apply(state, AddColumn("n", "Int64", 1)).state
    m2 = commit(store, added, parent=m1, dirty=set(), seq=2)
    assert new_chunks(m1, m2) == [0, 1, 2, 3, 4]
    assert_same_state(load_state(store, m2), added)

    cast = apply(added, CastColumn("i32", "String")).state
    m3 = commit(store, cast, parent=m2, dirty=set(), seq=3)
    assert new_chunks(m2, m3) == [0, 1, 2, 3, 4]
    assert_same_state(load_state(store, m3), cast)

    # Drop, commit, then undo the drop: the restored column is not in the parent's schema.
    drop = apply(cast, DropColumn("s"))
    m4 = commit(store, drop.state, parent=m3, dirty=set(), seq=4)
    assert m4.chunks == m3.chunks
    restored = apply(drop.state, drop.inverse[0]).state
    assert restored.frame.equals(cast.frame)
    m5 = commit(store, restored, parent=m4, dirty=set(), seq=5)
    assert m5.chunks == m3.chunks  # same content, so the same hashes
    assert_same_state(load_state(store, m5), restored)


def test_row_deletes_and_inserts(store: ChunkStore) -> None:
    state = make_state()
    m1 = commit(store, state)
    before = stored(store)
    gone = apply(state, Delete(rows=(4, 5, 6, 7)))
    m2 = commit(store, gone.state, parent=m1, dirty=dirty_ranges(gone.effect.deleted, R), seq=2)
    assert [c.rid_lo for c in m2.chunks] == [0, 8, 12, 16]
    assert set(m2.chunks) <= set(m1.chunks) and stored(store) == before
    assert_same_state(load_state(store, m2), gone.state)

    part = apply(gone.state, Delete(rows=(9,)))
    m3 = commit(store, part.state, parent=m2, dirty=dirty_ranges(part.effect.deleted, R), seq=3)
    assert new_chunks(m2, m3) == [2] and m3.chunks[1].rows == 3

    ins = apply(part.state, Insert(pl.DataFrame({"s": ["a", "b", "c", "d", "e"]}).to_arrow()))
    m4 = commit(store, ins.state, parent=m3, dirty=dirty_ranges(ins.effect.inserted, R), seq=4)
    assert new_chunks(m3, m4) == [5, 6]
    assert_same_state(load_state(store, m4), ins.state)


def test_wrong_dirty_set_still_catches_row_count_changes(store: ChunkStore) -> None:
    state = make_state()
    m1 = commit(store, state)
    gone = apply(state, Delete(rows=(1,))).state
    m2 = commit(store, gone, parent=m1, dirty=set(), seq=2)  # the caller forgot range 0
    assert new_chunks(m1, m2) == [0]
    assert_same_state(load_state(store, m2), gone)


def dirty_after(effect: Effect, dirty: set[int] | None) -> set[int] | None:
    """The room's recipe: rids an op touched mark their ranges; a whole-column effect marks all."""
    if dirty is None or effect.full:
        return None
    rids = [effect.inserted, effect.deleted, *effect.cells.values()]
    return dirty | dirty_ranges(np.concatenate(rids), R)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_commit_chains_with_effect_dirty_sets_round_trip(data: st.DataObject) -> None:
    state = make_state(12)
    with tempfile.TemporaryDirectory() as tmp:
        store = ChunkStore(Path(tmp))
        parent = commit(store, state)
        dirty: set[int] | None = set()
        for i in range(data.draw(st.integers(1, 12))):
            rids = state.rids().tolist()
            cols = state.catalog.columns
            kind = data.draw(
                st.sampled_from(["set", "set", "insert", "delete", "rename", "drop", "add", "cast", "commit"])
            )
            op: Op | None = None
            if kind == "set" and rids and cols:
                col = data.draw(
                    st.sampled_from([c for c in cols if c.dtype in ("Int64", "String", "Float64")] or [None])
                )
                if col is not None:
                    rows = data.draw(st.lists(st.sampled_from(rids), min_size=1, max_size=3, unique=True))
                    value = {"Int64": 5, "String": "v", "Float64": 0.5}[col.dtype]
                    op = SetCells(tuple(rows), col.id, (value,) * len(rows))
            elif kind == "insert":
                op = Insert(pl.DataFrame({"s": [f"n{i}"] * data.draw(st.integers(1, 5))}).to_arrow())
            elif kind == "delete" and rids:
                op = Delete(
                    rows=tuple(
                        data.draw(st.lists(st.sampled_from(rids), min_size=1, max_size=6, unique=True))
                    )
                )
            elif kind in ("rename", "drop", "cast") and cols:
                col = data.draw(st.sampled_from(cols))
                op = {
                    "rename": RenameColumn(col.id, f"r{i}"),
                    "drop": DropColumn(col.id),
                    "cast": CastColumn(col.id, "String"),
                }[kind]
            elif kind == "add":
                op = AddColumn(f"a{i}", "Int64", i)
            elif kind == "commit":
                parent = commit(store, state, parent, dirty, seq=i + 2)
                assert_same_state(load_state(store, parent), state)
                dirty = set()
            if op is not None:
                try:
                    applied = apply(state, op)
                except OpError:
                    continue
                state, dirty = applied.state, dirty_after(applied.effect, dirty)
        final = commit(store, state, parent, dirty, seq=99)
        assert_same_state(load_state(store, final), state)
        # Shared chunks may still hold dropped columns; otherwise sharing == recomputing.
        fresh = commit(store, state, seq=99)
        assert [(c.rid_lo, c.rows) for c in final.chunks] == [(c.rid_lo, c.rows) for c in fresh.chunks]
        assert all(c == f for c, f in zip(final.chunks, fresh.chunks, strict=True) if c.columns == f.columns)


def test_dirty_ranges() -> None:
    assert dirty_ranges(np.array([], dtype=np.uint64)) == set()
    assert dirty_ranges(np.array([0, 3, 4, 9], dtype=np.uint64), 4) == {0, 1, 2}
    assert dirty_ranges([CHUNK_RIDS - 1, CHUNK_RIDS, 5 * CHUNK_RIDS]) == {0, 1, 5}


# --------------------------------------------------------------------------- atomic, durable writes


def test_writes_are_fsynced_and_leave_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ChunkStore(tmp_path / "chunks")
    root = Path(store.fs.locate("x")).parent
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    m = commit(store, make_state())
    assert len(synced) >= 2 * len(m.chunks)  # each file, and its directory
    assert all(name.endswith(".parquet") and "/" in name for name in files(root))
    assert not [p for p in root.rglob(".tmp-*")]


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = LocalFS(tmp_path / "c")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    store = ChunkStore(fs=fs)
    with pytest.raises(OSError, match="disk full"):
        store.write(pa.table({RID: pa.array([1], pa.uint64())}))
    assert files(tmp_path / "c") == set()


def test_temp_files_from_a_crash_are_swept(tmp_path: Path) -> None:
    fs = LocalFS(tmp_path / "c")
    h, _ = ChunkStore(fs=fs).write(pa.table({RID: pa.array([1], pa.uint64())}))
    (tmp_path / "c" / h[:2] / ".tmp-abc.part").write_bytes(b"half a chunk")
    assert fs.remove_temp_files() == 1
    assert files(tmp_path / "c") == {ChunkStore.key(h)}
    assert oct(Path(fs.locate(ChunkStore.key(h))).stat().st_mode & 0o777) == "0o644"


# --------------------------------------------------------------------------- scale


@pytest.mark.slow
def test_one_cell_commit_on_a_million_rows_writes_under_5_percent(tmp_path: Path) -> None:
    from server.demo import demo_sales

    frame, catalog = normalize_frame(demo_sales(1_000_000))
    state = State(frame, catalog, frame.height)
    store = ChunkStore(tmp_path / "big")
    kw = dict(dataset="big", author="t", message="m", time=0.0, clients={})
    m1 = write_commit(store, state, parent=None, dirty=None, seq=1, **kw)
    full = sum(c.bytes for c in m1.chunks)
    applied = apply(state, SetCells((500_000,), "price", (1.25,)))
    dirty = dirty_ranges(np.concatenate(list(applied.effect.cells.values())))
    assert dirty == {500_000 // CHUNK_RIDS}
    m2 = write_commit(store, applied.state, parent=m1, dirty=dirty, seq=2, **kw)
    written = sum(c.bytes for c in m2.chunks if c not in set(m1.chunks))
    assert len([c for c in m2.chunks if c not in set(m1.chunks)]) == 1
    assert written <= 0.05 * full


def test_range_bounds_dense_and_sparse_rids() -> None:
    from server.storage.commits import _range_bounds

    dense = np.array([0, 1, 5, 6, 7, 12], dtype=np.uint64)
    assert _range_bounds(dense, 4) == [(0, 0, 2), (1, 2, 5), (3, 5, 6)]
    sparse = np.array([3, 10**9, 10**9 + 1], dtype=np.uint64)
    assert _range_bounds(sparse, 4) == [(0, 0, 1), (250_000_000, 1, 3)]
    assert _range_bounds(np.array([], dtype=np.uint64), 4) == []


def test_memory_store_keeps_bytes_and_says_what_is_missing() -> None:
    store = ChunkStore.memory()
    m = commit(store, make_state())
    assert isinstance(store.fs, MemoryFS) and store.fs.nbytes == sum(c.bytes for c in m.chunks)
    assert store.path(m.chunks[0].hash).startswith("memory:")
    assert store.read(m.chunks[0].hash).num_rows == m.chunks[0].rows
    with pytest.raises(FileNotFoundError, match="not in this process's memory store"):
        store.read("0" * 64)


def _chunk_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("chunks")]


def test_a_chunk_pool_gives_the_same_commit_and_its_threads_end_on_close(tmp_path: Path) -> None:
    """Chunks encode and decode on a pool that its owner closes; no thread outlives it."""
    state = make_state(40)
    alone = commit(ChunkStore(tmp_path / "alone"), state)
    store, pool = ChunkStore(tmp_path / "pooled"), ChunkPool(workers=3)
    before = set(_chunk_threads())
    try:
        pooled = write_commit(
            store, state, dataset="ds", parent=None, dirty=None, author="tester", message="seq 1", seq=1,
            time=1_700_000_000.5, clients={"c1": 1}, chunk_rids=R, pool=pool,
        )  # fmt: skip
        assert pooled == alone and len(pooled.chunks) > 1
        assert set(_chunk_threads()) - before, "a commit of several chunks runs on the pool's threads"
        assert_same_state(load_state(store, pooled, pool=pool), state)
    finally:
        pool.close()
    assert not set(_chunk_threads()) - before, "close() joins the pool's threads"
    pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pool.map(str, [1, 2])
    assert pool.map(str, [1]) == ["1"]  # one item never needs a thread
