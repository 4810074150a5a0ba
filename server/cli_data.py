"""The CLI's data commands: ``import``, ``export``, ``log``, ``diff``, ``refs``, ``branch``, ``tag``
(and the upkeep commands of :mod:`server.cli_upkeep`: ``delete``, ``fsck``, ``gc``).

They open storage directly (``Storage.open``), like the server does, so they
work with or without a server running on the same data directory. The live
state of a branch is its last commit plus a replay of its WAL
(:func:`server.rooms.recovery.recover`), which holds every acked op.

A command raises a :class:`~protocol.CoframeError` for a user error;
:func:`server.cli.fail` turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from protocol import ErrorCode

from .api import MAX_LOG_LIMIT, check_ref_name, commit_json, refs_json, resolve, side_label
from .cli_auth import AUTH_COMMANDS, add_auth_commands
from .cli_upkeep import UPKEEP_COMMANDS, add_upkeep_commands
from .errors import CliError
from .io import DEFAULT_MAX_BYTES, FORMATS, ReadError, check_format, format_from_name, load_file, write_file
from .ops import RID_MODES
from .ops.state import State
from .storage.diff import Diff, diff_states
from .storage.service import Storage
from .storage.types import AlreadyExists, DatasetExists, NotFound

__all__ = ["add_data_commands", "run_data_command", "CliError"]

Command = Callable[[argparse.Namespace, Storage], Coroutine[Any, Any, int | None]]


def _fmt(value: str) -> str:
    try:
        return check_format(value)
    except ReadError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def add_data_commands(sub: Any) -> None:
    """Add the data subcommands to the ``coframe`` argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", default=os.environ.get("COFRAME_DATA", "data"),
        help="where commits (chunks) and the SQLite catalog live (default ./data, env COFRAME_DATA)",
    )  # fmt: skip
    common.add_argument(
        "--catalog", default=os.environ.get("COFRAME_CATALOG"),
        help="postgresql://... when the catalog is in PostgreSQL (env COFRAME_CATALOG)",
    )  # fmt: skip

    p = sub.add_parser("import", parents=[common], help="import a file as a new dataset")
    p.add_argument("file", help="a .csv, .parquet, .json, .ndjson/.jsonl or .arrow/.ipc file")
    p.add_argument("--dataset", required=True, help="the new dataset's name")
    p.add_argument("--format", type=_fmt, help=f"one of {', '.join(FORMATS)} (default: from the extension)")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="refuse bigger files")
    p.add_argument("--message", default=None, help="the commit message")
    p.add_argument("--author", default=os.environ.get("USER", "cli"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--rids", choices=RID_MODES, default="new",
        help="a _rid column (as in a file coframe exported): 'new' numbers the rows afresh (default),"
        " 'keep' keeps its values as the row ids",
    )  # fmt: skip

    p = sub.add_parser("export", parents=[common], help="write a dataset version to a file")
    p.add_argument("dataset")
    p.add_argument("--at", help="a commit, tag or branch head (default: the branch's live state)")
    p.add_argument("--branch", default="main", help="the branch whose live state to export (default main)")
    p.add_argument("-o", "--output", required=True, help="FILE.parquet|.csv|.arrow|.json|.ndjson")
    p.add_argument("--format", type=_fmt, help="override the format the extension implies")

    p = sub.add_parser("log", parents=[common], help="list commits, newest first")
    p.add_argument("dataset")
    p.add_argument("--ref", default="main")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("diff", parents=[common], help="compare two versions (or a version and live)")
    p.add_argument("dataset")
    p.add_argument("a", help="a commit, tag, branch, 'live' or 'live:BRANCH'")
    p.add_argument("b", help="a commit, tag, branch, 'live' or 'live:BRANCH'")
    p.add_argument("--limit", type=int, default=50, help="changed cells to show (default 50)")
    p.add_argument("--json", action="store_true", help="the whole diff as JSON")

    p = sub.add_parser("refs", parents=[common], help="list the branches and tags with their commits")
    p.add_argument("dataset")
    p.add_argument("--json", action="store_true", help="machine-readable output (as GET .../refs)")

    p = sub.add_parser("branch", parents=[common], help="create a branch")
    p.add_argument("dataset")
    p.add_argument("name")
    p.add_argument("--from", dest="source", default="main", help="a commit, tag or branch (default main)")

    p = sub.add_parser("tag", parents=[common], help="tag a version (tags never move)")
    p.add_argument("dataset")
    p.add_argument("name")
    p.add_argument("--at", default="main", help="a commit, tag or branch (default main)")

    add_upkeep_commands(sub, common)
    add_auth_commands(sub, common)


def run_data_command(args: argparse.Namespace) -> int:
    """Run a parsed data command; its exit code (0 on success, ``fsck``: 1 when broken).

    Raises:
        CoframeError: a user error (:func:`server.cli.fail` reports it).
    """
    _precheck(args)
    return asyncio.run(_with_storage(args, _COMMANDS[args.command]))


def _precheck(args: argparse.Namespace) -> None:
    """Cheap checks before anything is opened or created."""
    if getattr(args, "dataset", None) is not None:
        check_ref_name(args.dataset)
    data_dir = Path(args.data_dir)
    if args.command == "import":
        path = Path(args.file)
        if not path.is_file():
            raise CliError(f"no such file: {path}", code=ErrorCode.UNREADABLE)
        if path.stat().st_size > args.max_bytes:
            raise CliError(
                f"{path} is {path.stat().st_size} bytes, over the {args.max_bytes}-byte limit;"
                " raise --max-bytes or split the file",
                code=ErrorCode.TOO_LARGE,
            )
    if args.command not in ("import", *AUTH_COMMANDS) and not args.catalog and not data_dir.is_dir():
        raise CliError(f"no data directory '{data_dir}'; pass --data-dir (or import a dataset first)")


async def _with_storage(args: argparse.Namespace, command: Command) -> int:
    data_dir = Path(args.data_dir)
    storage = await Storage.open(data_dir, args.catalog)
    try:
        dataset = getattr(args, "dataset", None)
        if args.command != "import" and dataset is not None:
            known = await storage.catalog.list_datasets()
            if dataset not in known:
                where = "the catalog" if args.catalog else str(data_dir)
                shown = ", ".join(sorted(known)) or "(none)"
                raise NotFound(f"no dataset '{dataset}' in {where}; known: {shown}", missing="dataset")
        return await command(args, storage) or 0
    finally:
        await storage.close()


def _out(text: str = "") -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- commands


async def _import(args: argparse.Namespace, storage: Storage) -> None:
    name = args.dataset
    if name in await storage.catalog.list_datasets():
        raise DatasetExists(f"dataset '{name}' already exists; pick another name")
    path = Path(args.file)
    console = Console(stderr=True)
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.completed:,.0f}{task.fields[unit]}"), TimeElapsedColumn(),
        console=console, disable=args.no_progress or not console.is_terminal, transient=True,
    )  # fmt: skip
    with progress:
        reading = progress.add_task(f"reading {path.name}", total=None, unit=" rows")

        def on_progress(done: int, total: int | None) -> None:
            progress.update(reading, completed=done, total=total)

        frame = await asyncio.to_thread(
            load_file, path, args.format, max_bytes=args.max_bytes, on_progress=on_progress
        )
        progress.update(reading, completed=frame.height, total=frame.height)
        committing = progress.add_task("committing", total=1, unit=" commit")
        message = args.message or f"import of {path.name}"
        manifest = await storage.create_dataset(
            name, frame, author=args.author, message=message, rids=args.rids
        )
        progress.update(committing, completed=1)
    rows, cols = manifest.rows, len(manifest.schema)
    _out(f"imported {name}: {rows} rows × {cols} columns (commit {manifest.id[:12]})")


