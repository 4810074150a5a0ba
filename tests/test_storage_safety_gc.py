"""Storage safety (issue 10), continued: chunk GC, ``coframe fsck`` and ``coframe delete``.

Chunks are shared between commits and datasets and reused by content hash.
The GC deletes the ones no manifest of any dataset references, older than a
grace period, and never one a commit under way is about to reference (held
hashes; reused chunks get a fresh modification time). ``fsck`` checks every
chunk against its sha256 and names what is broken; ``delete`` removes a
dataset from the catalog, and its chunks go at the next GC.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import polars as pl
import pytest

from server.storage.chunks import ChunkStore, MemoryFS, encode_parquet
from server.storage.fsck import fsck
from server.storage.gc import OWNER_SUFFIX
from server.storage.service import Storage
from tests.conftest import Backend, persistent_only, timeout
from tests.helpers import frame
from tests.storage_server import durable_server

HOUR = 3600.0


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[Storage]:
    s = await backend.open_storage()
    try:
        yield s
    finally:
        await s.close()


def stored(store: ChunkStore) -> set[str]:
    """The hashes of every chunk in the store."""
    return {key.replace("/", "").removesuffix(".parquet") for key, _, _ in store.items() if "tmp" not in key}


def age(store: ChunkStore, h: str, seconds: float) -> None:
    """Make chunk ``h`` look ``seconds`` old."""
    then = time.time() - seconds
    if isinstance(store.fs, MemoryFS):
        store.fs.mtimes[store.key(h)] = then
    else:
        os.utime(store.path(h), (then, then))


def age_all(store: ChunkStore, seconds: float = 2 * HOUR) -> None:
    for h in stored(store):
        age(store, h, seconds)


def hashes(*manifests: object) -> set[str]:
    return {c.hash for m in manifests for c in m.chunks}  # type: ignore[attr-defined]


async def all_ok(storage: Storage) -> bool:
    report = await fsck(storage.catalog, storage.chunks, await storage.catalog.list_datasets())
    return report.ok and report.chunks > 0


# ---------------------------------------------------------------- mark and sweep


async def test_gc_removes_what_no_dataset_references(storage: Storage) -> None:
    a = await storage.create_dataset("a", frame(50), author="t", message="m")
    b = await storage.create_dataset("b", frame(50), author="t", message="m")  # same rows: same chunks
    c = await storage.create_dataset("c", frame(7), author="t", message="m")
    assert hashes(a) == hashes(b) and not hashes(a) & hashes(c)
    age_all(storage.chunks)
    report = await storage.collect_garbage(0)
    assert report.removed == [] and stored(storage.chunks) == hashes(a, c)

    await storage.delete_dataset("a")  # b still references every chunk of a
    assert (await storage.collect_garbage(0)).removed == []
    await storage.delete_dataset("c")
    report = await storage.collect_garbage(0)
    assert sorted(report.removed) == sorted(hashes(c)) and report.removed_bytes > 0
    assert stored(storage.chunks) == hashes(b)
    assert await all_ok(storage)


async def test_unreferenced_chunks_younger_than_the_grace_period_stay(storage: Storage) -> None:
    await storage.create_dataset("a", frame(5), author="t", message="m")
    orphan, _ = storage.chunks.put_bytes(encode_parquet(pl.DataFrame({"x": [1, 2]}).to_arrow()))
    report = await storage.collect_garbage(HOUR)
    assert orphan in stored(storage.chunks) and report.kept_young == 1
    age(storage.chunks, orphan, 2 * HOUR)
    assert (await storage.collect_garbage(HOUR)).removed == [orphan]
    assert orphan not in stored(storage.chunks) and await all_ok(storage)


async def test_a_held_or_reused_chunk_is_never_removed(storage: Storage) -> None:
    data = encode_parquet(pl.DataFrame({"x": [1, 2, 3]}).to_arrow())
    h, _ = storage.chunks.put_bytes(data, hold=True)  # as a commit under way does
    age(storage.chunks, h, 2 * HOUR)
    assert (await storage.collect_garbage(0)).removed == []
    storage.chunks.release([h])
    assert (await storage.collect_garbage(0)).removed == [h]

    h, _ = storage.chunks.put_bytes(data)
    age(storage.chunks, h, 2 * HOUR)
    storage.chunks.put_bytes(data)  # reused by hash, as by a writer in another process: made young
    assert (await storage.collect_garbage(HOUR)).removed == []
    assert h in stored(storage.chunks)


async def test_a_pass_between_chunk_writes_and_the_catalog_keeps_them(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst case: a whole pass (no grace, every chunk old) runs after a create wrote or reused
    its chunks and before its manifest is in the catalog. Only the held hashes protect them."""
    await storage.create_dataset("a", frame(50), author="t", message="m")
    await storage.delete_dataset("a")  # its chunks are garbage, and "b" is about to reuse them
    create = storage.catalog.create_dataset
    reports = []

    async def late(first: object) -> None:
        age_all(storage.chunks)
        reports.append(await storage.collect_garbage(0))
        await create(first)  # type: ignore[arg-type]

    monkeypatch.setattr(storage.catalog, "create_dataset", late)
    b = await storage.create_dataset("b", frame(50), author="t", message="m")
    c = await storage.create_dataset("c", frame(8), author="t", message="m")  # new chunks, not reused
    assert [r.removed for r in reports] == [[], []]
    assert stored(storage.chunks) == hashes(b, c) and await all_ok(storage)
    assert (await storage.collect_garbage(0)).removed == []  # released now, and referenced


