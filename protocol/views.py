"""View subscription messages (PROTOCOL.md "Views"): ``subscribe``, ``unsubscribe`` and ``view``.

A view is a Perspective query over the room's table, kept live by the
server. The config is checked here for shape only (known keys, value
types); the room checks column names and Perspective checks the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pyarrow as pa

from . import _fields as f
from ._spec import ID, RE, Field, Message, req
from .errors import ErrorCode, ProtocolError

__all__ = ["Subscribe", "Unsubscribe", "View", "VIEW_KEYS", "VIEW_KINDS", "check_view_config"]

#: The config keys a ``subscribe`` may carry, and the JSON shape of each.
VIEW_KEYS: dict[str, str] = {
    "columns": "a list of column names",
    "group_by": "a list of column names",
    "split_by": "a list of column names",
    "aggregates": "an object of column name: aggregate name",
    "filter": "a list of [column, operator, value] (value omitted for 'is null'/'is not null')",
    "sort": "a list of [column, direction]",
    "expressions": "an object of expression name: expression text",
    "group_rollup_mode": "one of 'flat', 'rollup', 'total'",
}
VIEW_KINDS = ("snapshot", "update", "closed")
_MAX_VIEW_ID = 128


def _bad(path: str, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, f"field '{path}' {what}", field=path)


def _names(v: Any, path: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _bad(path, "must be a list of column names")
    return list(v)


def _str_map(v: Any, path: str, what: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise _bad(path, f"must be {what}")
    return dict(v)


def _clauses(v: Any, path: str, lengths: tuple[int, ...]) -> list[list[Any]]:
    if not isinstance(v, list):
        raise _bad(path, f"must be {VIEW_KEYS[path.rsplit('.', 1)[-1]]}")
    out = []
    for i, c in enumerate(v):
        p = f"{path}[{i}]"
        if not isinstance(c, list) or len(c) not in lengths or not all(isinstance(x, str) for x in c[:2]):
            raise _bad(p, f"must be {VIEW_KEYS[path.rsplit('.', 1)[-1]]}")
        f.scalar(c[2] if len(c) > 2 else None, f"{p}[2]")
        out.append(list(c))
    return out


def check_view_config(v: Any, path: str = "config") -> dict[str, Any]:
    """A view config with known keys and well-shaped values.

    Raises:
        ProtocolError: ``bad_field`` naming the unknown key or the bad value's path.
    """
    if not isinstance(v, dict):
        raise _bad(path, "must be an object")
    out: dict[str, Any] = {}
    for key, value in v.items():
        p = f"{path}.{key}"
        if key not in VIEW_KEYS:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"field '{p}' is not a view config key; use {', '.join(VIEW_KEYS)}",
                field=p,
            )
        if key in ("columns", "group_by", "split_by"):
            out[key] = _names(value, p)
        elif key == "aggregates":
            out[key] = _str_map(value, p, VIEW_KEYS[key])
        elif key == "expressions":
            out[key] = _str_map(value, p, VIEW_KEYS[key])
        elif key == "filter":
            out[key] = _clauses(value, p, (2, 3))
        elif key == "sort":
            out[key] = _clauses(value, p, (2,))
        elif value not in ("flat", "rollup", "total"):
            raise _bad(p, f"must be {VIEW_KEYS[key]}")
        else:
            out[key] = value
    return out


_view_id = f.short_text(_MAX_VIEW_ID)


def _viewport(v: Any, path: str) -> tuple[int, int]:
    if not isinstance(v, dict):
        raise _bad(path, "must be an object {start_row, end_row}")
    start = f.req_int(v, "start_row", f"{path}.start_row")
    end = f.req_int(v, "end_row", f"{path}.end_row")
    if end <= start:
        raise _bad(f"{path}.end_row", f"must be greater than start_row ({start}), got {end}")
    return start, end


def _viewport_out(v: tuple[int, int]) -> dict[str, int]:
    return {"start_row": v[0], "end_row": v[1]}


def _view_kind(v: Any, path: str) -> str:
    kind = f.text(v, path)
    if kind not in VIEW_KINDS:
        raise _bad(path, f"is {kind!r}; expected one of {', '.join(VIEW_KINDS)}")
    return kind


# --------------------------------------------------------------- client → server


@dataclass(frozen=True, slots=True)
class Subscribe(Message):
    """Open a live view over the room's table (PROTOCOL.md "subscribe").

    ``view`` is the client's name for it, unique on its connection.
    ``viewport`` is ``(start_row, end_row)``, end exclusive.
    """

    view: str
    config: dict[str, Any]
    viewport: tuple[int, int] | None = None
    id: int | str | None = None
    type: ClassVar[Literal["subscribe"]] = "subscribe"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        ID,
        req("view", _view_id),
        Field("config", check_view_config, factory=dict, blank=True),
        Field("viewport", _viewport, dump=_viewport_out),
    )


@dataclass(frozen=True, slots=True)
class Unsubscribe(Message):
    """Close a view (PROTOCOL.md "unsubscribe"); answered by a ``view`` of kind ``closed``."""

    view: str
    id: int | str | None = None
    type: ClassVar[Literal["unsubscribe"]] = "unsubscribe"
    FIELDS: ClassVar[tuple[Field, ...]] = (ID, req("view", _view_id))


# --------------------------------------------------------------- server → client


@dataclass(frozen=True, slots=True)
class View(Message):
    """A view's content (PROTOCOL.md "view").

    ``kind`` is ``snapshot`` (the reply to ``subscribe``, and again after a
    schema change rebuilt the view), ``update`` (at most one per tick per
    view) or ``closed`` (after ``unsubscribe``, or when the view cannot
    survive a schema change: ``reason`` says why). ``data`` is the whole
    result of a grouped view, or the viewport of a plain one; ``rows`` is
    the view's total row count. ``seq`` is the room seq the content reflects.
    A ``snapshot`` carries the view's ``config`` as the server holds it
    (after a rename, with the new column names).
    """

    view: str
    kind: str
    seq: int
    data: pa.Table | None = None
    rows: int = 0
    reason: str | None = None
    re: int | str | None = None
    config: dict[str, Any] | None = None  # on snapshots: the config as the server now holds it
    type: ClassVar[Literal["view"]] = "view"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        RE,
        req("view", _view_id),
        req("kind", _view_kind),
        req("seq", f.uint),
        Field("rows", f.uint, default=0),
        Field("data", f.table_field),
        Field("reason", f.text),
        Field("config", check_view_config),
    )