async def _state(storage: Storage, dataset: str, side: str) -> State:
    live, ref = side_label(side)
    if live:
        from .rooms.recovery import recover

        _, core, _ = await recover(storage, dataset, ref)
        return core.state
    return await storage.state_of(await resolve(storage, dataset, ref))


async def _export(args: argparse.Namespace, storage: Storage) -> None:
    if not args.format and format_from_name(args.output) is None:
        raise CliError(
            f"cannot tell the format of {args.output}; use {', '.join(FORMATS)} as the extension",
            code=ErrorCode.BAD_FORMAT,
        )
    if args.at:
        state, what = await _state(storage, args.dataset, args.at), args.at
    else:
        branch = check_ref_name(args.branch, "branch")
        state, what = await _state(storage, args.dataset, f"live:{branch}"), f"{branch} (live)"
    parent = Path(args.output).parent
    if not parent.is_dir():
        raise CliError(f"cannot write {args.output}: the directory {parent} does not exist; create it first")
    fmt = await asyncio.to_thread(write_file, state.frame, args.output, args.format)
    rows, cols = state.frame.height, len(state.catalog.columns)
    _out(f"exported {args.dataset}@{what}: {rows} rows × {cols} columns (+ _rid) to {args.output} ({fmt})")


async def _log(args: argparse.Namespace, storage: Storage) -> None:
    if not 1 <= args.limit <= MAX_LOG_LIMIT:
        raise CliError(f"--limit must be from 1 to {MAX_LOG_LIMIT}")
    await resolve(storage, args.dataset, args.ref)
    commits = await storage.log(args.dataset, args.ref, args.limit)
    if args.json:
        _out(json.dumps([commit_json(m) for m in commits], indent=2))
        return
    for m in commits:
        when = datetime.fromtimestamp(m.time).strftime("%Y-%m-%d %H:%M:%S")
        _out(f"{m.id[:12]}  {when}  seq {m.seq:<6} rows {m.rows:<9} {m.author}: {m.message}")


