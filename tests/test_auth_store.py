"""One contract suite for the catalog's identity store (``server.storage.auth_types.AuthStore``).

Every test taking the ``catalog`` or ``backend`` fixture (tests/conftest.py)
runs on each backend: in memory, on the embedded SQLite file and on a real
PostgreSQL server. Tests about what outlives one catalog object (a second
node on the same catalog, an upgrade from the previous schema version) run
on the persistent backends only (``@persistent_only``).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from server.storage import migrations
from server.storage.auth_types import ANY_DATASET, ROLES, Grant, SigningKey, TokenRecord, User
from server.storage.catalog import open_catalog
from server.storage.types import AlreadyExists, CatalogStore, Manifest, NotFound
from tests.conftest import Backend, persistent_only
from tests.pg import catalog_url

# -- helpers -------------------------------------------------------------------

T0 = 1_700_000_000.25


def user(name: str, **flags: bool) -> User:
    return User(name, display=f"{name.title()} Example", created=T0, **flags)


def token(token_id: str, who: str, issued: float, expires: float | None = None) -> TokenRecord:
    return TokenRecord(token_id, who, issued, expires)


async def users(catalog: CatalogStore, *names: str) -> None:
    for name in names:
        await catalog.add_user(user(name))


def manifest(dataset: str) -> Manifest:
    """A dataset's first commit, for the tests that need a dataset beside the identity tables."""
    cid = hashlib.sha256(f"auth/{dataset}".encode()).hexdigest()
    return Manifest(cid, dataset, (), "alice", "first", T0, 0, (), 0, 0, 1, ())


# -- users ---------------------------------------------------------------------


async def test_users_add_get_list_by_name(catalog: CatalogStore) -> None:
    assert await catalog.list_users() == []
    for name in ("bob", "émile", "Zed", "alice"):
        await catalog.add_user(user(name, can_create=name == "alice"))
    # Byte order, as SQLite BINARY and PostgreSQL COLLATE "C" sort: upper case first, accents last.
    assert [u.name for u in await catalog.list_users()] == ["Zed", "alice", "bob", "émile"]
    got = await catalog.get_user("alice")
    assert got == User("alice", "Alice Example", disabled=False, can_create=True, created=T0)
    assert type(got.disabled) is bool and type(got.can_create) is bool
    assert await catalog.get_user("émile") == user("émile")


async def test_add_user_twice_is_refused_and_changes_nothing(catalog: CatalogStore) -> None:
    await catalog.add_user(user("alice"))
    with pytest.raises(AlreadyExists, match="user 'alice' already exists"):
        await catalog.add_user(User("alice", "Another Alice", disabled=True, can_create=True, created=1.0))
    assert await catalog.list_users() == [user("alice")]


async def test_unknown_user(catalog: CatalogStore) -> None:
    with pytest.raises(NotFound, match="user 'nobody' does not exist") as e:
        await catalog.get_user("nobody")
    assert e.value.details["missing"] == "user"
    with pytest.raises(NotFound, match="user 'nobody'"):
        await catalog.set_user("nobody", disabled=True)


async def test_set_user_changes_only_the_flags_given(catalog: CatalogStore) -> None:
    await users(catalog, "alice", "bob")
    await catalog.set_user("alice", disabled=True)
    assert await catalog.get_user("alice") == user("alice", disabled=True)
    await catalog.set_user("alice", can_create=True)
    assert await catalog.get_user("alice") == user("alice", disabled=True, can_create=True)
    await catalog.set_user("alice", disabled=False, can_create=False)
    assert await catalog.get_user("alice") == user("alice")
    await catalog.set_user("alice")  # neither flag: nothing changes
    assert await catalog.get_user("alice") == user("alice")
    assert await catalog.get_user("bob") == user("bob")


# -- tokens --------------------------------------------------------------------


