"""Storage safety (issue 10): no upload, crash, broken chunk or odd name hurts anyone else.

- A dataset appears only with its first commit and ``main`` (one catalog
  transaction): the listing never fails while an upload commits, and a
  kill -9 during an upload leaves no half dataset. Half-created datasets an
  older version left are removed at start-up, and a dataset that cannot be
  described is listed as ``broken`` instead of failing the listing.
- A missing or corrupt chunk gives joiners ``storage_corrupt`` and close 4009
  at once (the Python client raises it), logged once, not retried in a loop.
- A NUL byte, a control character or a trailing newline in a name or a
  version is ``bad_name`` (400), never a 500, on every backend.
- A file coframe exported can be uploaded again: ``rids=new`` or ``rids=keep``.

The chunk GC, ``coframe fsck`` and ``coframe delete`` are in
tests/test_storage_safety_gc.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from websockets.exceptions import ConnectionClosed

from client import RoomRefused, connect
from protocol import CloseCode, ErrorCode
from server.io import read_frame, write_frame
from server.storage.catalog import split_pg_url
from server.storage.catalog_common import encode_manifest
from server.storage.chunks import MemoryFS
from server.storage.service import Storage
from tests.conftest import Backend, persistent_only, timeout
from tests.helpers import frame
from tests.procs import start_server
from tests.storage_server import DurableServer, durable_server
from tests.wire import RawPeer


def names_of(listing: list[dict[str, Any]]) -> list[str]:
    return [d["name"] for d in listing]


def break_chunk(storage: Storage, h: str, *, corrupt: bool = False) -> str:
    """Delete chunk ``h`` (or overwrite it with other bytes); return where it lived."""
    store = storage.chunks
    if isinstance(store.fs, MemoryFS):
        key = store.key(h)
        if corrupt:
            store.fs.blobs[key] = b"PAR1 not the bytes that were stored PAR1"
        else:
            store.fs.remove(key)
    else:
        path = Path(store.path(h))
        if corrupt:
            path.write_bytes(b"PAR1 not the bytes that were stored PAR1")
        else:
            path.unlink()
    return store.path(h)


async def raw_sql(backend: Backend, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run SQL on the catalog behind coframe's back (as an older version would have left it)."""
    if backend.kind == "sqlite":
        import sqlite3

        assert backend.data_dir is not None
        with sqlite3.connect(backend.data_dir / "catalog.sqlite3") as conn:
            for sql, args in statements:
                conn.execute(sql.replace("$1", "?").replace("$2", "?").replace("$3", "?"), args)
        return
    dsn, schema = split_pg_url(backend.url or "")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
    try:
        for sql, args in statements:
            await conn.execute(sql, *args)
    finally:
        await conn.close()


# ---------------------------------------------------------------- atomic creation and the listing


