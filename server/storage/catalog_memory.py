"""The in-memory catalog, used by ``coframe serve --memory``: history for the life of the process.

Same contract as the SQLite and PostgreSQL catalogs (tests/test_catalog_contract.py
runs on all three), so a memory-mode server runs the same storage code:
commits, branches, tags, time travel, revert, log and diff all work, and all
of it is gone when the process exits.

Every method finishes without awaiting anything, so on one event loop each
call is atomic, as a transaction is in the other backends: concurrent
compare-and-sets have one winner and a WAL batch lands whole or not at all.

Manifests are kept in their stored form (the compact JSON of
:func:`.catalog_common.encode_manifest`) and decoded on read, as the other
backends do, so a caller can never mutate what the catalog holds.

The WAL keeps its entries (a dict per branch) rather than dropping them.
Nothing survives a restart, but within the process a branch is still loaded
"head commit + WAL replay": when a room is reloaded (after it broke, or
``live_state`` of a branch with no open room) and when a client resends a
batch after a reconnect, so it gets its first ack again. An append costs a
few dict inserts; commits trim the WAL as on disk, so it stays bounded.

The identity methods (users, tokens, grants, signing keys) are in
:mod:`.catalog_memory_auth`, the audit trail in :mod:`.catalog_memory_audit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog_common import (
    BRANCH,
    MAIN,
    TAG,
    check_kind,
    decode_manifest,
    duplicate_seqs,
    encode_manifest,
    msg,
    prefix_bounds,
)
from .catalog_memory_audit import MemoryAudit
from .catalog_memory_auth import MemoryAuth
from .types import AlreadyExists, DatasetExists, Manifest, NotFound, Ref, RefMoved, WalEntry

__all__ = ["MemoryCatalog"]


@dataclass(slots=True)
class _Dataset:
    commits: dict[str, str] = field(default_factory=dict)  # id → stored manifest text
    parents: dict[str, str | None] = field(default_factory=dict)  # id → first parent
    refs: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) → commit id
    wal: dict[str, dict[int, WalEntry]] = field(default_factory=dict)  # branch → seq → entry


class MemoryCatalog(MemoryAuth, MemoryAudit):
    """CatalogStore in this process's memory (nothing is written anywhere)."""

    def __init__(self) -> None:
        super().__init__()
        self._datasets: dict[str, _Dataset] = {}

    def __repr__(self) -> str:
        return f"MemoryCatalog({len(self._datasets)} datasets)"

    async def open(self) -> None:
        """Nothing to connect to or migrate."""

    async def close(self) -> None:
        """Nothing to release; the data stays until the object is dropped."""

    def _dataset(self, name: str) -> _Dataset:
        d = self._datasets.get(name)
        if d is None:
            raise NotFound(msg.dataset_missing(name))
        return d

    def _resolve(self, dataset: str, commit_id: str) -> tuple[str, str]:
        """(id, manifest text) for a full id or a unique prefix. Raises NotFound."""
        d = self._datasets.get(dataset)
        if d is not None and commit_id in d.commits:
            return commit_id, d.commits[commit_id]
        bounds = prefix_bounds(commit_id)
        matches: list[str] = []
        if bounds is not None and d is not None:
            lo, hi = bounds
            matches = sorted(c for c in d.commits if lo <= c < hi)[:3]
        if len(matches) == 1 and d is not None:
            return matches[0], d.commits[matches[0]]
        self._dataset(dataset)
        if matches:
            raise NotFound(msg.commit_ambiguous(dataset, commit_id, matches))
        raise NotFound(msg.commit_missing(dataset, commit_id))

    # -- datasets ------------------------------------------------------------

    async def create_dataset(self, first: Manifest) -> None:
        name = first.dataset
        if name in self._datasets:
            raise DatasetExists(msg.dataset_exists(name))
        d = _Dataset()
        d.commits[first.id] = encode_manifest(first)
        d.parents[first.id] = first.parents[0] if first.parents else None
        d.refs[(BRANCH, MAIN)] = first.id
        self._datasets[name] = d  # one assignment: the dataset appears whole

    async def list_datasets(self) -> list[str]:
        return sorted(self._datasets)

    async def drop_dataset(self, name: str) -> None:
        self._dataset(name)
        del self._datasets[name]

    # -- commits -------------------------------------------------------------

    async def put_commit(self, manifest: Manifest) -> None:
        d = self._dataset(manifest.dataset)
        if manifest.id not in d.commits:
            d.commits[manifest.id] = encode_manifest(manifest)
            d.parents[manifest.id] = manifest.parents[0] if manifest.parents else None

    async def get_commit(self, dataset: str, commit_id: str) -> Manifest:
        return decode_manifest(self._resolve(dataset, commit_id)[1])

    async def log(self, dataset: str, head: str, limit: int = 100) -> list[Manifest]:
        commit: str | None = self._resolve(dataset, head)[0]
        d = self._datasets[dataset]
        out: list[Manifest] = []
        while commit is not None and commit in d.commits and len(out) < limit:
            out.append(decode_manifest(d.commits[commit]))
            commit = d.parents[commit]
        return out

    async def list_commits(self, dataset: str) -> list[Manifest]:
        d = self._datasets.get(dataset)
        found = [] if d is None else [decode_manifest(t) for t in d.commits.values()]
        return sorted(found, key=lambda m: (m.seq, m.id))

    async def chunk_hashes(self) -> set[str]:
        texts = [t for d in self._datasets.values() for t in d.commits.values()]
        return {c.hash for t in texts for c in decode_manifest(t).chunks}

    # -- refs ----------------------------------------------------------------

    async def create_ref(self, ref: Ref) -> None:
        check_kind(ref.kind)
        d = self._dataset(ref.dataset)
        if ref.commit not in d.commits:
            raise NotFound(msg.ref_target_missing(ref.dataset, ref.commit))
        if (ref.kind, ref.name) in d.refs:
            raise AlreadyExists(msg.ref_exists(ref.dataset, ref.name, ref.kind))
        d.refs[(ref.kind, ref.name)] = ref.commit

    async def get_ref(self, dataset: str, name: str, kind: str) -> Ref:
        check_kind(kind)
        d = self._datasets.get(dataset)
        commit = None if d is None else d.refs.get((kind, name))
        if commit is None:
            raise NotFound(msg.ref_missing(dataset, name, kind))
        return Ref(dataset, name, commit, kind)

    async def list_refs(self, dataset: str, kind: str) -> list[Ref]:
        check_kind(kind)
        d = self._datasets.get(dataset)
        if d is None:
            return []
        return [Ref(dataset, n, c, kind) for (k, n), c in sorted(d.refs.items()) if k == kind]

    async def move_branch(self, dataset: str, name: str, commit: str, expected: str | None) -> None:
        d = self._datasets.get(dataset)
        current = None if d is None else d.refs.get((BRANCH, name))
        if d is None or current is None:
            is_tag = d is not None and (TAG, name) in d.refs
            raise NotFound(msg.branch_missing(dataset, name, is_tag))
        if expected is not None and current != expected:
            raise RefMoved(msg.ref_moved(dataset, name, current, expected))
        if commit not in d.commits:
            raise NotFound(msg.ref_target_missing(dataset, commit))
        d.refs[(BRANCH, name)] = commit

    async def delete_ref(self, dataset: str, name: str, kind: str) -> None:
        """Delete a branch or tag. Deleting a branch also deletes its WAL. Raises NotFound."""
        check_kind(kind)
        d = self._datasets.get(dataset)
        if d is None or d.refs.pop((kind, name), None) is None:
            raise NotFound(msg.ref_missing(dataset, name, kind))
        if kind == BRANCH:
            d.wal.pop(name, None)

    # -- WAL -----------------------------------------------------------------

    async def append_wal(self, dataset: str, branch: str, entries: list[WalEntry]) -> None:
        """Append the batch whole or not at all. Raises NotFound, AlreadyExists."""
        if not entries:
            return
        dups = duplicate_seqs(entries)
        if dups:
            raise AlreadyExists(msg.wal_seq_taken(dataset, branch, dups, within_batch=True))
        log = self._dataset(dataset).wal.setdefault(branch, {})
        taken = sorted(e.seq for e in entries if e.seq in log)
        if taken:
            raise AlreadyExists(msg.wal_seq_taken(dataset, branch, taken, within_batch=False))
        for e in entries:
            if type(e.ops) is not bytes or type(e.reply) is not bytes:
                e = WalEntry(e.seq, e.client, e.client_seq, e.kind, bytes(e.ops), bytes(e.reply))
            log[e.seq] = e

    async def read_wal(self, dataset: str, branch: str, after_seq: int) -> list[WalEntry]:
        d = self._datasets.get(dataset)
        log = {} if d is None else d.wal.get(branch, {})
        return [log[s] for s in sorted(s for s in log if s > after_seq)]

    async def trim_wal(self, dataset: str, branch: str, upto_seq: int) -> int:
        d = self._datasets.get(dataset)
        log = None if d is None else d.wal.get(branch)
        if not log:
            return 0
        gone = [s for s in log if s <= upto_seq]
        for s in gone:
            del log[s]
        return len(gone)
