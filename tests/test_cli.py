"""The ``coframe`` data commands as subprocesses (issue 5): import, export, log, diff, refs, branch, tag.

The version test runs a live server on the same data directory (and catalog)
so the CLI reads what a client committed and what is only in the WAL.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from client import connect
from server.io import read_frame
from server.storage.service import Storage
from tests.conftest import Backend, persistent_only
from tests.helpers import brute_diff, frame
from tests.procs import cli
from tests.storage_server import durable_server

IMPORTED = re.compile(r"^imported (\S+): (\d+) rows × (\d+) columns \(commit ([0-9a-f]{12})\)$", re.M)


def write_input(df: pl.DataFrame, path: Path) -> Path:
    fmt = path.suffix
    if fmt == ".csv":
        df.write_csv(path)
    elif fmt == ".parquet":
        df.write_parquet(path)
    elif fmt == ".json":
        df.write_json(path)
    elif fmt == ".ndjson":
        df.write_ndjson(path)
    elif fmt == ".arrow":
        df.write_ipc(path)
    elif fmt == ".arrows":  # an Arrow IPC stream
        table = df.to_arrow()
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    return path


def leftovers(folder: Path) -> list[Path]:
    """Temp files an interrupted export would leave."""
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


async def datasets(data: Path, catalog: str | None) -> list[str]:
    storage = await Storage.open(data, catalog)
    try:
        return sorted(await storage.catalog.list_datasets())
    finally:
        await storage.close()


@persistent_only  # the CLI works on the files and catalog a server would use
async def test_import_each_format_then_export(tmp_path: Path, backend: Backend) -> None:
    """Six imports run at once (concurrent CLI writers on one catalog), then six exports."""
    data, df = tmp_path / "data", frame(40)
    exts = (".csv", ".parquet", ".json", ".ndjson", ".arrow", ".arrows")
    names = ["t" + ext.replace(".", "_") for ext in exts]
    srcs = [write_input(df, tmp_path / f"in{ext}") for ext in exts]
    runs = await asyncio.gather(
        *(
            cli("import", str(src), "--dataset", n, data=data, catalog=backend.url)
            for n, src in zip(names, srcs)
        )
    )
    for name, (code, out, err) in zip(names, runs, strict=True):
        assert code == 0, err
        m = IMPORTED.search(out)
        assert m is not None, out
        assert m.groups()[:3] == (name, "40", "4")
    runs = await asyncio.gather(
        *(
            cli("export", n, "-o", str(tmp_path / f"{n}.parquet"), data=data, catalog=backend.url)
            for n in names
        )
    )
    for name, (code, out, err) in zip(names, runs, strict=True):
        assert code == 0 and f"exported {name}@main (live): 40 rows × 4 columns" in out, err
        got = pl.read_parquet(tmp_path / f"{name}.parquet")
        assert got["_rid"].to_list() == list(range(40))
        assert_frame_equal(got.drop("_rid"), df)
    assert await datasets(data, backend.url) == sorted(names)


@persistent_only
async def test_versions_export_log_diff_branch_tag(tmp_path: Path, backend: Backend) -> None:
    data = tmp_path / "data"
    src = write_input(frame(), tmp_path / "t.csv")
    code, out, err = await cli("import", str(src), "--dataset", "t", data=data, catalog=backend.url)
    assert code == 0, err
    first = IMPORTED.search(out).group(4)  # type: ignore[union-attr]
    async with durable_server(backend) as srv, connect(srv.url, "t") as room:
        await room.set_cells([0, 1], "price", [10.0, None])
        await room.insert_rows([{"name": "new", "price": 1.0, "qty": 2, "ok": True}])
        c1 = await room.commit("edits")
        at_c1 = room.frame.sort("_rid")
        await room.delete_rows([3])
        await room.set_cells([4], "name", ["live only"])
        await room.sync()
        live = room.frame.sort("_rid")

        run = functools.partial(cli, data=data, catalog=backend.url)
        code, out, err = await run("tag", "t", "v1", "--at", c1)
        assert code == 0 and "v1" in out, err
        (code, out, err), (code2, out2, err2) = await asyncio.gather(
            run("tag", "t", "v1", "--at", first), run("branch", "t", "old", "--from", first)
        )
        assert code == 2 and "never move" in err and err.count("\n") == 1, err
        assert code2 == 0 and first in out2, err2

        (
            log,
            log_old,
            at_tag,
            at_prefix,
            at_live,
            at_old,
            diff_json,
            diff_text,
            diff_bad,
            refs_text,
            refs_json,
        ) = await asyncio.gather(
            run("log", "t"),
            run("log", "t", "--json", "--ref", "old"),
            run("export", "t", "--at", "v1", "-o", str(tmp_path / "v1.arrow")),
            run("export", "t", "--at", c1[:10], "-o", str(tmp_path / "c1.arrow")),
            run("export", "t", "-o", str(tmp_path / "live.parquet")),  # live = last commit + WAL replay
            run("export", "t", "--branch", "old", "-o", str(tmp_path / "old.csv")),
            run("diff", "t", "v1", "live", "--json"),
            run("diff", "t", first, "v1", "--limit", "1"),
            run("diff", "t", "v1", "nope"),
            run("refs", "t"),
            run("refs", "t", "--json"),
        )
    for code, out, err in (log, log_old, at_tag, at_prefix, at_live, at_old, diff_json, diff_text, refs_text):
        assert code == 0, err
    refs = json.loads(refs_json[1])  # the shape of GET /api/datasets/t/refs
    assert refs["tags"] == [{"name": "v1", "commit": c1}]
    assert [b["name"] for b in refs["branches"]] == ["main", "old"]
    heads = {b["name"]: b["commit"] for b in refs["branches"]}
    assert heads["main"] == c1 and heads["old"].startswith(first) and len(heads["old"]) == len(c1)
    assert refs_text[1].splitlines() == [
        f"branch  main  {c1}",
        f"branch  old   {heads['old']}",
        f"tag     v1    {c1}",
    ]
    lines = log[1].strip().splitlines()
    assert [ln[:12] for ln in lines] == [c1[:12], first] and "edits" in lines[0]
    assert [c["commit"][:12] for c in json.loads(log_old[1])] == [first]
    for name in ("v1.arrow", "c1.arrow"):
        assert_frame_equal(read_frame(tmp_path / name, "arrow").sort("_rid"), at_c1)
    assert_frame_equal(pl.read_parquet(tmp_path / "live.parquet").sort("_rid"), live)
    assert pl.read_csv(tmp_path / "old.csv").height == 30

    got, want = json.loads(diff_json[1]), brute_diff(at_c1, live, {})
    assert got["added"] == want["added"] and got["deleted"] == want["deleted"] == [3]
    assert {(c["rid"], c["column"], c["old"], c["new"]) for c in got["changed"]} == want["changed"]
    out = diff_text[1]
    assert f"diff t {first} → v1: 1 rows added, 0 deleted, 2 cells changed in 2 rows" in out
    assert "added rids: 30" in out and "10.0" in out and "1 more changed cells" in out
    assert diff_bad[0] == 2 and "no branch, tag or commit 'nope'" in diff_bad[2]


async def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    data, good = tmp_path / "data", write_input(frame(5), tmp_path / "good.csv")
    code, out, err = await cli("import", str(good), "--dataset", "../x", data=data)
    assert code == 2 and "invalid dataset name '../x'" in err and err.count("\n") == 1, err
    assert not data.exists()  # checked before anything was opened
    assert (await cli("import", str(good), "--dataset", "ok", data=data))[0] == 0
    clash = write_input(frame(5).with_columns(pl.lit(1).alias("_rid")), tmp_path / "clash.parquet")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 not really")
    cases = [
        (("import", str(good), "--dataset", "../x"), "invalid dataset name"),
        (("import", str(good), "--dataset", "ok"), "already exists"),
        (("import", str(clash), "--dataset", "clash", "--rids", "keep"), "values repeat (1)"),
        (("import", str(garbage), "--dataset", "garbage"), "cannot read"),
        (("import", str(tmp_path / "missing.csv"), "--dataset", "m"), "no such file"),
        (("import", str(good), "--dataset", "big", "--max-bytes", "10"), "limit"),
        (("export", "nope", "-o", str(tmp_path / "x.csv")), "no dataset 'nope'"),
        (("refs", "nope"), "no dataset 'nope'"),
        (("export", "ok", "-o", str(tmp_path / "x.txt")), "cannot tell the format"),
        (("export", "ok", "--at", "zzz", "-o", str(tmp_path / "x.csv")), "no branch, tag or commit"),
        (("log", "ok", "--ref", "nope"), "no branch, tag or commit"),
        (("log", "ok", "--limit", "99999999999999999999"), "--limit must be from 1 to 10000"),
        (("export", "ok", "-o", str(tmp_path / "nodir" / "x.csv")), "does not exist; create it first"),
        (("tag", "ok", "v1\n", "--at", "main"), "invalid tag name"),
        (("branch", "ok", "a/b"), "invalid branch name"),
        (("tag", "ok", "v1", "--at", "nope"), "no branch, tag or commit"),
    ]
    runs = await asyncio.gather(*(cli(*args, data=data) for args, _ in cases))
    for (args, message), (code, out, err) in zip(cases, runs, strict=True):
        assert code == 2, (args, out, err)
        assert message in err and err.startswith("coframe: ") and err.count("\n") == 1, (args, err)
    assert await datasets(data, None) == ["ok"]
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.txt").exists()
    assert not leftovers(tmp_path)


def test_autocommit_share_must_be_a_share_of_the_time(capsys: Any) -> None:
    from server.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--autocommit-share", "0.25"]).autocommit_share == 0.25
    for bad in ("0", "1.5", "-0.1", "nan", "often"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["serve", "--autocommit-share", bad])
        assert exc.value.code == 2
        assert "expected a share of the time in (0, 1]" in capsys.readouterr().err
