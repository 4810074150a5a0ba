"""Storage: the catalog (SQLite or PostgreSQL), the chunk store and commits.

A regular package (not a namespace package), so that it is installed with
the others and import-linter sees its modules. Import from the submodules,
e.g. :mod:`server.storage.service`.
"""

__all__: list[str] = []
