"""The HTTP API for datasets and versions (issue 5), on every catalog backend.

A real uvicorn server on the ``backend`` fixture's storage (memory, SQLite or
PostgreSQL; tests/storage_server.py); edits
come from the Python client, commits with ``room.commit``. Every check of a
version compares frames exported over HTTP with frames the client saw.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from client import connect
from server.io import FORMATS, write_frame
from server.storage.chunks import MemoryFS
from tests.conftest import Backend
from tests.helpers import brute_diff, frame
from tests.storage_server import DurableServer, catalog_state, durable_server


@pytest.fixture
async def srv(backend: Backend) -> AsyncIterator[DurableServer]:
    async with durable_server(backend) as s:
        yield s


@pytest.fixture
async def http(srv: DurableServer) -> AsyncIterator[httpx.AsyncClient]:
    async with srv.client() as c:
        yield c


def read(content: bytes, fmt: str = "parquet") -> pl.DataFrame:
    from server.io import read_frame

    return read_frame(content, fmt)


async def upload(
    http: httpx.AsyncClient, name: str, df: pl.DataFrame, fmt: str = "parquet"
) -> httpx.Response:
    return await http.post(f"/api/datasets/{name}", params={"format": fmt}, content=write_frame(df, fmt))


async def export(http: httpx.AsyncClient, name: str, **params: str) -> pl.DataFrame:
    r = await http.get(f"/api/datasets/{name}/export", params={"format": "parquet", **params})
    assert r.status_code == 200, r.text
    return read(r.content).sort("_rid")


def assert_error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert len(err["message"]) > 20, err
    return str(err["message"])


def chunk_files(srv: DurableServer) -> set[str]:
    """The names of the stored chunks (files on disk, or the memory store's keys)."""
    fs = srv.registry.storage.chunks.fs
    if isinstance(fs, MemoryFS):
        return {key.rsplit("/", 1)[-1] for key in fs.blobs}
    assert srv.data_dir is not None
    return {p.name for p in (srv.data_dir / "chunks").rglob("*") if p.is_file()}


# ---------------------------------------------------------------- upload and export


async def test_upload_each_format_round_trips(srv: DurableServer, http: httpx.AsyncClient) -> None:
    df = frame()
    for fmt in FORMATS:
        r = await upload(http, f"t_{fmt}", df, fmt)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["name"] == f"t_{fmt}" and body["rows"] == df.height and body["columns"] == df.width
        log = (await http.get(f"/api/datasets/t_{fmt}/log")).json()
        assert [c["commit"] for c in log] == [body["commit"]]
        for out in FORMATS:
            r = await http.get(f"/api/datasets/t_{fmt}/export", params={"format": out})
            assert r.status_code == 200, r.text
            assert f't_{fmt}.{out}"' in r.headers["content-disposition"]
            got = read(r.content, out)
            assert got["_rid"].to_list() == list(range(df.height))
            assert_frame_equal(got.drop("_rid"), df, check_dtypes=out not in ("csv",))


async def test_upload_infers_format_from_content_type_filename_or_bytes(http: httpx.AsyncClient) -> None:
    df = frame(5)
    cases: list[tuple[str, dict[str, str], dict[str, str], str]] = [
        ("by_type", {}, {"content-type": "text/csv"}, "csv"),
        ("by_type_nd", {}, {"content-type": "application/x-ndjson"}, "ndjson"),
        ("by_name", {"filename": "x.arrow"}, {}, "arrow"),
        ("by_bytes", {}, {"content-type": "application/octet-stream"}, "parquet"),
    ]
    for name, params, headers, fmt in cases:
        r = await http.post(
            f"/api/datasets/{name}", params=params, headers=headers, content=write_frame(df, fmt)
        )
        assert r.status_code == 201, (name, r.text)
        assert_frame_equal((await export(http, name)).drop("_rid"), df)
    r = await http.post("/api/datasets/nofmt", content=write_frame(df, "csv"))
    assert "format" in assert_error(r, 400, "bad_format")


async def test_bad_input_is_rejected_and_nothing_is_written(
    srv: DurableServer, http: httpx.AsyncClient
) -> None:
    assert (await upload(http, "keep", frame())).status_code == 201
    before, chunks = await catalog_state(srv.registry), chunk_files(srv)
    csv = write_frame(frame(3), "csv")
    for raw in ("%2E%2E%2Fx", "%2E%2E", "a%2Fb", "-x", "a..b", "x" * 129, "%20x", "a%00b"):
        r = await http.post(f"/api/datasets/{raw}", params={"format": "csv"}, content=csv)
        assert "never a path" in assert_error(r, 400, "bad_name"), raw
    cases = [
        ("parquet", b"PAR1 this is not parquet", "unreadable"),
        ("arrow", b"ARROW1\x00\x00garbage", "unreadable"),
        ("json", b'{"a": [1, 2', "unreadable"),
        ("ndjson", b'{"a": 1}\n{"a": ', "unreadable"),
        ("csv", b"\x00\x01\x02\x03binary", "unreadable"),
        ("csv", b"", "unreadable"),
        ("xlsx", csv, "bad_format"),
    ]
    for fmt, content, code in cases:
        r = await http.post("/api/datasets/bad", params={"format": fmt}, content=content)
        assert_error(r, 400, code)
    clash = frame(3).with_columns(pl.lit(1).alias("_rid"))  # rids=keep, but they repeat
    for fmt in ("csv", "parquet", "json"):
        r = await http.post(
            "/api/datasets/clash", params={"format": fmt, "rids": "keep"}, content=write_frame(clash, fmt)
        )
        assert "_rid" in assert_error(r, 400, "bad_op")
    r = await http.post("/api/datasets/clash", params={"format": "csv", "rids": "old"}, content=csv)
    assert "rids=keep" in assert_error(r, 400, "bad_request")
    r = await upload(http, "keep", frame(3))
    assert "already exists" in assert_error(r, 409, "dataset_exists")
    assert await catalog_state(srv.registry) == before
    assert chunk_files(srv) == chunks
    assert_frame_equal((await export(http, "keep")).drop("_rid"), frame())


async def test_upload_over_the_size_limit_is_413(backend: Backend) -> None:
    async with durable_server(backend, max_upload_bytes=2048) as srv, srv.client() as http:
        big = write_frame(frame(400), "csv")
        assert len(big) > 2048
        r = await http.post("/api/datasets/big", params={"format": "csv"}, content=big)
        assert "limit" in assert_error(r, 413, "too_large")

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while streaming
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        r = await http.post("/api/datasets/big", params={"format": "csv"}, content=chunked())
        assert_error(r, 413, "too_large")
        assert await catalog_state(srv.registry) == {}
        small = write_frame(frame(3), "csv")
        r = await http.post("/api/datasets/small", params={"format": "csv"}, content=small)
        assert r.status_code == 201, r.text


async def test_export_at_a_tag_is_the_frame_at_tag_time(srv: DurableServer, http: httpx.AsyncClient) -> None:
    assert (await upload(http, "t", frame())).status_code == 201
    async with connect(srv.url, "t") as room:
        await room.set_cells([0, 1], "price", [100.0, None])
        await room.insert_rows([{"name": "new", "price": 2.5, "qty": 9, "ok": True}])
        await room.delete_rows([5])
        c1 = await room.commit("first edits")
        at_c1 = room.frame.sort("_rid")
        r = await http.post("/api/datasets/t/tags", json={"name": "v1", "at": c1})
        assert r.status_code == 201 and r.json()["commit"] == c1
        await room.set_cells([2], "name", ["changed"])
        await room.rename_column("qty", "quantity")
        c2 = await room.commit("second")
        await room.set_cells([3], "price", [-1.0])  # uncommitted: only in the live state
        await room.sync()
        live = room.frame.sort("_rid")
    for at in ("v1", c1, c1[:10]):
        assert_frame_equal(await export(http, "t", at=at), at_c1)
    r = await http.get("/api/datasets/t/export", params={"at": "v1", "format": "csv"})
    assert r.headers["content-disposition"] == 'attachment; filename="t@v1.csv"'
    assert r.headers["x-coframe-commit"] == c1
    assert_frame_equal(await export(http, "t"), live)
    assert (await export(http, "t", at=c2))["price"].to_list() != live["price"].to_list()
    assert_error(await http.get("/api/datasets/t/export", params={"at": "nope"}), 404, "not_found")
    assert_error(await http.get("/api/datasets/zz/export"), 404, "not_found")
    assert_error(await http.get("/api/datasets/t/export", params={"format": "xls"}), 400, "bad_format")
    assert_error(await http.get("/api/datasets/t/export", params={"branch": "nob"}), 404, "not_found")
    assert_error(await http.get("/api/datasets/%2E%2E%2Ft/export"), 400, "bad_name")


async def test_log_order_and_fields(srv: DurableServer, http: httpx.AsyncClient) -> None:
    first = (await upload(http, "t", frame())).json()["commit"]
    commits = [first]
    async with connect(srv.url, "t") as room:
        for i in range(3):
            await room.set_cells([i], "qty", [100 + i])
            commits.append(await room.commit(f"edit {i}"))
    log = (await http.get("/api/datasets/t/log")).json()
    assert [c["commit"] for c in log] == commits[::-1]
    for newer, older in zip(log, log[1:], strict=False):
        assert newer["parents"] == [older["commit"]]
        assert newer["seq"] > older["seq"] and newer["time"] >= older["time"]
    assert log[-1]["parents"] == [] and log[-1]["author"] == "http" and log[-1]["seq"] == 0
    assert [c["message"] for c in log[:3]] == ["edit 2", "edit 1", "edit 0"]
    assert set(log[0]) == {"commit", "parents", "author", "message", "time", "seq", "rows"}
    assert all(c["rows"] == 30 for c in log)
    assert len((await http.get("/api/datasets/t/log", params={"limit": 2})).json()) == 2
    older = (await http.get("/api/datasets/t/log", params={"ref": commits[1]})).json()
    assert [c["commit"] for c in older] == commits[1::-1]
    assert_error(await http.get("/api/datasets/t/log", params={"limit": "0"}), 400, "bad_request")
    assert_error(await http.get("/api/datasets/t/log", params={"ref": "nope"}), 404, "not_found")


# ---------------------------------------------------------------- diff


async def test_diff_json_and_parquet_match_a_brute_force_comparison(
    srv: DurableServer, http: httpx.AsyncClient
) -> None:
    assert (await upload(http, "t", frame())).status_code == 201
    async with connect(srv.url, "t") as room:
        await room.set_cells([0, 1, 2], "price", [None, 7.25, 8.0])
        await room.set_cells([3], "name", ["renamed row"])
        await room.insert_rows([{"name": "a", "price": 1.0, "qty": 1, "ok": False}] * 2)
        await room.delete_rows([4, 6])
        c1 = await room.commit("one")
        await room.rename_column("qty", "quantity")
        await room.add_column("extra", "Int64", default=3)
        await room.set_cells([7, 8], "quantity", [40, 41])
        await room.delete_rows([9])
        await room.sync()
    v0 = (await http.get("/api/datasets/t/log")).json()[-1]["commit"]
    versions = {v0: await export(http, "t", at=v0), c1: await export(http, "t", at=c1)}
    versions["live"] = await export(http, "t")
    renames = {v0: {}, c1: {}, "live": {"qty": "quantity"}}
    for a, b in [(v0, c1), (c1, "live"), (v0, "live"), ("live", v0)]:
        rn = renames[b] if a != "live" else {v: k for k, v in renames[a].items()}
        want = brute_diff(versions[a], versions[b], rn)
        r = await http.get("/api/datasets/t/diff", params={"from": a, "to": b})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["added"] == want["added"] and got["deleted"] == want["deleted"], (a, b)
        assert {(c["rid"], c["column"], c["old"], c["new"]) for c in got["changed"]} == want["changed"]
        assert got["summary"]["changed_cells"] == len(want["changed"])
        r = await http.get("/api/datasets/t/diff", params={"from": a, "to": b, "format": "parquet"})
        assert r.status_code == 200, r.text
        table = pq.read_table(io.BytesIO(r.content))
        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
        assert df.filter(kind="added")["rid"].to_list() == want["added"]
        assert df.filter(kind="deleted")["rid"].to_list() == want["deleted"]
        cells = df.filter(kind="changed").select("rid", "column", "old", "new").rows()
        assert set(cells) == want["changed"]
        assert json.loads(table.schema.metadata[b"coframe.schema"]) == got["schema"]
    schema = (await http.get("/api/datasets/t/diff", params={"from": c1})).json()["schema"]
    assert {(s["change"], s["name"]) for s in schema} == {("renamed", "quantity"), ("added", "extra")}
    to_self = (await http.get("/api/datasets/t/diff", params={"from": "live:main", "to": "live"})).json()
    assert to_self["summary"]["changed_cells"] == 0 and to_self["added"] == []
    assert_error(await http.get("/api/datasets/t/diff"), 400, "bad_request")
    assert_error(
        await http.get("/api/datasets/t/diff", params={"from": c1, "format": "xml"}), 400, "bad_format"
    )
    assert_error(await http.get("/api/datasets/t/diff", params={"from": "nope"}), 404, "not_found")
    assert_error(await http.get("/api/datasets/t/diff", params={"from": "live:../x"}), 400, "bad_name")


# ---------------------------------------------------------------- refs


async def test_branch_from_a_commit_and_tags_never_move(srv: DurableServer, http: httpx.AsyncClient) -> None:
    v0 = (await upload(http, "t", frame())).json()["commit"]
    async with connect(srv.url, "t") as room:
        await room.set_cells([0], "qty", [77])
        c1 = await room.commit("c1")
    r = await http.post("/api/datasets/t/branches", json={"name": "old", "from": v0[:8]})
    assert r.status_code == 201 and r.json()["commit"] == v0, r.text
    assert_frame_equal(await export(http, "t", branch="old"), await export(http, "t", at=v0))
    async with connect(srv.url, "t", branch="old") as room:
        await room.set_cells([1], "qty", [55])
        await room.sync()
    assert (await export(http, "t", branch="old"))["qty"][1] == 55
    assert (await export(http, "t"))["qty"].to_list()[:2] == [77, 1]
    assert_error(await http.post("/api/datasets/t/branches", json={"name": "old"}), 409, "already_exists")
    r = await http.post("/api/datasets/t/branches", json={"name": "x", "from": "nope"})
    assert_error(r, 404, "not_found")
    assert_error(await http.post("/api/datasets/t/branches", json={"name": "../b"}), 400, "bad_name")
    assert_error(await http.post("/api/datasets/t/branches", content=b"{oops"), 400, "bad_request")

    assert (await http.post("/api/datasets/t/tags", json={"name": "v1", "at": v0})).status_code == 201
    r = await http.post("/api/datasets/t/tags", json={"name": "v1", "at": c1})
    assert "never move" in assert_error(r, 409, "already_exists")
    refs = (await http.get("/api/datasets/t/refs")).json()
    assert refs["tags"] == [{"name": "v1", "commit": v0}]
    assert {b["name"]: b["commit"] for b in refs["branches"]} == {"main": c1, "old": v0}
    assert_error(await http.post("/api/datasets/t/tags", json={"name": "v2", "at": "nope"}), 404, "not_found")


async def test_revert_makes_a_new_commit_and_the_live_room_reloads(
    srv: DurableServer, http: httpx.AsyncClient
) -> None:
    assert (await upload(http, "t", frame())).status_code == 201
    async with connect(srv.url, "t") as room:
        await room.set_cells([0], "price", [1.0])
        c1 = await room.commit("keep this")
        await room.set_cells([1], "price", [2.0])
        await room.insert_rows([{"name": "later", "price": 3.0, "qty": 3, "ok": True}])
        await room.commit("then this")
        await room.delete_rows([2])  # uncommitted when the revert comes
        await room.sync()
        old = await export(http, "t", at=c1)
        r = await http.post("/api/datasets/t/revert", json={"branch": "main", "to": c1})
        assert r.status_code == 201, r.text
        rev = r.json()
        assert rev["reverted_to"] == c1 and rev["commit"] != c1
        await room.wait_for_seq(rev["seq"])
        assert room.reconnects >= 1
        assert_frame_equal(room.frame.sort("_rid"), old)
        ack = await room.set_cells([3], "qty", [99])  # the reloaded room takes edits
        assert ack.seq > rev["seq"]
    log = (await http.get("/api/datasets/t/log")).json()
    assert log[0]["commit"] == rev["commit"] and log[0]["parents"] == [log[1]["commit"]]
    assert [c["message"] for c in log[1:4]] == ["autocommit (room unload)", "then this", "keep this"]
    assert_frame_equal(await export(http, "t", at=rev["commit"]), old)
    assert_error(await http.post("/api/datasets/t/revert", json={"to": "nope"}), 404, "not_found")
    r = await http.post("/api/datasets/t/revert", json={"branch": "nob", "to": c1})
    assert_error(r, 404, "not_found")
    assert_error(await http.post("/api/datasets/t/revert", json={}), 400, "bad_request")


# ---------------------------------------------------------------- in memory


async def test_memory_server_keeps_versions_for_its_lifetime(make_server: Any) -> None:
    """No data_dir (``--memory``): uploads are commits, and log, tags, branches, at= and diff work."""
    async with make_server(frames={}) as s, httpx.AsyncClient(base_url=s.http) as http:
        assert (await http.get("/healthz")).json()["storage"] == "memory"
        r = await upload(http, "m", frame(), "csv")
        assert r.status_code == 201, r.text
        first = r.json()["commit"]
        assert [c["commit"] for c in (await http.get("/api/datasets/m/log")).json()] == [first]
        assert_error(await upload(http, "m", frame()), 409, "dataset_exists")
        async with connect(s.url, "m") as room:
            await room.set_cells([0], "qty", 99)
            second = await room.commit("edit")
        r = await http.post("/api/datasets/m/tags", json={"name": "v1", "at": first})
        assert r.status_code == 201, r.text
        r = await http.post("/api/datasets/m/branches", json={"name": "dev", "from": "v1"})
        assert r.status_code == 201, r.text
        refs = (await http.get("/api/datasets/m/refs")).json()
        assert [b["name"] for b in refs["branches"]] == ["dev", "main"] and refs["tags"][0]["name"] == "v1"
        assert_frame_equal((await export(http, "m", at="v1")).drop("_rid"), frame())
        assert (await export(http, "m", at=second))["qty"][0] == 99
        d = (await http.get("/api/datasets/m/diff", params={"from": "v1", "to": second})).json()
        assert d["changed"] == [{"rid": 0, "column_id": 2, "column": "qty", "old": "0", "new": "99"}]
        assert_error(await http.get("/api/datasets/m/export", params={"at": "nope"}), 404, "not_found")
