"""``coframe fsck``: check every chunk of every commit against its content hash.

Chunks are content-addressed: a chunk's name is the sha256 of its bytes, so a
chunk is intact exactly when its file exists and hashes to its name. This
reads every chunk that the commits of the checked datasets reference (each
file once, however many commits share it) and reports each broken one with
the dataset, the commit and the file. A dataset with no ``main`` branch is
reported too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from .chunks import ChunkStore
from .types import CatalogStore

__all__ = ["Problem", "FsckReport", "fsck"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken thing: ``kind`` is ``missing``, ``hash`` (a chunk) or ``no_main`` (a dataset)."""

    dataset: str
    kind: str
    commit: str | None = None
    chunk: str | None = None
    path: str | None = None

    def describe(self) -> str:
        if self.kind == "no_main":
            return f"{self.dataset}: no branch 'main' (the listing shows it as broken)"
        what = "missing" if self.kind == "missing" else "does not match its sha256 (corrupt)"
        return f"{self.dataset}: commit {self.commit} chunk {self.chunk} {what}: {self.path}"


@dataclass(slots=True)
class FsckReport:
    datasets: int = 0
    commits: int = 0
    chunks: int = 0  # distinct chunk files checked
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "ok" if self.ok else f"{len(self.problems)} problems"
        return (
            f"checked {self.datasets} datasets, {self.commits} commits, {self.chunks} chunks"
            f" ({self.bytes:,} bytes): {state}"
        )


async def fsck(
    catalog: CatalogStore,
    chunks: ChunkStore,
    datasets: list[str],
    *,
    on_problem: Callable[[Problem], None] | None = None,
) -> FsckReport:
    """Check ``datasets`` (names in the catalog); ``on_problem`` hears each problem as it is found."""
    report = FsckReport()
    verdicts: dict[str, str | None] = {}

    def found(p: Problem) -> None:
        report.problems.append(p)
        if on_problem is not None:
            on_problem(p)

    for name in datasets:
        report.datasets += 1
        branches = {r.name for r in await catalog.list_refs(name, "branch")}
        if "main" not in branches:
            found(Problem(name, "no_main"))
        for m in await catalog.list_commits(name):
            report.commits += 1
            for ref in m.chunks:
                if ref.hash not in verdicts:
                    verdicts[ref.hash] = await asyncio.to_thread(chunks.check, ref.hash)
                    report.chunks += 1
                    report.bytes += ref.bytes
                verdict = verdicts[ref.hash]
                if verdict is not None:
                    found(Problem(name, verdict, m.id, ref.hash, chunks.path(ref.hash)))
    return report