async def test_tokens_add_get_list(catalog: CatalogStore) -> None:
    await users(catalog, "alice", "bob")
    issued = [
        token("t-late", "alice", T0 + 30, T0 + 3600),
        token("t-bob", "bob", T0 + 20),
        token("t-early", "alice", T0 + 10, T0 + 60),
        token("t-same-b", "alice", T0 + 40),
        token("t-same-a", "bob", T0 + 40),  # same issue time: by id
    ]
    for t in issued:
        await catalog.add_token(t)
    assert await catalog.get_token("t-late") == issued[0]
    assert await catalog.get_token("t-bob") == TokenRecord("t-bob", "bob", T0 + 20, None, None)
    everyone = ["t-early", "t-bob", "t-late", "t-same-a", "t-same-b"]
    assert [t.id for t in await catalog.list_tokens()] == everyone
    assert [t.id for t in await catalog.list_tokens("alice")] == ["t-early", "t-late", "t-same-b"]
    assert await catalog.list_tokens("bob") == [issued[1], issued[4]]
    assert await catalog.list_tokens("nobody") == []


async def test_token_needs_its_user_and_a_new_id(catalog: CatalogStore) -> None:
    with pytest.raises(NotFound, match="user 'ghost' does not exist") as e:
        await catalog.add_token(token("t1", "ghost", T0))
    assert e.value.details["missing"] == "user"
    await users(catalog, "alice", "bob")
    await catalog.add_token(token("t1", "alice", T0))
    with pytest.raises(AlreadyExists, match="token id 't1' is already taken"):
        await catalog.add_token(token("t1", "bob", T0 + 1))
    assert await catalog.list_tokens() == [token("t1", "alice", T0)]


async def test_revoke_keeps_the_first_time(catalog: CatalogStore) -> None:
    await users(catalog, "alice")
    await catalog.add_token(token("t1", "alice", T0, T0 + 60))
    await catalog.add_token(token("t2", "alice", T0 + 1))
    await catalog.revoke_token("t1", T0 + 5)
    assert await catalog.get_token("t1") == TokenRecord("t1", "alice", T0, T0 + 60, T0 + 5)
    await catalog.revoke_token("t1", T0 + 9)
    assert (await catalog.get_token("t1")).revoked == T0 + 5
    assert (await catalog.get_token("t2")).revoked is None


async def test_unknown_token(catalog: CatalogStore) -> None:
    with pytest.raises(NotFound, match="token 'nope' not found") as e:
        await catalog.get_token("nope")
    assert e.value.details["missing"] == "token"
    with pytest.raises(NotFound, match="token 'nope' not found"):
        await catalog.revoke_token("nope", T0)


# -- grants --------------------------------------------------------------------


async def test_put_grant_creates_then_replaces(catalog: CatalogStore) -> None:
    await users(catalog, "alice")
    # No such dataset: a grant may name a dataset before it is uploaded.
    await catalog.put_grant(Grant("sales", "alice", "viewer", "region = 'EU'", (3, 1)))
    assert await catalog.list_grants() == [Grant("sales", "alice", "viewer", "region = 'EU'", (3, 1))]
    await catalog.put_grant(Grant("sales", "alice", "editor"))
    assert await catalog.list_grants() == [Grant("sales", "alice", "editor", None, ())]
    await catalog.put_grant(Grant("sales", "alice", "admin", "qty > 0", [2]))  # type: ignore[arg-type]
    (got,) = await catalog.list_grants()
    assert got == Grant("sales", "alice", "admin", "qty > 0", (2,))
    assert type(got.hide) is tuple


async def test_list_grants_by_dataset_then_user_filtered(catalog: CatalogStore) -> None:
    await users(catalog, "alice", "bob", "Carol")
    for dataset, who, role in [
        ("sales", "bob", "editor"),
        ("sales", "alice", "viewer"),
        (ANY_DATASET, "bob", "viewer"),
        ("hr", "alice", "admin"),
        ("sales", "Carol", "admin"),
    ]:
        await catalog.put_grant(Grant(dataset, who, role))
    keys = [(g.dataset, g.user) for g in await catalog.list_grants()]
    assert keys == [("*", "bob"), ("hr", "alice"), ("sales", "Carol"), ("sales", "alice"), ("sales", "bob")]
    assert [g.user for g in await catalog.list_grants(dataset="sales")] == ["Carol", "alice", "bob"]
    assert [g.dataset for g in await catalog.list_grants(user="bob")] == ["*", "sales"]
    assert await catalog.list_grants(dataset="sales", user="alice") == [Grant("sales", "alice", "viewer")]
    assert await catalog.list_grants(dataset=ANY_DATASET) == [Grant("*", "bob", "viewer")]
    assert await catalog.list_grants(dataset="hr", user="bob") == []
    assert await catalog.list_grants(user="nobody") == []


