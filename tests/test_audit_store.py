"""One contract suite for the catalog's audit trail (``server.storage.audit_types.AuditStore``).

Every test taking the ``catalog`` or ``backend`` fixture (tests/conftest.py)
runs on each backend: in memory, on the embedded SQLite file and on a real
PostgreSQL server. Tests about what outlives one catalog object (reopening,
a second node, an upgrade from the previous schema version) run on the
persistent backends only (``@persistent_only``).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from server.storage import migrations
from server.storage.audit_types import AUDIT_KINDS, AuditEvent
from server.storage.auth_types import Grant, SigningKey, TokenRecord, User
from server.storage.catalog import open_catalog
from server.storage.catalog_common import AUDIT_LIMIT_MAX, audit_limit
from server.storage.types import CatalogStore, Manifest
from tests.conftest import Backend, persistent_only
from tests.pg import catalog_url

# -- helpers -------------------------------------------------------------------

T0 = 1_700_000_040.0  # the start of a minute
MINUTE = 60.0


def event(kind: str, when: float, who: str = "alice", dataset: str = "", detail: str = "") -> AuditEvent:
    return AuditEvent(when, kind, who, dataset, detail)


def stored(events: list[AuditEvent]) -> list[tuple[float, str, str, str, str, int]]:
    """What was recorded, without the ids the catalog gave it."""
    return [(e.time, e.kind, e.user, e.dataset, e.detail, e.count) for e in events]


def manifest(dataset: str) -> Manifest:
    cid = hashlib.sha256(f"audit/{dataset}".encode()).hexdigest()
    return Manifest(cid, dataset, (), "alice", "first", T0, 0, (), 0, 0, 1, ())


# -- add and list --------------------------------------------------------------


async def test_add_and_list_newest_first_ties_by_insertion(catalog: CatalogStore) -> None:
    assert await catalog.list_audit() == []
    added = [
        AuditEvent(T0 + 5, "upload", "alice", "sales", "sales.csv, 20 rows", id=999),  # id is ignored
        event("grant", T0 + 1, detail="bob viewer"),
        event("branch", T0 + 5, "bob", "sales", "fix"),  # same time as the upload: added later
        AuditEvent(T0 + 9, "sign_in", "Carol", count=3),
        event("commit", T0 + 5, "émile", "sales"),
    ]
    for e in added:
        await catalog.add_audit(e)
    got = await catalog.list_audit()
    assert stored(got) == [
        (T0 + 9, "sign_in", "Carol", "", "", 3),
        (T0 + 5, "commit", "émile", "sales", "", 1),
        (T0 + 5, "branch", "bob", "sales", "fix", 1),
        (T0 + 5, "upload", "alice", "sales", "sales.csv, 20 rows", 1),
        (T0 + 1, "grant", "alice", "", "bob viewer", 1),
    ]
    # The catalog numbers rows in the order they were added.
    by_id = sorted(got, key=lambda e: e.id)
    assert [e.kind for e in by_id] == [e.kind for e in added]
    assert len({e.id for e in got}) == len(got) and all(e.id > 0 for e in got)
    assert all(type(e.time) is float and type(e.count) is int for e in got)


async def test_every_kind_is_accepted(catalog: CatalogStore) -> None:
    for i, kind in enumerate(AUDIT_KINDS):
        await catalog.add_audit(event(kind, T0 + i))
    assert [e.kind for e in await catalog.list_audit()] == list(reversed(AUDIT_KINDS))


async def test_list_filters_by_user_kind_and_since(catalog: CatalogStore) -> None:
    for e in [
        event("sign_in", T0, "alice"),
        event("upload", T0 + 10, "bob", "sales"),
        event("sign_in", T0 + 20, "bob"),
        event("commit", T0 + 30, "alice", "sales"),
        event("sign_in", T0 + 40, "Alice"),  # another user: names are case-sensitive
    ]:
        await catalog.add_audit(e)

    async def times(**filters: object) -> list[float]:
        return [e.time - T0 for e in await catalog.list_audit(**filters)]  # type: ignore[arg-type]

    assert await times(user="alice") == [30, 0]
    assert await times(user="bob") == [20, 10]
    assert await times(user="nobody") == []
    assert await times(kind="sign_in") == [40, 20, 0]
    assert await times(kind="tag") == []
    assert await times(since=T0 + 20) == [40, 30, 20]  # inclusive
    assert await times(since=T0 + 20.5) == [40, 30]
    assert await times(since=T0 + 41) == []
    assert await times(user="bob", kind="sign_in") == [20]
    assert await times(user="alice", since=T0 + 1) == [30]
    assert await times(user="bob", kind="upload", since=T0 + 10) == [10]
    assert await times(user="bob", kind="upload", since=T0 + 11) == []


async def test_limit_keeps_the_newest_and_is_clamped(catalog: CatalogStore) -> None:
    for i in range(5):
        await catalog.add_audit(event("commit", T0 + i, detail=f"c{i}"))
    assert [e.detail for e in await catalog.list_audit(limit=2)] == ["c4", "c3"]
    assert [e.detail for e in await catalog.list_audit(limit=5)] == ["c4", "c3", "c2", "c1", "c0"]
    assert len(await catalog.list_audit(limit=10**9)) == 5
    assert [e.detail for e in await catalog.list_audit(limit=0)] == ["c4"]  # at least one
    assert [e.detail for e in await catalog.list_audit(limit=-3)] == ["c4"]
    assert [e.detail for e in await catalog.list_audit(since=T0 + 1, limit=1)] == ["c4"]
    assert [e.detail for e in await catalog.list_audit(kind="commit", limit=3)] == ["c4", "c3", "c2"]


def test_the_limit_clamp() -> None:
    assert [audit_limit(n) for n in (-1, 0, 1, 100, AUDIT_LIMIT_MAX, AUDIT_LIMIT_MAX + 1)] == [
        1,
        1,
        1,
        100,
        AUDIT_LIMIT_MAX,
        AUDIT_LIMIT_MAX,
    ]
    assert AUDIT_LIMIT_MAX == 10_000


async def test_an_unknown_kind_is_refused_and_nothing_is_written(catalog: CatalogStore) -> None:
    with pytest.raises(ValueError, match="audit kind 'login' is not one of 'sign_in', 'auth_failed'"):
        await catalog.add_audit(event("login", T0))
    with pytest.raises(ValueError, match="audit kind 'Sign_In' is not one of"):
        await catalog.count_audit("Sign_In", "bad signature", T0)
    with pytest.raises(ValueError, match="audit kind 'nope' is not one of"):
        await catalog.list_audit(kind="nope")
    assert await catalog.list_audit() == []


async def test_audit_rows_do_not_bump_the_auth_version(catalog: CatalogStore) -> None:
    before = await catalog.auth_version()
    await catalog.add_audit(event("grant", T0, detail="bob viewer"))
    await catalog.count_audit("auth_failed", "expired", T0)
    await catalog.list_audit()
    assert await catalog.auth_version() == before


# -- counted rows --------------------------------------------------------------


async def test_count_adds_up_within_kind_detail_and_minute(catalog: CatalogStore) -> None:
    for _ in range(3):
        await catalog.count_audit("auth_failed", "bad signature", T0)
    await catalog.count_audit("auth_failed", "bad signature", T0 + MINUTE)  # another minute
    await catalog.count_audit("auth_failed", "expired", T0)  # another detail
    await catalog.count_audit("auth_failed", "expired", T0)
    await catalog.count_audit("sign_in", "bad signature", T0)  # another kind
    assert stored(await catalog.list_audit()) == [
        (T0 + MINUTE, "auth_failed", "", "", "bad signature", 1),
        (T0, "sign_in", "", "", "bad signature", 1),
        (T0, "auth_failed", "", "", "expired", 2),
        (T0, "auth_failed", "", "", "bad signature", 3),
    ]
    # A counted row keeps its id (its place among ties) as it grows.
    first = (await catalog.list_audit(kind="auth_failed"))[-1]
    await catalog.count_audit("auth_failed", "bad signature", T0)
    again = (await catalog.list_audit(kind="auth_failed"))[-1]
    assert (again.id, again.count) == (first.id, 4)


async def test_added_rows_never_merge_with_counted_ones(catalog: CatalogStore) -> None:
    await catalog.count_audit("auth_failed", "bad signature", T0)
    same = AuditEvent(T0, "auth_failed", "", "", "bad signature")
    await catalog.add_audit(same)
    await catalog.add_audit(same)
    await catalog.count_audit("auth_failed", "bad signature", T0)
    assert [e.count for e in await catalog.list_audit()] == [1, 1, 2]


async def test_concurrent_counts_add_up_in_one_row(catalog: CatalogStore) -> None:
    await asyncio.gather(*(catalog.count_audit("auth_failed", "unknown kid", T0) for _ in range(16)))
    assert stored(await catalog.list_audit()) == [(T0, "auth_failed", "", "", "unknown kid", 16)]


# -- what outlives one catalog object ------------------------------------------


@persistent_only
async def test_rows_survive_reopening_and_nodes_count_together(backend: Backend) -> None:
    first = await backend.open_catalog()
    try:
        await first.add_audit(event("upload", T0, "alice", "sales", "sales.csv"))
        await first.count_audit("auth_failed", "expired", T0)
    finally:
        await first.close()
    again = await backend.open_catalog()
    second = await backend.open_catalog()  # another node on the same catalog
    try:
        assert stored(await again.list_audit()) == [
            (T0, "auth_failed", "", "", "expired", 1),
            (T0, "upload", "alice", "sales", "sales.csv", 1),
        ]
        await asyncio.gather(
            *(node.count_audit("auth_failed", "expired", T0) for node in (again, second) for _ in range(4))
        )
        await second.add_audit(event("commit", T0 + 1, "bob", "sales"))
        assert stored(await again.list_audit(kind="auth_failed")) == [
            (T0, "auth_failed", "", "", "expired", 9)
        ]
        assert [e.kind for e in await again.list_audit()] == ["commit", "auth_failed", "upload"]
    finally:
        await again.close()
        await second.close()


@persistent_only
async def test_catalog_at_schema_version_2_upgrades_and_keeps_identity(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with catalog_url(backend.kind, prefix="coframe_test_audit") as url:  # empty storage
        # A catalog made by the coframe with identity but before the audit trail...
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        monkeypatch.setattr(migrations, "LATEST", 2)
        old = await open_catalog(url, tmp_path / "old")
        try:
            assert await old.schema_version() == 2  # type: ignore[attr-defined]
            await old.create_dataset(manifest("sales"))
            await old.add_user(User("alice", "Alice", can_create=True, created=T0))
            await old.add_token(TokenRecord("t1", "alice", T0, T0 + 3600))
            await old.put_grant(Grant("sales", "alice", "admin", None, (2,)))
            await old.add_signing_key(SigningKey("k1", b"\x00key", T0))
            version = await old.auth_version()
        finally:
            await old.close()
        monkeypatch.undo()
        # ...opened by this one: migration 3 runs and everything is kept.
        store = await open_catalog(url, tmp_path / "old")
        try:
            assert await store.schema_version() == migrations.LATEST  # type: ignore[attr-defined]
            assert await store.list_datasets() == ["sales"]
            assert await store.list_users() == [User("alice", "Alice", can_create=True, created=T0)]
            assert await store.list_tokens() == [TokenRecord("t1", "alice", T0, T0 + 3600)]
            assert await store.list_grants() == [Grant("sales", "alice", "admin", None, (2,))]
            assert await store.signing_keys() == [SigningKey("k1", b"\x00key", T0)]
            assert await store.auth_version() == version
            assert await store.list_audit() == []
            await store.add_audit(event("grant", T0 + 1, detail="alice admin"))
            await store.count_audit("auth_failed", "expired", T0)
            await store.count_audit("auth_failed", "expired", T0)
            assert stored(await store.list_audit()) == [
                (T0 + 1, "grant", "alice", "", "alice admin", 1),
                (T0, "auth_failed", "", "", "expired", 2),
            ]
        finally:
            await store.close()
