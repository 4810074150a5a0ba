"""One contract suite for every catalog backend.

Every test taking the ``catalog`` or ``backend`` fixture (tests/conftest.py)
runs on each backend: in memory, on the embedded SQLite file and on a real
PostgreSQL server, in the run's own schema (tests/pg.py). Without PostgreSQL
the postgres run skips, and under ``CI=true`` it fails instead. Tests about
what outlives a process (migrations, a second open, kill -9) run on the
persistent backends only (``@persistent_only``).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from server.storage.audit_types import AuditStore
from server.storage.auth_types import AuthStore
from server.storage.catalog import open_catalog, split_pg_url
from server.storage.catalog_memory import MemoryCatalog
from server.storage.catalog_pg import PostgresCatalog
from server.storage.catalog_sqlite import SqliteCatalog
from server.storage.migrations import LATEST, MIGRATIONS
from server.storage.types import (
    AlreadyExists,
    CatalogStore,
    ChunkRef,
    DatasetExists,
    Manifest,
    NotFound,
    Ref,
    RefMoved,
    StorageError,
    WalEntry,
)
from tests.conftest import Backend, persistent_only, timeout
from tests.pg import fresh_schema

# -- fixtures ------------------------------------------------------------------


@asynccontextmanager
async def fresh(backend: Backend) -> AsyncIterator[Backend]:
    """Empty persistent storage of the same kind: a new directory, or a new schema."""
    assert backend.data_dir is not None
    if backend.kind == "sqlite":
        n = len(list(backend.data_dir.parent.glob("fresh*")))
        yield Backend("sqlite", None, backend.data_dir.parent / f"fresh{n}")
    else:
        async with fresh_schema() as url:
            yield Backend("postgres", url, backend.data_dir)


async def raw_versions(backend: Backend) -> list[int]:
    """schema_version rows, read without the catalog."""
    if backend.kind == "sqlite":
        assert backend.data_dir is not None
        with sqlite3.connect(backend.data_dir / "catalog.sqlite3") as conn:
            return [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    dsn, schema = split_pg_url(backend.url or "")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
    finally:
        await conn.close()
    return [r[0] for r in rows]


async def raw_execute(backend: Backend, sql: str) -> None:
    if backend.kind == "sqlite":
        assert backend.data_dir is not None
        with sqlite3.connect(backend.data_dir / "catalog.sqlite3") as conn:
            conn.execute(sql)
        return
    dsn, schema = split_pg_url(backend.url or "")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# -- helpers -------------------------------------------------------------------

SCHEMA = ({"id": 1, "name": "price", "dtype": "float64"}, {"id": 2, "name": "qty", "dtype": "int64"})


def make_manifest(
    dataset: str, n: int, parents: tuple[str, ...] = (), commit_id: str | None = None
) -> Manifest:
    cid = commit_id or hashlib.sha256(f"{dataset}/{n}/{parents}".encode()).hexdigest()
    chunk = ChunkRef(hashlib.sha256(f"chunk{n}".encode()).hexdigest(), 0, 10 * n + 1, 10 * n, 4096, (1, 2))
    return Manifest(
        cid,
        dataset,
        parents,
        "alice",
        f"commit {n} — ünïcode",
        1_700_000_000.125 + n,
        100 * n,
        SCHEMA,
        10 * n,
        10 * n + 1,
        3,
        (chunk,),
        {"client-a": n, "client-b": 2 * n},
    )


async def make_chain(catalog: CatalogStore, dataset: str, n: int) -> list[Manifest]:
    """n commits, each the first parent of the next; oldest first."""
    out: list[Manifest] = []
    for i in range(n):
        m = make_manifest(dataset, i, (out[-1].id,) if out else ())
        await catalog.put_commit(m)
        out.append(m)
    return out


def root_manifest(dataset: str) -> Manifest:
    """The first commit a dataset is created with in these tests (distinct from make_chain's)."""
    return replace(make_manifest(dataset, 0), id=hashlib.sha256(f"root/{dataset}".encode()).hexdigest())


async def new_dataset(catalog: CatalogStore, dataset: str) -> Manifest:
    """Create ``dataset`` with its root commit on ``main`` (one transaction); return the root."""
    root = root_manifest(dataset)
    await catalog.create_dataset(root)
    return root


def wal(seq: int, client: str = "c1") -> WalEntry:
    return WalEntry(seq, client, seq * 10, "op", b"\x93ops" + seq.to_bytes(4, "big"), b"\x81ack")


# -- the Protocol itself -------------------------------------------------------


@pytest.mark.parametrize("impl", [MemoryCatalog, SqliteCatalog, PostgresCatalog])
def test_backend_implements_protocol_signatures(impl: type) -> None:
    wanted = {
        name: inspect.signature(fn)
        for proto in (AuthStore, AuditStore, CatalogStore)  # CatalogStore inherits their methods
        for name, fn in vars(proto).items()
        if inspect.iscoroutinefunction(fn) and not name.startswith("_")
    }
    assert {"open", "close", "append_wal", "move_branch", "add_user", "put_grant"} <= set(wanted)
    assert {"add_audit", "count_audit", "list_audit"} <= set(wanted)
    assert AuthStore in CatalogStore.__mro__ and AuditStore in CatalogStore.__mro__
    for name, sig in wanted.items():
        got = getattr(impl, name)
        assert inspect.iscoroutinefunction(got), name
        assert list(inspect.signature(got).parameters) == list(sig.parameters), name


def test_migrations_are_numbered_and_cover_both_dialects() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST == len(MIGRATIONS)
    for m in MIGRATIONS:
        assert m.description and m.sqlite and m.postgres


def test_pg_url_schema_is_split_off() -> None:
    dsn, schema = split_pg_url("postgresql://u@h:5432/db?sslmode=disable&schema=my_schema")
    assert (dsn, schema) == ("postgresql://u@h:5432/db?sslmode=disable", "my_schema")
    assert split_pg_url("postgresql://h/db") == ("postgresql://h/db", None)
    with pytest.raises(ValueError, match="plain identifier"):
        split_pg_url('postgresql://h/db?schema=x";drop')


async def test_factory_defaults_to_sqlite_in_data_dir(tmp_path: Path) -> None:
    store = await open_catalog(None, tmp_path / "data")
    try:
        assert isinstance(store, SqliteCatalog)
        assert (tmp_path / "data" / "catalog.sqlite3").exists()
    finally:
        await store.close()
    store = await open_catalog(str(tmp_path / "elsewhere.db"), tmp_path / "data")
    await store.close()
    assert (tmp_path / "elsewhere.db").exists()
    with pytest.raises(ValueError, match="unknown catalog URL scheme"):
        await open_catalog("mysql://h/db", tmp_path)


async def test_sqlite_is_durable_on_return(tmp_path: Path) -> None:
    store = await open_catalog(None, tmp_path)
    assert isinstance(store, SqliteCatalog)
    try:
        pragmas = await store._tx(
            lambda c: tuple(
                c.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("journal_mode", "synchronous", "foreign_keys")
            ),
            write=False,
        )
    finally:
        await store.close()
    assert pragmas == ("wal", 2, 1)  # 2 = FULL


# -- datasets ------------------------------------------------------------------


async def test_datasets_create_list_drop(catalog: CatalogStore) -> None:
    assert await catalog.list_datasets() == []
    for name in ("sales", "Zeta", "alpha"):
        await new_dataset(catalog, name)
    assert await catalog.list_datasets() == sorted(["sales", "Zeta", "alpha"])
    with pytest.raises(AlreadyExists, match="dataset 'sales' already exists; pick another name"):
        await new_dataset(catalog, "sales")
    await catalog.drop_dataset("sales")
    assert await catalog.list_datasets() == ["Zeta", "alpha"]
    with pytest.raises(NotFound, match="dataset 'sales' does not exist"):
        await catalog.drop_dataset("sales")


async def test_create_dataset_brings_its_commit_and_main(catalog: CatalogStore) -> None:
    root = await new_dataset(catalog, "d")
    assert await catalog.get_ref("d", "main", "branch") == Ref("d", "main", root.id, "branch")
    assert await catalog.get_commit("d", root.id) == root
    assert await catalog.list_commits("d") == [root]
    assert await catalog.list_refs("d", "tag") == []
    assert await catalog.log("d", root.id) == [root]


async def test_create_dataset_twice_changes_nothing(catalog: CatalogStore) -> None:
    root = await new_dataset(catalog, "d")
    other = make_manifest("d", 5)
    with pytest.raises(DatasetExists, match="dataset 'd' already exists"):
        await catalog.create_dataset(other)
    assert await catalog.list_commits("d") == [root]  # the loser's commit is not stored
    assert (await catalog.get_ref("d", "main", "branch")).commit == root.id


async def test_create_dataset_is_one_transaction(catalog: CatalogStore) -> None:
    # The commit cannot be stored (NaN is not JSON): the dataset row written before it goes too.
    bad = replace(root_manifest("d"), time=float("nan"))
    with pytest.raises(ValueError):
        await catalog.create_dataset(bad)
    assert await catalog.list_datasets() == []
    assert await catalog.list_refs("d", "branch") == []
    assert await catalog.list_commits("d") == []
    root = await new_dataset(catalog, "d")  # the name is free
    assert (await catalog.get_ref("d", "main", "branch")).commit == root.id


async def test_concurrent_creates_of_one_name_have_one_winner(catalog: CatalogStore) -> None:
    firsts = [replace(make_manifest("d", i), id=hashlib.sha256(b"first%d" % i).hexdigest()) for i in range(8)]
    results = await asyncio.gather(*(catalog.create_dataset(m) for m in firsts), return_exceptions=True)
    winners = [m for m, r in zip(firsts, results, strict=True) if r is None]
    assert len(winners) == 1, results
    assert all(isinstance(r, DatasetExists) for r in results if r is not None), results
    assert await catalog.list_commits("d") == winners
    assert (await catalog.get_ref("d", "main", "branch")).commit == winners[0].id


async def test_every_dataset_a_reader_sees_has_main(catalog: CatalogStore) -> None:
    async def reader() -> list[str]:
        missing = []
        for _ in range(40):
            for name in await catalog.list_datasets():
                try:
                    await catalog.get_ref(name, "main", "branch")
                except NotFound:
                    missing.append(name)
        return missing

    creating = asyncio.gather(*(new_dataset(catalog, f"d{i}") for i in range(40)))
    seen = await asyncio.gather(reader(), reader(), creating)
    assert seen[0] == [] and seen[1] == []


async def test_list_commits_and_chunk_hashes(catalog: CatalogStore) -> None:
    assert await catalog.chunk_hashes() == set()
    assert await catalog.list_commits("ghost") == []
    ra = await new_dataset(catalog, "a")
    rb = await new_dataset(catalog, "b")
    chain = await make_chain(catalog, "a", 3)  # make_chain's commit 0 shares its chunk with both roots
    orphan = make_manifest("a", 9, ("9" * 64,))  # reachable from no ref: its chunks still count
    await catalog.put_commit(orphan)
    got = await catalog.list_commits("a")
    assert sorted(m.id for m in got) == sorted(m.id for m in [ra, *chain, orphan])
    assert [m.seq for m in got] == sorted(m.seq for m in got)
    assert await catalog.list_commits("b") == [rb]
    every = {c.hash for m in [ra, rb, *chain, orphan] for c in m.chunks}
    assert await catalog.chunk_hashes() == every
    await catalog.drop_dataset("a")
    assert await catalog.chunk_hashes() == {c.hash for c in rb.chunks}


async def test_drop_dataset_removes_commits_refs_and_wal(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    k_root = await new_dataset(catalog, "keep")
    (c0,) = await make_chain(catalog, "d", 1)
    (k0,) = await make_chain(catalog, "keep", 1)
    await catalog.create_ref(Ref("d", "dev", c0.id, "branch"))
    await catalog.create_ref(Ref("d", "v1", c0.id, "tag"))
    await catalog.append_wal("d", "main", [wal(1), wal(2)])
    await catalog.append_wal("keep", "main", [wal(1)])

    await catalog.drop_dataset("d")
    root = await new_dataset(catalog, "d")  # same name again starts afresh
    with pytest.raises(NotFound):
        await catalog.get_commit("d", c0.id)
    assert await catalog.list_refs("d", "branch") == [Ref("d", "main", root.id, "branch")]
    assert await catalog.list_refs("d", "tag") == []
    assert await catalog.read_wal("d", "main", 0) == []
    # the other dataset is untouched
    assert await catalog.get_commit("keep", k0.id) == k0
    assert (await catalog.get_ref("keep", "main", "branch")).commit == k_root.id
    assert [e.seq for e in await catalog.read_wal("keep", "main", 0)] == [1]


# -- commits -------------------------------------------------------------------


async def test_commit_roundtrip_is_exact_and_idempotent(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    m = make_manifest("d", 1)
    await catalog.put_commit(m)
    await catalog.put_commit(m)  # same id again: no error, no duplicate
    got = await catalog.get_commit("d", m.id)
    assert got == m
    assert got.to_json() == m.to_json()
    assert [list(col) for col in got.schema] == [list(col) for col in m.schema]  # key order kept
    assert await catalog.log("d", m.id) == [m]


async def test_commit_needs_its_dataset(catalog: CatalogStore) -> None:
    with pytest.raises(NotFound, match="dataset 'ghost' does not exist"):
        await catalog.put_commit(make_manifest("ghost", 1))
    with pytest.raises(NotFound, match="dataset 'ghost' does not exist"):
        await catalog.get_commit("ghost", "0" * 64)


async def test_commits_are_per_dataset(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "a")
    await new_dataset(catalog, "b")
    m = make_manifest("a", 1)
    await catalog.put_commit(m)
    with pytest.raises(NotFound, match="not found in dataset 'b'"):
        await catalog.get_commit("b", m.id)


async def test_get_commit_by_unique_prefix(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    m = make_manifest("d", 1)
    await catalog.put_commit(m)
    assert await catalog.get_commit("d", m.id[:6]) == m
    assert await catalog.get_commit("d", m.id[:20]) == m
    assert await catalog.get_commit("d", m.id[:8].upper()) == m
    with pytest.raises(NotFound, match="at least 6 hex characters"):
        await catalog.get_commit("d", m.id[:5])
    with pytest.raises(NotFound, match="not found in dataset 'd'"):
        await catalog.get_commit("d", "zzzzzzzz")
    other = "f" * 64 if not m.id.startswith("f") else "0" * 64
    with pytest.raises(NotFound, match="not found"):
        await catalog.get_commit("d", other[:10])


async def test_ambiguous_prefix_says_so(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    a = make_manifest("d", 1, commit_id="abcdef01" + "1" * 56)
    b = make_manifest("d", 2, commit_id="abcdef02" + "2" * 56)
    await catalog.put_commit(a)
    await catalog.put_commit(b)
    with pytest.raises(NotFound, match="'abcdef0' is ambiguous in dataset 'd'.*give more characters"):
        await catalog.get_commit("d", "abcdef0")
    assert await catalog.get_commit("d", "abcdef01") == a
    assert await catalog.get_commit("d", "abcdef02") == b


async def test_log_walks_first_parents_newest_first(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    chain = await make_chain(catalog, "d", 6)
    side = make_manifest("d", 100, (chain[2].id,))
    await catalog.put_commit(side)
    merge = make_manifest("d", 7, (chain[-1].id, side.id))  # first parent: mainline
    await catalog.put_commit(merge)

    assert await catalog.log("d", merge.id) == [merge, *reversed(chain)]
    assert await catalog.log("d", merge.id, limit=3) == [merge, chain[5], chain[4]]
    assert await catalog.log("d", side.id) == [side, chain[2], chain[1], chain[0]]
    assert await catalog.log("d", chain[0].id) == [chain[0]]
    assert await catalog.log("d", merge.id[:8], limit=1) == [merge]
    assert await catalog.log("d", merge.id, limit=0) == []
    with pytest.raises(NotFound):
        await catalog.log("d", "0123456789" * 6 + "abcd")


async def test_log_stops_at_a_missing_parent(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    orphan = make_manifest("d", 1, ("9" * 64,))
    await catalog.put_commit(orphan)
    assert await catalog.log("d", orphan.id) == [orphan]


# -- refs ----------------------------------------------------------------------


async def test_refs_create_get_list(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    c0, c1 = await make_chain(catalog, "d", 2)
    await catalog.move_branch("d", "main", c1.id, None)  # main came with the dataset
    await catalog.create_ref(Ref("d", "dev", c0.id, "branch"))
    await catalog.create_ref(Ref("d", "v1", c0.id, "tag"))
    await catalog.create_ref(Ref("d", "main", c0.id, "tag"))  # tags and branches are separate kinds

    assert await catalog.get_ref("d", "main", "branch") == Ref("d", "main", c1.id, "branch")
    assert await catalog.get_ref("d", "main", "tag") == Ref("d", "main", c0.id, "tag")
    assert [r.name for r in await catalog.list_refs("d", "branch")] == ["dev", "main"]
    assert await catalog.list_refs("d", "tag") == [
        Ref("d", "main", c0.id, "tag"),
        Ref("d", "v1", c0.id, "tag"),
    ]
    assert await catalog.list_refs("other", "branch") == []
    with pytest.raises(NotFound, match="branch 'nope' not found in dataset 'd'"):
        await catalog.get_ref("d", "nope", "branch")
    with pytest.raises(NotFound, match="tag 'dev' not found"):
        await catalog.get_ref("d", "dev", "tag")
    with pytest.raises(ValueError, match="not 'branch' or 'tag'"):
        await catalog.get_ref("d", "main", "head")


async def test_ref_must_point_at_a_stored_commit(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    (c0,) = await make_chain(catalog, "d", 1)
    with pytest.raises(NotFound, match="put_commit it first"):
        await catalog.create_ref(Ref("d", "b", "e" * 64, "branch"))
    with pytest.raises(NotFound, match="dataset 'ghost' does not exist"):
        await catalog.create_ref(Ref("ghost", "b", c0.id, "branch"))
    await catalog.create_ref(Ref("d", "b", c0.id, "branch"))
    with pytest.raises(NotFound, match="put_commit it first"):
        await catalog.move_branch("d", "b", "e" * 64, None)
    assert (await catalog.get_ref("d", "b", "branch")).commit == c0.id


async def test_tags_never_move(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    c0, c1 = await make_chain(catalog, "d", 2)
    await catalog.create_ref(Ref("d", "v1", c0.id, "tag"))
    with pytest.raises(AlreadyExists, match="tag 'v1' already exists .* tags never move; create a new tag"):
        await catalog.create_ref(Ref("d", "v1", c1.id, "tag"))
    with pytest.raises(AlreadyExists, match="tags never move"):
        await catalog.create_ref(Ref("d", "v1", c0.id, "tag"))
    with pytest.raises(NotFound, match="'v1' in dataset 'd' is a tag, and tags never move"):
        await catalog.move_branch("d", "v1", c1.id, None)
    with pytest.raises(NotFound, match="'v1' in dataset 'd' is a tag"):
        await catalog.move_branch("d", "v1", c1.id, c0.id)
    assert (await catalog.get_ref("d", "v1", "tag")).commit == c0.id


async def test_branch_create_twice_is_refused(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    (c0,) = await make_chain(catalog, "d", 1)
    await catalog.create_ref(Ref("d", "dev", c0.id, "branch"))
    with pytest.raises(AlreadyExists, match="branch 'dev' already exists .* pick another name"):
        await catalog.create_ref(Ref("d", "dev", c0.id, "branch"))
    with pytest.raises(AlreadyExists, match="branch 'main' already exists"):  # it came with the dataset
        await catalog.create_ref(Ref("d", "main", c0.id, "branch"))


async def test_move_branch_is_compare_and_set(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    c0, c1, c2 = await make_chain(catalog, "d", 3)
    await catalog.move_branch("d", "main", c0.id, None)

    await catalog.move_branch("d", "main", c1.id, c0.id)
    assert (await catalog.get_ref("d", "main", "branch")).commit == c1.id
    with pytest.raises(RefMoved, match=f"is at {c1.id[:12]}, not at the expected {c0.id[:12]}.*retry"):
        await catalog.move_branch("d", "main", c2.id, c0.id)
    assert (await catalog.get_ref("d", "main", "branch")).commit == c1.id
    await catalog.move_branch("d", "main", c0.id, None)  # unconditional, may go backwards
    assert (await catalog.get_ref("d", "main", "branch")).commit == c0.id
    with pytest.raises(NotFound, match="branch 'dev' not found in dataset 'd'; create it"):
        await catalog.move_branch("d", "dev", c1.id, None)


async def test_concurrent_compare_and_set_has_one_winner(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    chain = await make_chain(catalog, "d", 9)
    await catalog.move_branch("d", "main", chain[0].id, None)
    results = await asyncio.gather(
        *(catalog.move_branch("d", "main", c.id, chain[0].id) for c in chain[1:]), return_exceptions=True
    )
    winners = [c for c, r in zip(chain[1:], results, strict=True) if r is None]
    assert len(winners) == 1, results
    assert all(isinstance(r, RefMoved) for r in results if r is not None), results
    assert (await catalog.get_ref("d", "main", "branch")).commit == winners[0].id


async def test_delete_ref(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    (c0,) = await make_chain(catalog, "d", 1)
    await catalog.create_ref(Ref("d", "dev", c0.id, "branch"))
    await catalog.create_ref(Ref("d", "v1", c0.id, "tag"))
    await catalog.append_wal("d", "dev", [wal(1), wal(2)])
    await catalog.append_wal("d", "main", [wal(1)])

    await catalog.delete_ref("d", "dev", "branch")
    assert [r.name for r in await catalog.list_refs("d", "branch")] == ["main"]
    assert await catalog.read_wal("d", "dev", 0) == []  # a deleted branch takes its WAL along
    assert [e.seq for e in await catalog.read_wal("d", "main", 0)] == [1]
    await catalog.delete_ref("d", "v1", "tag")
    assert await catalog.list_refs("d", "tag") == []
    with pytest.raises(NotFound, match="tag 'v1' not found"):
        await catalog.delete_ref("d", "v1", "tag")
    await catalog.create_ref(Ref("d", "v1", c0.id, "tag"))  # a deleted tag's name is free again
    assert await catalog.get_commit("d", c0.id) == c0  # commits stay


# -- WAL -----------------------------------------------------------------------


async def test_wal_append_read_in_seq_order(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    await catalog.append_wal("d", "main", [wal(3), wal(1), wal(2)])
    await catalog.append_wal("d", "main", [wal(5, "c2"), wal(4, "c2")])
    await catalog.append_wal("d", "dev", [wal(1, "x")])
    await catalog.append_wal("d", "main", [])  # nothing to do

    got = await catalog.read_wal("d", "main", 0)
    assert got == [wal(1), wal(2), wal(3), wal(4, "c2"), wal(5, "c2")]
    assert all(type(e.ops) is bytes and type(e.reply) is bytes for e in got)
    assert [e.seq for e in await catalog.read_wal("d", "main", 3)] == [4, 5]
    assert await catalog.read_wal("d", "main", 5) == []
    assert await catalog.read_wal("d", "dev", 0) == [wal(1, "x")]
    assert await catalog.read_wal("d", "nobranch", 0) == []


async def test_wal_keeps_bytes_exactly(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    big = bytes(range(256)) * 4096  # 1 MiB, every byte value
    entries = [WalEntry(1, "c", 1, "undo", big, b""), WalEntry(2, "c", 2, "redo", b"\x00", b"\x00\xff")]
    await catalog.append_wal("d", "main", entries)
    assert await catalog.read_wal("d", "main", 0) == entries


async def test_wal_batch_is_all_or_nothing(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    await catalog.append_wal("d", "main", [wal(1), wal(2)])
    with pytest.raises(AlreadyExists, match="seq 4 more than once in the batch"):
        await catalog.append_wal("d", "main", [wal(3), wal(4), wal(4, "other")])
    with pytest.raises(AlreadyExists, match="nothing was written: seq 2 already in the WAL"):
        await catalog.append_wal("d", "main", [wal(5), wal(6), wal(2, "other"), wal(7)])
    assert [e.seq for e in await catalog.read_wal("d", "main", 0)] == [1, 2]
    assert (await catalog.read_wal("d", "main", 0))[1].client == "c1"
    await catalog.append_wal("d", "main", [wal(3), wal(4)])  # the same seqs, now valid
    assert [e.seq for e in await catalog.read_wal("d", "main", 0)] == [1, 2, 3, 4]


async def test_wal_needs_its_dataset(catalog: CatalogStore) -> None:
    with pytest.raises(NotFound, match="dataset 'ghost' does not exist"):
        await catalog.append_wal("ghost", "main", [wal(1)])


async def test_wal_trim(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    await catalog.append_wal("d", "main", [wal(s) for s in range(1, 11)])
    await catalog.append_wal("d", "dev", [wal(s) for s in range(1, 4)])
    assert await catalog.trim_wal("d", "main", 6) == 6
    assert await catalog.trim_wal("d", "main", 6) == 0
    assert [e.seq for e in await catalog.read_wal("d", "main", 0)] == [7, 8, 9, 10]
    assert [e.seq for e in await catalog.read_wal("d", "dev", 0)] == [1, 2, 3]
    assert await catalog.trim_wal("d", "main", 100) == 4
    assert await catalog.read_wal("d", "main", 0) == []


async def test_many_concurrent_appends(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    n = 200
    await asyncio.gather(
        *(catalog.append_wal("d", "main", [wal(2 * i + 1), wal(2 * i + 2)]) for i in range(n))
    )
    assert [e.seq for e in await catalog.read_wal("d", "main", 0)] == list(range(1, 2 * n + 1))


async def test_concurrent_overlapping_appends_stay_atomic(catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    # batch i holds seqs i and i+1, so neighbours collide; each must land whole or not at all
    batches = {f"b{i}": [wal(i, f"b{i}"), wal(i + 1, f"b{i}")] for i in range(1, 60)}
    results = await asyncio.gather(
        *(catalog.append_wal("d", "main", b) for b in batches.values()), return_exceptions=True
    )
    assert all(r is None or isinstance(r, AlreadyExists) for r in results), results
    stored = await catalog.read_wal("d", "main", 0)
    assert len({e.seq for e in stored}) == len(stored)
    by_client: dict[str, list[int]] = {}
    for e in stored:
        by_client.setdefault(e.client, []).append(e.seq)
    for (name, batch), result in zip(batches.items(), results, strict=True):
        expected = [e.seq for e in batch] if result is None else []
        assert by_client.get(name, []) == expected, name


# -- migrations and durability -------------------------------------------------


@persistent_only
async def test_open_twice_is_a_noop(backend: Backend, catalog: CatalogStore) -> None:
    await new_dataset(catalog, "d")
    await catalog.append_wal("d", "main", [wal(1)])
    await catalog.open()  # again on the same object
    second = await backend.open_catalog()
    try:
        assert await second.schema_version() == LATEST  # type: ignore[attr-defined]
        assert await second.list_datasets() == ["d"]
        assert await second.read_wal("d", "main", 0) == [wal(1)]
    finally:
        await second.close()
    assert await raw_versions(backend) == [m.version for m in MIGRATIONS]


@persistent_only
async def test_concurrent_first_opens_migrate_once(backend: Backend) -> None:
    async with fresh(backend) as other:
        stores = await asyncio.gather(*(other.open_catalog() for _ in range(4)))
        try:
            assert [await s.schema_version() for s in stores] == [LATEST] * 4  # type: ignore[attr-defined]
            await new_dataset(stores[0], "d")
            assert await stores[3].list_datasets() == ["d"]
        finally:
            for s in stores:
                await s.close()
        assert await raw_versions(other) == [m.version for m in MIGRATIONS]


@persistent_only
async def test_newer_schema_is_refused(backend: Backend) -> None:
    async with fresh(backend) as other:
        store = await other.open_catalog()
        await store.close()
        await raw_execute(
            other,
            "INSERT INTO schema_version (version, description, applied_at) "
            f"VALUES ({LATEST + 1}, 'future', 0)",
        )
        with pytest.raises(StorageError, match=f"schema version {LATEST + 1}, newer than this coframe"):
            await other.open_catalog()


REPO = Path(__file__).resolve().parent.parent

_CRASH_CHILD = """
import asyncio, sys
from pathlib import Path
from server.storage.catalog import open_catalog
from server.storage.types import WalEntry

async def main(url, data_dir):
    cat = await open_catalog(url or None, Path(data_dir))
    seq = 0
    while True:
        seq += 1
        await cat.append_wal("crash", "main", [WalEntry(seq, "c", seq, "op", b"x" * 512, b"r")])
        print(seq, flush=True)  # acked: durable from here on

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@persistent_only
async def test_acked_appends_survive_kill_9(backend: Backend, catalog: CatalogStore) -> None:
    await new_dataset(catalog, "crash")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASH_CHILD,
        backend.url or "",
        str(backend.data_dir),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    acked = 0
    try:
        while acked < 50:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout(30))
            assert line, "the child exited before acking 50 appends"
            acked = int(line)
    finally:
        proc.kill()  # SIGKILL: no cleanup, no close
        await proc.wait()
    seqs = [e.seq for e in await catalog.read_wal("crash", "main", 0)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) >= acked