async def test_delete_grant(catalog: CatalogStore) -> None:
    await users(catalog, "alice", "bob")
    await catalog.put_grant(Grant("sales", "alice", "viewer"))
    await catalog.put_grant(Grant("sales", "bob", "viewer"))
    await catalog.delete_grant("sales", "alice")
    assert await catalog.list_grants() == [Grant("sales", "bob", "viewer")]
    with pytest.raises(NotFound, match="user 'alice' has no grant on dataset 'sales'") as e:
        await catalog.delete_grant("sales", "alice")
    assert e.value.details["missing"] == "grant"
    with pytest.raises(NotFound, match="no grant"):
        await catalog.delete_grant("hr", "bob")


async def test_grant_needs_its_user_and_a_role(catalog: CatalogStore) -> None:
    with pytest.raises(NotFound, match="user 'ghost' does not exist") as e:
        await catalog.put_grant(Grant("sales", "ghost", "viewer"))
    assert e.value.details["missing"] == "user"
    await users(catalog, "alice")
    version = await catalog.auth_version()
    with pytest.raises(ValueError, match="grant role 'owner' is not one of 'viewer', 'editor', 'admin'"):
        await catalog.put_grant(Grant("sales", "alice", "owner"))
    assert await catalog.list_grants() == []
    assert await catalog.auth_version() == version
    for role in ROLES:
        await catalog.put_grant(Grant("sales", "alice", role))


async def test_grants_outlive_their_dataset(catalog: CatalogStore) -> None:
    """Grants are not tied to dataset rows: dropping (and re-uploading) a dataset keeps them."""
    await users(catalog, "alice")
    await catalog.create_dataset(manifest("sales"))
    await catalog.put_grant(Grant("sales", "alice", "editor"))
    await catalog.drop_dataset("sales")
    assert await catalog.list_grants() == [Grant("sales", "alice", "editor")]


# -- signing keys --------------------------------------------------------------


async def test_signing_keys_oldest_first(catalog: CatalogStore) -> None:
    assert await catalog.signing_keys() == []
    keys = [
        SigningKey("k2", bytes(range(256)), T0 + 2),
        SigningKey("k1", b"\x00secret\xff", T0 + 1),
        SigningKey("k0", b"x" * 64, T0 + 2),  # same time as k2: by kid
    ]
    for k in keys:
        await catalog.add_signing_key(k)
    assert await catalog.signing_keys() == [keys[1], keys[2], keys[0]]
    assert all(type(k.secret) is bytes for k in await catalog.signing_keys())


async def test_signing_key_kid_is_unique(catalog: CatalogStore) -> None:
    await catalog.add_signing_key(SigningKey("k1", b"one", T0))
    with pytest.raises(AlreadyExists, match="signing key 'k1' already exists"):
        await catalog.add_signing_key(SigningKey("k1", b"two", T0 + 1))
    assert await catalog.signing_keys() == [SigningKey("k1", b"one", T0)]


# -- the version ---------------------------------------------------------------


