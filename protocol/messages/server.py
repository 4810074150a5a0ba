"""Server → client messages (PROTOCOL.md "Messages").

Each class's ``FIELDS`` lists its wire fields in wire order; ``from_wire``
and ``to_wire`` come from ``protocol._spec``. Tables are ``pyarrow.Table``
and blobs ``bytes`` in the wire map; the envelope picks their encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import polars as pl
import pyarrow as pa

from .. import _fields as f
from .._spec import NO_DEFAULT, RE, Field, Message, Record, req, wire_list
from ..errors import ErrorCode, ProtocolError

__all__ = ["Welcome", "Overwrite", "Ack", "Error", "Delta", "PresenceUpdate", "Committed", "Result", "Pong"]


def _bad(path: str, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, f"field '{path}' {what}", field=path)


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """Join reply, or a resync: the room state at ``seq`` (PROTOCOL.md "welcome")."""

    room: str
    seq: int
    client: str
    schema: tuple[dict[str, Any], ...]
    # An Arrow table, or a Polars frame when it came as Parquet (hello.codecs);
    # None when resumed: deltas follow instead.
    snapshot: pa.Table | pl.DataFrame | None
    meta: bytes
    role: str = "editor"
    resumed: bool = False
    reason: str = "join"  # join | resume | resync
    limits: dict[str, Any] = field(default_factory=dict)
    re: int | str | None = None
    type: ClassVar[Literal["welcome"]] = "welcome"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        RE,
        req("room", f.text),
        req("seq", f.uint),
        req("client", f.text),
        req("schema", f.schema, dump=list),
        Field("snapshot", f.snapshot_field),
        req("meta", f.blob),
        req("role", f.text),
        Field("resumed", f.flag, default=False),
        req("reason", f.text),
        Field("limits", f.obj, factory=dict, blank=True),
    )


@dataclass(frozen=True, slots=True)
class Overwrite(Record):
    """A cell this batch overwrote although its sender had not seen the last write."""

    rid: int
    column: str
    value: Any
    by: str
    seq: int
    FIELDS: ClassVar[tuple[Field, ...]] = (
        req("rid", f.uint),
        req("column", f.text),
        Field("value", f.scalar),
        req("by", f.text),
        req("seq", f.uint),
    )


def _overwrites(v: Any, path: str) -> tuple[Overwrite, ...]:
    if not isinstance(v, list):
        raise _bad(path, "must be a list")
    out = []
    for i, o in enumerate(v):
        p = f"{path}[{i}]"
        if not isinstance(o, dict):
            raise _bad(p, "must be an object")
        out.append(Overwrite.from_wire(o, f"{p}."))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The batch with ``client_seq`` was applied as ``seq`` (PROTOCOL.md "ack")."""

    seq: int
    client_seq: int
    rids: tuple[int, ...] = ()
    overwritten: tuple[Overwrite, ...] = ()
    duplicate: bool = False
    re: int | str | None = None
    type: ClassVar[Literal["ack"]] = "ack"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        RE,
        req("seq", f.uint),
        req("client_seq", f.uint),
        Field("rids", f.int_list, default=(), blank=True, dump=list),
        Field("overwritten", _overwrites, default=(), blank=True, dump=wire_list),
        Field("duplicate", f.flag, default=False),
    )


@dataclass(frozen=True, slots=True)
class Error(Message):
    """A rejection: a stable ``code`` and a message that says what to do."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    re: int | str | None = None
    type: ClassVar[Literal["error"]] = "error"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        RE,
        req("code", f.text),
        req("message", f.text),
        Field("details", f.obj, factory=dict, blank=True),
    )


@dataclass(frozen=True, slots=True)
class Delta(Message):
    """The net effect of seqs ``seq_from``..``seq_to`` (PROTOCOL.md "delta").

    Apply in this order: ``schema`` (if set), then ``deleted``, then ``upserts``.
    """

    seq_from: int
    seq_to: int
    by: tuple[str, ...]
    upserts: pa.Table | None = None
    deleted: tuple[int, ...] = ()
    schema: tuple[dict[str, Any], ...] | None = None
    meta: bytes | None = None
    type: ClassVar[Literal["delta"]] = "delta"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        req("seq_from", f.uint),
        req("seq_to", f.uint),
        Field("by", f.str_list, default=(), blank=True, dump=list),
        Field("upserts", f.table_field),
        Field("deleted", f.int_list, default=(), blank=True, dump=list),
        Field("schema", f.schema, dump=list),
        Field("meta", f.blob),
    )


@dataclass(frozen=True, slots=True)
class PresenceUpdate(Message):
    """Presence changed: a y-protocols awareness update plus the decoded states."""

    update: bytes
    states: dict[str, Any]
    type: ClassVar[Literal["presence"]] = "presence"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        req("update", f.blob),
        Field("states", f.obj, factory=dict, blank=True),
    )


@dataclass(frozen=True, slots=True)
class Committed(Message):
    """A commit was made on this room's branch; ``re`` is set for the requester."""

    commit: str
    seq: int
    rows: int
    message: str
    author: str
    time: float
    parents: tuple[str, ...] = ()
    re: int | str | None = None
    type: ClassVar[Literal["committed"]] = "committed"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        RE,
        req("commit", f.text),
        req("seq", f.uint),
        req("rows", f.uint),
        req("message", f.string),
        req("author", f.string),
        Field("time", f.number, default=NO_DEFAULT),  # absent or null: "must be a number"
        Field("parents", f.str_list, default=(), blank=True, dump=list),
    )


def _tables(v: Any, path: str) -> dict[str, pa.Table]:
    if not isinstance(v, dict):
        raise _bad(path, "must be an object")
    return {str(k): f.table_field(t, f"{path}.{k}") for k, t in v.items()}


@dataclass(frozen=True, slots=True)
class Result(Message):
    """The answer to a ``query``: named tables (Arrow) and JSON data."""

    kind: str
    tables: dict[str, pa.Table] = field(default_factory=dict)
    data: Any = None
    re: int | str | None = None
    type: ClassVar[Literal["result"]] = "result"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        RE,
        req("kind", f.text),
        Field("tables", _tables, factory=dict, blank=True, dump=dict),
        Field("data", f.plain),
    )


@dataclass(frozen=True, slots=True)
class Pong(Message):
    """The reply to ``ping``."""

    re: int | str | None = None
    type: ClassVar[Literal["pong"]] = "pong"
    FIELDS: ClassVar[tuple[Field, ...]] = (RE,)
