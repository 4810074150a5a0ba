"""Which role each request needs (docs/security.md "Roles").

- **viewer**: join, read, subscribe to views, query, export, presence;
- **editor**: also set, insert, delete, ``fill_null``, undo, redo, commit,
  metadata edits and creating branches;
- **admin**: also schema ops (add, drop, rename, cast column), tags, revert,
  grants and deleting the dataset.
"""

from __future__ import annotations

from typing import Any

from ..storage.auth_types import ROLES

__all__ = ["ROLE_RANK", "at_least", "ops_role", "required_role", "OP_ROLES", "MESSAGE_ROLES"]

ROLE_RANK = {role: i for i, role in enumerate(ROLES)}

#: The role each op kind needs.
OP_ROLES = {
    "set": "editor",
    "insert": "editor",
    "delete": "editor",
    "fill_null": "editor",
    "restore_rows": "editor",
    "add_column": "admin",
    "drop_column": "admin",
    "rename_column": "admin",
    "cast_column": "admin",
    "restore_column": "admin",
}

#: The role each client message type needs (an ``op`` message: its ops' strongest).
MESSAGE_ROLES = {
    "hello": "viewer",
    "ping": "viewer",
    "presence": "viewer",
    "query": "viewer",
    "subscribe": "viewer",
    "unsubscribe": "viewer",
    "undo": "editor",
    "redo": "editor",
    "commit": "editor",
    "meta": "editor",
}


def at_least(role: str | None, needed: str) -> bool:
    """Whether ``role`` (None: no grant) allows what ``needed`` allows."""
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[needed]


def ops_role(ops: Any) -> str:
    """The weakest role that may apply ``ops``: their strongest op's (unknown ops need admin).

    Also what an ``undo`` or ``redo`` needs for the batch it pops: the undo
    of an ``add_column`` is a ``drop_column``, whoever asks for it.
    """
    needed = "viewer"
    for op in ops:
        role = OP_ROLES.get(getattr(op, "op", ""), "admin")
        if ROLE_RANK[role] > ROLE_RANK[needed]:
            needed = role
    return needed


def required_role(msg: Any) -> str:
    """The weakest role that may send ``msg`` (a decoded client message); unknown types need admin.

    For ``undo`` and ``redo`` this is the role to ask at all; the batch they
    pop is checked again with :func:`ops_role` when it is applied.
    """
    kind = getattr(msg, "type", None)
    if kind == "op":
        return ops_role(getattr(msg, "ops", ()))
    return MESSAGE_ROLES.get(str(kind), "admin")