async def test_gc_while_datasets_come_and_go_loses_no_chunk(storage: Storage) -> None:
    """Commits reuse the chunks of deleted datasets (old, unreferenced) while passes run with no grace."""
    frames = [frame(40 + i % 3) for i in range(12)]
    stop = asyncio.Event()
    passes = 0

    async def collector() -> None:
        nonlocal passes
        while not stop.is_set():
            await storage.collect_garbage(0)
            passes += 1

    async def churn() -> None:
        for i, df in enumerate(frames):
            await storage.create_dataset(f"d{i}", df, author="t", message="m")
            age_all(storage.chunks)  # every chunk looks old: only the mark and the holds protect them
            if i % 2:
                await storage.delete_dataset(f"d{i - 1}")  # its chunks are reused by the next create

    gc = asyncio.create_task(collector())
    try:
        await churn()
    finally:
        stop.set()
        await gc
    assert passes > 0
    await storage.collect_garbage(0)
    assert await all_ok(storage)
    names = await storage.catalog.list_datasets()
    for name in names:
        assert (await storage.state_of(await storage.resolve(name, "main"))).frame.height > 0


async def test_gc_refuses_a_chunk_store_another_catalog_filled(tmp_path: Path) -> None:
    data = tmp_path / "data"
    marker = data / f"chunks{OWNER_SUFFIX}"
    first = await Storage.open(data)
    try:
        m = await first.create_dataset("a", frame(5), author="t", message="m")
        await first.collect_garbage(0)  # claims the chunk store for its catalog
    finally:
        await first.close()
    assert marker.read_text().startswith("sqlite:")
    other = await Storage.open(data, str(tmp_path / "other.sqlite3"))  # an empty catalog, same chunks
    try:
        age_all(other.chunks)
        report = await other.collect_garbage(0)
        assert report.skipped and "belongs to the catalog" in report.skipped and report.removed == []
        marker.unlink()  # as a chunk store from before 0.5.0: claimed only by a catalog that uses it
        report = await other.collect_garbage(0)
        assert report.skipped and "references none of them" in report.skipped and report.removed == []
        assert not marker.exists() and stored(other.chunks) == hashes(m)
    finally:
        await other.close()
    first = await Storage.open(data)
    try:
        assert (await first.collect_garbage(0)).skipped is None and marker.exists()
        assert await all_ok(first)
    finally:
        await first.close()
    moved = data.rename(tmp_path / "moved")  # a data directory keeps its catalog when it moves
    first = await Storage.open(moved)
    try:
        assert (await first.collect_garbage(0)).skipped is None and await all_ok(first)
    finally:
        await first.close()


@persistent_only
async def test_the_server_collects_at_startup(backend: Backend) -> None:
    storage = await backend.open_storage()
    try:
        keep = await storage.create_dataset("keep", frame(3), author="t", message="m")
        assert (await storage.collect_garbage(HOUR)).skipped is None  # claims the store for the catalog
        orphan, _ = storage.chunks.put_bytes(encode_parquet(pl.DataFrame({"x": [1]}).to_arrow()))
        age(storage.chunks, orphan, 2 * HOUR)
    finally:
        await storage.close()
    async with durable_server(backend) as srv:
        collector = srv.registry.storage.collector
        assert collector is not None
        report = await asyncio.wait_for(collector.wait_pass(0), timeout(30))
        assert report is not None and report.removed == [orphan]
        m = await srv.registry.create("a", frame(5))
        await srv.registry.storage.delete_dataset("a")  # a delete pokes the collector
        passes = collector.passes
        age_all(srv.registry.storage.chunks)
        collector.poke()
        report = await asyncio.wait_for(collector.wait_pass(passes), timeout(30))
        assert report is not None and sorted(report.removed) == sorted(hashes(m))
        assert stored(srv.registry.storage.chunks) == hashes(keep)