async def test_auth_version_grows_with_every_change_and_only_then(catalog: CatalogStore) -> None:
    seen = [await catalog.auth_version()]

    async def changed() -> None:
        now = await catalog.auth_version()
        assert now > seen[-1]
        seen.append(now)

    async def unchanged() -> None:
        assert await catalog.auth_version() == seen[-1]

    await catalog.add_user(user("alice"))
    await changed()
    await catalog.set_user("alice", disabled=True)
    await changed()
    await catalog.add_token(token("t1", "alice", T0))
    await changed()
    await catalog.revoke_token("t1", T0 + 1)
    await changed()
    await catalog.put_grant(Grant("sales", "alice", "viewer"))
    await changed()
    await catalog.put_grant(Grant("sales", "alice", "editor"))
    await changed()
    await catalog.delete_grant("sales", "alice")
    await changed()
    await catalog.add_signing_key(SigningKey("k1", b"s", T0))
    await changed()

    await catalog.get_user("alice")
    await catalog.list_users()
    await catalog.get_token("t1")
    await catalog.list_tokens()
    await catalog.list_tokens("alice")
    await catalog.list_grants()
    await catalog.signing_keys()
    await unchanged()

    failures = [
        lambda: catalog.add_user(user("alice")),
        lambda: catalog.set_user("ghost", can_create=True),
        lambda: catalog.add_token(token("t1", "alice", T0)),
        lambda: catalog.add_token(token("t2", "ghost", T0)),
        lambda: catalog.revoke_token("nope", T0),
        lambda: catalog.put_grant(Grant("sales", "ghost", "viewer")),
        lambda: catalog.delete_grant("sales", "alice"),
        lambda: catalog.add_signing_key(SigningKey("k1", b"s", T0)),
    ]
    for call in failures:
        with pytest.raises((NotFound, AlreadyExists)):
            await call()
    await unchanged()


async def test_concurrent_changes_each_bump_the_version(catalog: CatalogStore) -> None:
    before = await catalog.auth_version()
    names = [f"user{i:02d}" for i in range(16)]
    await asyncio.gather(*(catalog.add_user(user(n)) for n in names))
    assert [u.name for u in await catalog.list_users()] == names
    assert await catalog.auth_version() == before + len(names)


# -- what outlives one catalog object ------------------------------------------


@persistent_only
async def test_a_second_node_on_the_same_catalog_sees_identity(
    backend: Backend, catalog: CatalogStore
) -> None:
    """Two nodes sharing one catalog (two SQLite connections on one file, or two pools)."""
    second = await backend.open_catalog()
    try:
        await users(catalog, "alice")
        await catalog.add_token(token("t1", "alice", T0))
        await catalog.put_grant(Grant(ANY_DATASET, "alice", "viewer", None, (4,)))
        await catalog.add_signing_key(SigningKey("k1", b"\x01\x02", T0))
        assert await second.auth_version() == await catalog.auth_version()
        assert await second.list_users() == [user("alice")]
        assert await second.get_token("t1") == token("t1", "alice", T0)
        assert await second.list_grants() == [Grant("*", "alice", "viewer", None, (4,))]
        assert await second.signing_keys() == [SigningKey("k1", b"\x01\x02", T0)]

        before = await catalog.auth_version()
        await second.revoke_token("t1", T0 + 7)  # a revocation on one node...
        await second.set_user("alice", disabled=True)
        assert await catalog.auth_version() == before + 2  # ...is seen by the other
        assert (await catalog.get_token("t1")).revoked == T0 + 7
        assert (await catalog.get_user("alice")).disabled is True
    finally:
        await second.close()


@persistent_only
async def test_catalog_at_the_previous_version_upgrades(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = 1  # the last version without the identity tables
    async with catalog_url(backend.kind, prefix="coframe_test_auth") as url:  # empty storage
        # A catalog made by the coframe before the identity tables existed...
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:previous])
        monkeypatch.setattr(migrations, "LATEST", previous)
        old = await open_catalog(url, tmp_path / "old")
        try:
            assert await old.schema_version() == previous  # type: ignore[attr-defined]
            await old.create_dataset(manifest("sales"))
        finally:
            await old.close()
        monkeypatch.undo()
        # ...opened by this one: the new migration runs and the data is kept.
        store = await open_catalog(url, tmp_path / "old")
        try:
            assert await store.schema_version() == migrations.LATEST  # type: ignore[attr-defined]
            assert await store.list_datasets() == ["sales"]
            assert await store.auth_version() == 0
            assert await store.list_users() == []
            await store.add_user(user("alice"))
            await store.put_grant(Grant("sales", "alice", "admin"))
            assert await store.auth_version() == 2
        finally:
            await store.close()
