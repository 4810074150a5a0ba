"""The rules every catalog backend shares (PROTOCOL.md section 13, "Durability and versions").

The backends (:mod:`.catalog_sqlite`, :mod:`.catalog_pg`, :mod:`.catalog_memory`)
import these helpers, and :mod:`.catalog` (the opener) imports the backends,
so the imports run one way only. Keeping the ref kinds, the commit-id prefix
rule, the stored manifest form and every error message here is what makes the
backends behave and read the same, which the contract suite
(tests/test_catalog_contract.py) checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from .audit_types import AUDIT_KINDS
from .auth_types import ROLES
from .types import Manifest, WalEntry

__all__ = [
    "BRANCH",
    "TAG",
    "MAIN",
    "KINDS",
    "MIN_PREFIX",
    "check_schema",
    "check_kind",
    "check_role",
    "check_audit_kind",
    "audit_limit",
    "audit_where",
    "AUDIT_LIMIT_MAX",
    "encode_hide",
    "decode_hide",
    "encode_manifest",
    "decode_manifest",
    "prefix_bounds",
    "duplicate_seqs",
    "Messages",
    "msg",
]

BRANCH = "branch"
TAG = "tag"
KINDS = (BRANCH, TAG)
MAIN = "main"  # the branch every dataset is created with
MIN_PREFIX = 6  # shortest commit id prefix get_commit/log accept

_HEX = re.compile(r"[0-9a-f]+")
_SCHEMA = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_schema(schema: str) -> None:
    """Raises ValueError unless ``schema`` is a plain identifier (safe to quote into SQL)."""
    if not _SCHEMA.fullmatch(schema):
        raise ValueError(
            f"PostgreSQL schema {schema!r} is not a plain identifier; "
            "use letters, digits and '_' (at most 63), starting with a letter or '_'"
        )


def check_kind(kind: str) -> None:
    """Raises ValueError unless ``kind`` is ``"branch"`` or ``"tag"``."""
    if kind not in KINDS:
        raise ValueError(f"ref kind {kind!r} is not 'branch' or 'tag'")


def check_role(role: str) -> None:
    """Raises ValueError unless ``role`` is one of ``auth_types.ROLES``."""
    if role not in ROLES:
        raise ValueError(f"grant role {role!r} is not one of {', '.join(repr(r) for r in ROLES)}")


AUDIT_LIMIT_MAX = 10_000  # most rows one list_audit returns


def check_audit_kind(kind: str) -> None:
    """Raises ValueError unless ``kind`` is one of ``audit_types.AUDIT_KINDS``."""
    if kind not in AUDIT_KINDS:
        raise ValueError(f"audit kind {kind!r} is not one of {', '.join(repr(k) for k in AUDIT_KINDS)}")


def audit_where(
    since: float | None, user: str | None, kind: str | None, placeholder: Callable[[int], str]
) -> tuple[str, list[Any]]:
    """``list_audit``'s filter: the WHERE clause (``placeholder(i)`` is the i-th parameter's
    marker, 1-based) and its parameters, with the kind checked."""
    if kind is not None:
        check_audit_kind(kind)
    given = [
        (column, value)
        for column, value in (
            ("time >=", None if since is None else float(since)),
            ("user_name =", user),
            ("kind =", kind),
        )
        if value is not None
    ]
    clause = " AND ".join(f"{c} {placeholder(i + 1)}" for i, (c, _) in enumerate(given))
    return (f" WHERE {clause}" if given else ""), [v for _, v in given]


def audit_limit(limit: int) -> int:
    """``list_audit``'s ``limit`` clamped to 1..AUDIT_LIMIT_MAX."""
    return max(1, min(int(limit), AUDIT_LIMIT_MAX))


def encode_hide(hide: Sequence[int]) -> str:
    """A grant's hidden column ids in their stored form: a compact JSON list of ints."""
    return json.dumps([int(c) for c in hide], separators=(",", ":"))


def decode_hide(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in json.loads(text))


