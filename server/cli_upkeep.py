"""The CLI's upkeep commands: ``delete``, ``fsck`` and ``gc``.

Like the other data commands (:mod:`server.cli_data`, which registers and
runs these), they open storage directly. ``delete`` removes a dataset from
the catalog (its refs, commits and WAL); its chunks are garbage from then on
and go at the next ``gc`` (the server also collects in the background).
``fsck`` reads every chunk the checked commits reference and compares it with
its content hash; it exits with :data:`EXIT_BROKEN` when anything is broken.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .settings import Settings
from .storage.fsck import Problem, fsck
from .storage.service import Storage

__all__ = ["add_upkeep_commands", "UPKEEP_COMMANDS", "EXIT_BROKEN"]

EXIT_BROKEN = 1  # fsck found a broken chunk or dataset


def add_upkeep_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``delete``, ``fsck`` and ``gc`` to the ``coframe`` argument parser."""
    what = "delete a dataset: its refs, commits and WAL (its chunks go at the next gc)"
    p = sub.add_parser("delete", parents=[common], help=what)
    p.add_argument("dataset")

    p = sub.add_parser(
        "fsck", parents=[common], help="check every chunk against its content hash; exit 1 if any is broken"
    )
    p.add_argument("dataset", nargs="?", default=None, help="one dataset (default: all)")

    p = sub.add_parser("gc", parents=[common], help="delete the chunks no commit of any dataset references")
    p.add_argument(
        "--grace", type=float, default=Settings().chunk_gc_grace,
        help="keep unreferenced chunks younger than this many seconds (default %(default)s)",
    )  # fmt: skip


def _out(text: str) -> None:
    print(text, flush=True)


async def _delete(args: argparse.Namespace, storage: Storage) -> int:
    commits = await storage.catalog.list_commits(args.dataset)
    branches = await storage.catalog.list_refs(args.dataset, "branch")
    tags = await storage.catalog.list_refs(args.dataset, "tag")
    await storage.delete_dataset(args.dataset)
    _out(
        f"deleted dataset {args.dataset}: {len(commits)} commits, {len(branches)} branches, {len(tags)} tags"
        " and its WAL; its chunks go at the next gc (coframe gc, or the server's background GC)"
    )
    return 0


async def _fsck(args: argparse.Namespace, storage: Storage) -> int:
    names = [args.dataset] if args.dataset else await storage.catalog.list_datasets()

    def problem(p: Problem) -> None:
        print(f"broken: {p.describe()}", file=sys.stderr, flush=True)

    report = await fsck(storage.catalog, storage.chunks, names, on_problem=problem)
    _out(report.summary())
    return 0 if report.ok else EXIT_BROKEN


async def _gc(args: argparse.Namespace, storage: Storage) -> int:
    report = await storage.collect_garbage(args.grace)
    _out(report.summary())
    return EXIT_BROKEN if report.skipped else 0


UPKEEP_COMMANDS = {"delete": _delete, "fsck": _fsck, "gc": _gc}