# ---------------------------------------------------------------- the CLI: fsck, delete, gc


async def cli(*args: str, data: Path, catalog: str | None) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "server.cli", *args, "--data-dir", str(data)]
    cmd += ["--catalog", catalog] if catalog else []
    env = {k: v for k, v in os.environ.items() if k not in ("COFRAME_DATA", "COFRAME_CATALOG")}
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout(120))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@persistent_only
async def test_fsck_names_the_broken_chunk_and_delete_then_gc_clean_up(backend: Backend) -> None:
    data = backend.data_dir
    assert data is not None
    storage = await backend.open_storage()
    try:
        a = await storage.create_dataset("a", frame(50), author="t", message="m")
        b = await storage.create_dataset("b", frame(9), author="t", message="m")
        broken = a.chunks[0].hash
        path = storage.chunks.path(broken)
    finally:
        await storage.close()
    await asyncio.to_thread(os.unlink, path)

    code, out, err = await cli("fsck", data=data, catalog=backend.url)
    assert code == 1, (out, err)
    assert f"broken: a: commit {a.id} chunk {broken} missing: {path}" in err
    assert "checked 2 datasets, 2 commits" in out and "1 problems" in out
    code, out, err = await cli("fsck", "b", data=data, catalog=backend.url)
    assert code == 0 and "checked 1 datasets, 1 commits" in out and ": ok" in out, (out, err)
    code, out, err = await cli("fsck", "nope", data=data, catalog=backend.url)
    assert code == 2 and "no dataset 'nope'" in err

    code, out, err = await cli("delete", "a", data=data, catalog=backend.url)
    assert code == 0 and "deleted dataset a: 1 commits, 1 branches, 0 tags" in out, (out, err)
    code, out, err = await cli("delete", "a", data=data, catalog=backend.url)
    assert code == 2 and "no dataset 'a'" in err
    code, out, err = await cli("fsck", data=data, catalog=backend.url)
    assert code == 0, (out, err)
    code, out, err = await cli("gc", "--grace", "0", data=data, catalog=backend.url)
    assert code == 0 and f"{len(hashes(a)) - 1} unreferenced chunks removed" in out, (out, err)
    left = ChunkStore(data / "chunks")
    assert stored(left) == hashes(b)


@persistent_only
async def test_cli_export_then_import_keeps_or_renumbers_rids(backend: Backend, tmp_path: Path) -> None:
    data = backend.data_dir
    assert data is not None
    sparse = frame(4).with_columns(pl.Series("_rid", [8, 0, 3, 5]))
    storage = await backend.open_storage()
    try:
        await storage.create_dataset("src", sparse, author="t", message="m", rids="keep")
    finally:
        await storage.close()
    for fmt in ("parquet", "csv"):
        out = tmp_path / f"src.{fmt}"
        code, _, err = await cli("export", "src", "-o", str(out), data=data, catalog=backend.url)
        assert code == 0, err
        code, _, err = await cli(
            "import", str(out), "--dataset", f"kept_{fmt}", "--rids", "keep", data=data, catalog=backend.url
        )
        assert code == 0, err
        code, text, err = await cli(
            "import", str(out), "--dataset", f"new_{fmt}", data=data, catalog=backend.url
        )
        assert code == 0 and "4 rows × 4 columns" in text, err
    storage = await backend.open_storage()
    try:
        for fmt in ("parquet", "csv"):
            kept = (await storage.state_of(await storage.resolve(f"kept_{fmt}", "main"))).frame
            fresh = (await storage.state_of(await storage.resolve(f"new_{fmt}", "main"))).frame
            assert kept["_rid"].to_list() == [0, 3, 5, 8] and kept["name"].to_list() == [
                "item1",
                "item2",
                "item3",
                "item0",
            ]
            assert (
                fresh["_rid"].to_list() == [0, 1, 2, 3] and fresh["name"].to_list() == kept["name"].to_list()
            )
    finally:
        await storage.close()