async def _diff(args: argparse.Namespace, storage: Storage) -> None:
    a = await _state(storage, args.dataset, args.a)
    b = await _state(storage, args.dataset, args.b)
    d = await asyncio.to_thread(diff_states, a, b)
    if args.json:
        _out(json.dumps(d.to_json()))
        return
    _print_diff(d, f"{args.dataset} {args.a} → {args.b}", max(0, args.limit))


def _rids(values: list[int], limit: int = 20) -> str:
    more = f", … ({len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(str(v) for v in values[:limit]) + more


def _print_diff(d: Diff, title: str, limit: int) -> None:
    s = d.summary()
    _out(
        f"diff {title}: {s['added']} rows added, {s['deleted']} deleted, "
        f"{s['changed_cells']} cells changed in {s['changed_rows']} rows, {s['schema']} schema changes"
    )
    for c in d.schema:
        detail = {
            "renamed": f"{c.get('old_name')} → {c['name']}",
            "recast": f"{c['name']}: {c.get('old_dtype')} → {c.get('dtype')}",
        }.get(c["change"], f"{c['name']} ({c.get('dtype')})")
        _out(f"  schema {c['change']}: {detail}")
    if d.added.size:
        _out(f"  added rids: {_rids(d.added.tolist())}")
    if d.deleted.size:
        _out(f"  deleted rids: {_rids(d.deleted.tolist())}")
    if not d.changed.num_rows or limit == 0:
        return
    table = Table("rid", "column", "old", "new", title=None, show_lines=False)
    for row in d.changed.slice(0, limit).to_pylist():
        old = "null" if row["old"] is None else str(row["old"])
        new = "null" if row["new"] is None else str(row["new"])
        table.add_row(str(row["rid"]), row["column"], old, new)
    Console(width=max(100, Console().width), soft_wrap=False).print(table)
    if d.changed.num_rows > limit:
        _out(f"  … and {d.changed.num_rows - limit} more changed cells (use --limit or --json)")


async def _refs(args: argparse.Namespace, storage: Storage) -> None:
    refs = await refs_json(storage, args.dataset)
    if args.json:
        _out(json.dumps(refs, indent=2))
        return
    width = max((len(r["name"]) for rs in refs.values() for r in rs), default=0)
    for kind, key in (("branch", "branches"), ("tag", "tags")):
        for r in refs[key]:
            _out(f"{kind:<6}  {r['name']:<{width}}  {r['commit']}")


async def _branch(args: argparse.Namespace, storage: Storage) -> None:
    name = check_ref_name(args.name, "branch")
    m = await resolve(storage, args.dataset, args.source)
    await storage.create_branch(args.dataset, name, m.id)
    _out(f"created branch {name} of {args.dataset} at {m.id[:12]} (from {args.source})")


async def _tag(args: argparse.Namespace, storage: Storage) -> None:
    name = check_ref_name(args.name, "tag")
    m = await resolve(storage, args.dataset, args.at)
    try:
        await storage.create_tag(args.dataset, name, m.id)
    except AlreadyExists:
        existing = await storage.catalog.get_ref(args.dataset, name, "tag")
        raise AlreadyExists(
            f"tag '{name}' already exists at {existing.commit[:12]} and tags never move; create a new tag"
        ) from None
    _out(f"tagged {args.dataset}@{m.id[:12]} as {name}")


_COMMANDS: dict[str, Command] = {
    "import": _import,
    "export": _export,
    "log": _log,
    "diff": _diff,
    "refs": _refs,
    "branch": _branch,
    "tag": _tag,
    **UPKEEP_COMMANDS,
    **AUTH_COMMANDS,
}