def encode_manifest(manifest: Manifest) -> str:
    """The stored form: compact JSON of ``Manifest.to_json()`` (key order kept)."""
    return json.dumps(manifest.to_json(), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_manifest(text: str) -> Manifest:
    return Manifest.from_json(json.loads(text))


def prefix_bounds(commit_id: str) -> tuple[str, str] | None:
    """``(lo, hi)`` with ``lo <= id < hi`` for ids starting with the prefix, or None.

    None when ``commit_id`` is shorter than MIN_PREFIX or not hex, so it can only
    match exactly. Hex digits sort below ``'g'`` in byte order (SQLite BINARY,
    PostgreSQL ``COLLATE "C"``), so ``hi`` is the prefix followed by ``'g'``.
    """
    prefix = commit_id.lower()
    if len(prefix) < MIN_PREFIX or not _HEX.fullmatch(prefix):
        return None
    return prefix, prefix + "g"


def duplicate_seqs(entries: Sequence[WalEntry]) -> list[int]:
    """Seqs that occur more than once in one batch, sorted."""
    seen: set[int] = set()
    dups: set[int] = set()
    for e in entries:
        (dups if e.seq in seen else seen).add(e.seq)
    return sorted(dups)


class Messages:
    """Error messages that say what was wrong and what to do.

    Every backend raises with these texts, so users see the same words whichever
    catalog they run on.
    """

    @staticmethod
    def dataset_missing(dataset: str) -> str:
        return f"dataset '{dataset}' does not exist; create it first (or check the name)"

    @staticmethod
    def dataset_exists(dataset: str) -> str:
        return f"dataset '{dataset}' already exists; pick another name or drop it first"

    @staticmethod
    def commit_missing(dataset: str, commit_id: str) -> str:
        return (
            f"commit '{commit_id}' not found in dataset '{dataset}'; "
            f"give a full commit id or a unique prefix of at least {MIN_PREFIX} hex characters"
        )

    @staticmethod
    def ref_target_missing(dataset: str, commit_id: str) -> str:
        return (
            f"commit '{commit_id}' not found in dataset '{dataset}'; a ref must point at the full id "
            "of a stored commit: put_commit it first"
        )

    @staticmethod
    def commit_ambiguous(dataset: str, prefix: str, matches: Sequence[str]) -> str:
        shown = ", ".join(m[: len(prefix) + 4] + "…" for m in matches)
        return (
            f"commit prefix '{prefix}' is ambiguous in dataset '{dataset}' (matches {shown}); "
            "give more characters of the id"
        )

    @staticmethod
    def ref_missing(dataset: str, name: str, kind: str) -> str:
        plural = "branches" if kind == "branch" else f"{kind}s"
        return f"{kind} '{name}' not found in dataset '{dataset}'; list the {plural} to see what exists"

    @staticmethod
    def ref_exists(dataset: str, name: str, kind: str) -> str:
        if kind == TAG:
            return f"tag '{name}' already exists in dataset '{dataset}' and tags never move; create a new tag"
        return (
            f"branch '{name}' already exists in dataset '{dataset}'; pick another name"
            f" (list them with GET /api/datasets/{dataset}/refs or coframe refs {dataset})"
        )

    @staticmethod
    def branch_missing(dataset: str, name: str, is_tag: bool) -> str:
        if is_tag:
            return (
                f"'{name}' in dataset '{dataset}' is a tag, and tags never move; "
                "create a branch from it and move that instead"
            )
        return f"branch '{name}' not found in dataset '{dataset}'; create it with create_ref first"

    @staticmethod
    def ref_moved(dataset: str, name: str, current: str, expected: str) -> str:
        return (
            f"branch '{name}' in dataset '{dataset}' is at {current[:12]}, not at the expected "
            f"{expected[:12]}; someone else moved it: reload the branch and retry"
        )

    @staticmethod
    def wal_seq_taken(dataset: str, branch: str, seqs: Sequence[int], within_batch: bool) -> str:
        where = "more than once in the batch" if within_batch else "already in the WAL"
        shown = ", ".join(str(s) for s in list(seqs)[:5]) + (" …" if len(seqs) > 5 else "")
        return (
            f"WAL append to '{dataset}'@{branch} rejected, nothing was written: seq {shown} {where}; "
            "every entry needs a new seq after the last durable one (read_wal to see it)"
        )

    @staticmethod
    def user_missing(name: str) -> str:
        return f"user '{name}' does not exist; add the user first (or check the name)"

    @staticmethod
    def user_exists(name: str) -> str:
        return f"user '{name}' already exists; pick another name or change the existing user"

    @staticmethod
    def token_missing(token_id: str) -> str:
        return f"token '{token_id}' not found; list the user's tokens to see which exist"

    @staticmethod
    def token_exists(token_id: str) -> str:
        return f"token id '{token_id}' is already taken; issue the token with a new id"

    @staticmethod
    def grant_missing(dataset: str, user: str) -> str:
        return (
            f"user '{user}' has no grant on dataset '{dataset}'; "
            "list the grants to see what exists (a '*' grant is deleted as dataset '*')"
        )

    @staticmethod
    def signing_key_exists(kid: str) -> str:
        return f"signing key '{kid}' already exists; give the new key another kid"


msg = Messages()
