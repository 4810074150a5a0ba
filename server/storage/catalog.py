"""Open the catalog named on the command line.

``open_catalog(None, data_dir)`` gives the embedded SQLite catalog in
``data_dir/catalog.sqlite3``; ``open_catalog("postgresql://...", data_dir)``
gives the PostgreSQL one (PROTOCOL.md section 13, "Durability and
versions"). The in-memory catalog (``--memory``) is built by
:meth:`server.storage.service.Storage.memory`, since it has no address.

This module imports the backends; the backends import only
:mod:`.catalog_common` and :mod:`.types`, never this module, so there is no
import cycle.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .catalog_common import check_schema
from .catalog_pg import PostgresCatalog
from .catalog_sqlite import SqliteCatalog
from .types import CatalogStore

__all__ = ["SQLITE_FILENAME", "open_catalog", "split_pg_url"]

SQLITE_FILENAME = "catalog.sqlite3"


async def open_catalog(url_or_path: str | None, data_dir: Path) -> CatalogStore:
    """Build the catalog for ``url_or_path`` and ``await .open()`` it (migrations run there).

    - ``None`` or ``""``: SQLite file ``data_dir/catalog.sqlite3`` (``data_dir`` is created).
    - ``postgresql://...`` or ``postgres://...``: PostgreSQL; ``?schema=NAME`` selects
      (and creates) the schema the tables live in, otherwise the server's default.
    - ``sqlite:///abs/file``, ``:memory:``, or a plain path (relative to the working
      directory): that SQLite file; an existing directory gets ``catalog.sqlite3`` in it.

    Raises:
        ValueError: an unknown URL scheme or a bad schema name.
        StorageError: the stored schema is newer than this coframe.
    """
    store: CatalogStore
    target = (url_or_path or "").strip()
    scheme = urlsplit(target).scheme.lower() if "://" in target else ""
    if scheme in ("postgresql", "postgres"):
        dsn, schema = split_pg_url(target)
        store = PostgresCatalog(dsn, schema=schema)
    elif scheme in ("", "sqlite"):
        store = SqliteCatalog(_sqlite_path(target, scheme, data_dir))
    else:
        raise ValueError(
            f"unknown catalog URL scheme '{scheme}' in {target!r}; "
            "use postgresql://user@host:port/db, a SQLite file path, or nothing for the embedded default"
        )
    await store.open()
    return store


def _sqlite_path(target: str, scheme: str, data_dir: Path) -> Path | str:
    if not target:
        data_dir.mkdir(parents=True, exist_ok=True)
        return data_dir / SQLITE_FILENAME
    if target == ":memory:":
        return target
    # sqlite:///abs/file.db → /abs/file.db; sqlite://rel.db → rel.db
    path = Path(target[len("sqlite://") :] if scheme == "sqlite" else target).expanduser()
    if path.is_dir():
        path = path / SQLITE_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def split_pg_url(url: str) -> tuple[str, str | None]:
    """Remove ``schema=NAME`` from the URL's query; return ``(dsn, schema or None)``.

    asyncpg would otherwise send ``schema`` to the server as a setting and fail.

    Raises:
        ValueError: the schema name is not a plain identifier.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    rest = [(k, v) for k, v in query if k != "schema"]
    schema = schemas[-1] if schemas else None
    if schema is not None:
        check_schema(schema)
    return urlunsplit(parts._replace(query=urlencode(rest))), schema