async def test_the_listing_answers_while_an_upload_commits(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with durable_server(backend) as srv, srv.client() as http:
        await srv.registry.create("other", frame(5))
        store = srv.registry.storage.chunks
        loop = asyncio.get_running_loop()
        writing, proceed = asyncio.Event(), threading.Event()
        put_bytes = store.put_bytes

        def gated(data: bytes, *, hold: bool = False) -> tuple[str, int]:  # in a commit's worker thread
            loop.call_soon_threadsafe(writing.set)
            assert proceed.wait(timeout(30))
            return put_bytes(data, hold=hold)

        monkeypatch.setattr(store, "put_bytes", gated)
        body = write_frame(frame(300), "parquet")
        uploading = asyncio.create_task(
            http.post("/api/datasets/up", params={"format": "parquet"}, content=body)
        )
        try:
            await asyncio.wait_for(writing.wait(), timeout(30))  # the upload is writing its commit now
            r = await http.get("/api/datasets")
            assert r.status_code == 200, r.text
            assert names_of(r.json()) == ["other"]  # not there until it is whole
            assert (await http.get("/")).status_code == 200
            assert (await http.get("/healthz")).status_code == 200
        finally:
            proceed.set()
        assert (await uploading).status_code == 201
        listing = (await http.get("/api/datasets")).json()
        assert names_of(listing) == ["other", "up"] and not any("broken" in d for d in listing)
        assert listing[1]["rows"] == 300 and listing[1]["branches"] == ["main"]


@persistent_only
async def test_kill9_during_an_upload_leaves_no_half_dataset(tmp_path: Path, backend: Backend) -> None:
    data = backend.data_dir
    assert data is not None
    args = ["--no-demo", *(["--catalog", backend.url] if backend.url else [])]
    body = write_frame(frame(400_000), "parquet")
    srv = await start_server(*args, data_dir=data)
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        head = (
            "POST /api/datasets/up?format=parquet HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()  # the body is on its way: the server reads, parses and commits it
        srv.kill9()
        assert await srv.wait() == -9
        writer.close()
    finally:
        await srv.stop()

    srv = await start_server(*args, data_dir=data)
    try:
        async with httpx.AsyncClient(base_url=srv.http, timeout=timeout(60)) as http:
            r = await http.get("/api/datasets")
            assert r.status_code == 200, r.text
            assert not any("broken" in d for d in r.json()), r.text
            assert (await http.get("/")).status_code == 200
            if "up" in names_of(r.json()):  # the commit landed before the kill: it is whole
                assert r.json()[0]["rows"] == 400_000 and r.json()[0]["branches"] == ["main"]
            else:  # it did not: the name is free
                again = await http.post("/api/datasets/up", params={"format": "parquet"}, content=body)
                assert again.status_code == 201, again.text
            assert (await http.get("/api/datasets/up/log")).status_code == 200
    finally:
        await srv.stop()
    assert not any("half-created" in line for line in srv.log), srv.log


@persistent_only
async def test_half_created_datasets_are_removed_at_startup(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async with durable_server(backend) as srv:  # creates the catalog
        await srv.registry.create("good", frame(4))
        orphan = await srv.registry.storage.write(
            "good",
            (await srv.registry.live_state("good")),
            parent=None,
            dirty=None,
            author="t",
            message="m",
            seq=0,
        )
    manifest = json.loads(encode_manifest(orphan))
    manifest["dataset"] = "halfc"
    await raw_sql(
        backend,  # what a crash inside an older create_dataset left: no ref, maybe no commit
        ("INSERT INTO datasets (name, created) VALUES ($1, $2)", ("half", 0.0)),
        ("INSERT INTO datasets (name, created) VALUES ($1, $2)", ("halfc", 0.0)),
        (
            "INSERT INTO commits (dataset, id, parent, seq, time, manifest) VALUES ($1, $2, NULL, 0, 0, $3)",
            ("halfc", orphan.id, json.dumps(manifest)),
        ),
    )
    caplog.set_level(logging.WARNING, "coframe.storage")
    async with durable_server(backend) as srv, srv.client() as http:
        removed = [r.getMessage() for r in caplog.records if "half-created" in r.getMessage()]
        assert (
            len(removed) == 2 and any("'half'" in m for m in removed) and any("'halfc'" in m for m in removed)
        )
        r = await http.get("/api/datasets")
        assert r.status_code == 200 and names_of(r.json()) == ["good"]
        for name in ("half", "halfc"):
            up = await http.post(
                f"/api/datasets/{name}", params={"format": "csv"}, content=write_frame(frame(2), "csv")
            )
            assert up.status_code == 201, up.text


async def test_a_broken_dataset_is_listed_as_broken(backend: Backend) -> None:
    async with durable_server(backend) as srv, srv.client() as http:
        await srv.registry.create("good", frame(3))
        await srv.registry.create("nomain", frame(3))
        await srv.registry.storage.create_branch("nomain", "dev")
        await srv.registry.storage.catalog.delete_ref("nomain", "main", "branch")
        r = await http.get("/api/datasets")
        assert r.status_code == 200, r.text
        good, nomain = r.json()
        assert good["name"] == "good" and "broken" not in good and good["rows"] == 3
        assert nomain["name"] == "nomain" and "no branch 'main'" in nomain["broken"]
        page = await http.get("/")
        assert page.status_code == 200 and "broken: dataset &#x27;nomain&#x27; has no branch" in page.text


# ---------------------------------------------------------------- corruption


async def test_a_missing_chunk_gives_joiners_storage_corrupt(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with durable_server(backend) as srv, srv.client() as http:
        m = await srv.registry.create("sales", frame(40))
        h = m.chunks[0].hash
        where = break_chunk(srv.registry.storage, h)

        peer = await RawPeer.open(srv.url, "sales")
        await peer.send({"type": "hello", "id": 0, "client": "a", "version": 1})
        err = await peer.recv_until("error", within=timeout(10))
        assert err.code == ErrorCode.STORAGE_CORRUPT and err.re == 0
        assert err.details["dataset"] == "sales" and err.details["commit"] == m.id
        assert (
            err.details["chunk"] == h and err.details["path"] == where and err.details["problem"] == "missing"
        )
        assert "coframe fsck sales" in err.message
        with pytest.raises(ConnectionClosed):
            await peer.recv(within=timeout(10))
        assert peer.ws.close_code == CloseCode.STORAGE_CORRUPT

        for _ in range(3):  # raised at once (waiting would end in TimeoutError): no reconnect loop
            with pytest.raises(RoomRefused) as info:
                await connect(srv.url, "sales").open()
            assert info.value.code == ErrorCode.STORAGE_CORRUPT and info.value.close_code == 4009
            assert info.value.details["chunk"] == h

        listing = (await http.get("/api/datasets")).json()
        assert "coframe fsck sales" in listing[0]["broken"]
        export = await http.get("/api/datasets/sales/export")
        assert export.status_code == 500 and export.json()["error"]["code"] == "storage_corrupt"
    loads = [r for r in caplog.records if "cannot load sales/main" in r.getMessage()]
    assert len(loads) == 1, [r.getMessage() for r in loads]  # four joins, one load, one line
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks for a corrupt chunk"


async def test_a_corrupt_chunk_is_named_too(backend: Backend) -> None:
    async with durable_server(backend) as srv:
        m = await srv.registry.create("sales", frame(40))
        break_chunk(srv.registry.storage, m.chunks[0].hash, corrupt=True)
        with pytest.raises(RoomRefused) as info:
            await connect(srv.url, "sales").open()
        assert info.value.details["problem"] == "hash" and info.value.details["chunk"] == m.chunks[0].hash
        with pytest.raises(RoomRefused) as info:  # a time-travel room too
            await connect(srv.url, "sales", at=m.id[:12]).open()
        assert info.value.code == "storage_corrupt"


# ---------------------------------------------------------------- names: NUL, control characters, newlines


BAD_VALUES = ("a\x00b", "\x00", "main\n", "ma\tin", "x\x7f")


async def test_nul_and_control_characters_are_bad_names(backend: Backend) -> None:
    async with durable_server(backend) as srv, srv.client() as http:
        m = await srv.registry.create("sales", frame(5))
        api = "/api/datasets/sales"
        for bad in BAD_VALUES:
            gets = [
                (f"{api}/export", {"at": bad}),
                (f"{api}/export", {"branch": bad}),
                (f"{api}/log", {"ref": bad}),
                (f"{api}/diff", {"from": bad}),
                (f"{api}/diff", {"from": "main", "to": bad}),
                (f"{api}/diff", {"from": "main", "to": f"live:{bad}"}),
            ]
            for path, params in gets:
                r = await http.get(path, params=params)
                assert r.status_code == 400 and r.json()["error"]["code"] == "bad_name", (
                    path,
                    params,
                    r.text,
                )
            posts = [
                (f"{api}/branches", {"name": bad}),
                (f"{api}/branches", {"name": "ok", "from": bad}),
                (f"{api}/tags", {"name": bad}),
                (f"{api}/tags", {"name": "t", "at": bad}),
                (f"{api}/revert", {"to": bad}),
                (f"{api}/revert", {"branch": bad, "to": m.id}),
            ]
            for path, body in posts:
                r = await http.post(path, json=body)
                assert r.status_code == 400 and r.json()["error"]["code"] == "bad_name", (path, body, r.text)
            page = await http.get("/d/sales", params={"branch": bad})
            assert page.status_code == 404, page.text
        assert (await http.get("/api/datasets")).status_code == 200
        assert [r["name"] for r in (await http.get(f"{api}/refs")).json()["branches"]] == ["main"]


async def test_nul_in_websocket_urls_and_queries_is_bad_name(backend: Backend) -> None:
    async with durable_server(backend) as srv:
        await srv.registry.create("sales", frame(5))
        for query in ("branch=ma%00in", "at=a%00b", "branch=main%0A", "at=%0A"):
            peer = await RawPeer.open(srv.url, f"sales?{query}")
            await peer.send({"type": "hello", "id": 0, "client": "a", "version": 1})
            err = await peer.recv_until("error", within=timeout(10))
            assert err.code == ErrorCode.BAD_NAME, (query, err)
            with pytest.raises(ConnectionClosed):
                await peer.recv(within=timeout(10))
            assert peer.ws.close_code == CloseCode.NO_SUCH_DATASET, query

        peer = await RawPeer.open(srv.url, "sales")
        await peer.hello("q")
        for i, (field, bad) in enumerate((("from", "a\x00b"), ("to", "main\n"), ("from", "x\x01"))):
            msg = {"type": "query", "id": 10 + i, "kind": "diff", "from": "main", field: bad}
            await peer.send(msg)
            err = await peer.recv_until("error", within=timeout(10), re=10 + i)
            assert err.code == ErrorCode.BAD_NAME, (field, bad, err)
        await peer.send({"type": "query", "id": 20, "kind": "log", "from": "a\x00"})
        assert (await peer.recv_until("error", within=timeout(10), re=20)).code == ErrorCode.BAD_NAME
        await peer.send({"type": "ping", "id": 21})
        await peer.recv_until("pong", within=timeout(10))  # the socket stays up
        await peer.close()

        peer = await RawPeer.open(srv.url, "sales")  # a client id that PostgreSQL could not store
        await peer.send({"type": "hello", "id": 0, "client": "a\x00b", "version": 1})
        err = await peer.recv_until("error", within=timeout(10))
        assert err.code == ErrorCode.BAD_FIELD and err.details["field"] == "client", err
        assert srv.registry.rooms.get(("sales", "main")) is None or not srv.room("sales").broken


# ---------------------------------------------------------------- re-uploading an exported file


async def upload(
    http: httpx.AsyncClient, name: str, content: bytes, fmt: str, **params: str
) -> httpx.Response:
    return await http.post(f"/api/datasets/{name}", params={"format": fmt, **params}, content=content)


async def test_an_exported_file_uploads_again(srv_with_gaps: tuple[DurableServer, httpx.AsyncClient]) -> None:
    srv, http = srv_with_gaps
    for fmt in ("parquet", "csv", "json", "arrow"):
        exported = (await http.get("/api/datasets/gaps/export", params={"format": fmt})).content
        original = read_frame(exported, fmt)
        assert original["_rid"].to_list() == [0, 2, 3, 5, 6]
        kept = await upload(http, f"kept_{fmt}", exported, fmt, rids="keep")
        assert kept.status_code == 201, kept.text
        assert kept.json()["columns"] == 4 and kept.json()["rows"] == 5
        again = read_frame(
            (await http.get(f"/api/datasets/kept_{fmt}/export", params={"format": fmt})).content, fmt
        )
        assert_frame_equal(again, original)
        fresh = await upload(http, f"new_{fmt}", exported, fmt)  # the default: rids=new
        assert fresh.status_code == 201, fresh.text
        renumbered = read_frame(
            (await http.get(f"/api/datasets/new_{fmt}/export", params={"format": fmt})).content, fmt
        )
        assert renumbered["_rid"].to_list() == list(range(5))
        assert_frame_equal(renumbered.drop("_rid"), original.drop("_rid"))
    async with connect(srv.url, "kept_parquet") as room:  # a kept dataset goes on after its largest rid
        assert await room.insert_rows(
            pl.DataFrame({"name": ["n"], "price": [1.0], "qty": [1], "ok": [True]})
        ) == [7]


@pytest.fixture
async def srv_with_gaps(backend: Backend) -> Any:
    """A server with dataset ``gaps``: rids 0..6 with 1 and 4 deleted (and 7 deleted after an insert)."""
    async with durable_server(backend) as srv, srv.client() as http:
        await srv.registry.create("gaps", frame(7))
        async with connect(srv.url, "gaps") as room:
            await room.insert_rows(pl.DataFrame({"name": ["x"], "price": [0.0], "qty": [0], "ok": [False]}))
            await room.delete_rows([1, 4, 7])
        yield srv, http


async def test_kept_rids_must_be_unique_non_negative_whole_numbers(backend: Backend) -> None:
    async with durable_server(backend) as srv, srv.client() as http:
        cases = {
            "dup": pl.DataFrame({"_rid": [1, 2, 2], "a": [1, 2, 3]}),
            "neg": pl.DataFrame({"_rid": [0, -1, 2], "a": [1, 2, 3]}),
            "null": pl.DataFrame({"_rid": [0, None, 2], "a": [1, 2, 3]}),
            "float": pl.DataFrame({"_rid": [0.5, 1.0, 2.0], "a": [1, 2, 3]}),
            "text": pl.DataFrame({"_rid": ["a", "b", "c"], "a": [1, 2, 3]}),
        }
        for name, df in cases.items():
            r = await upload(http, name, write_frame(df, "parquet"), "parquet", rids="keep")
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_op", (name, r.text)
            assert "rids=new" in r.json()["error"]["message"]
        assert (await http.get("/api/datasets")).json() == []
        ok = await upload(
            http, "ok", write_frame(pl.DataFrame({"_rid": [9, 3], "a": [1, 2]}), "csv"), "csv", rids="keep"
        )
        assert ok.status_code == 201, ok.text
        got = read_frame((await http.get("/api/datasets/ok/export")).content, "parquet")
        assert got.to_dict(as_series=False) == {"_rid": [3, 9], "a": [2, 1]}
