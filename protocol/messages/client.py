"""Client → server messages (PROTOCOL.md "Messages"), and ``meta``, which goes both ways.

Each class's ``FIELDS`` lists its wire fields in wire order; ``from_wire``
and ``to_wire`` come from ``protocol._spec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from .. import _fields as f
from .._spec import ID, Field, Message, req, wire_list
from ..arrow import SNAPSHOT_CODECS
from ..errors import ErrorCode, ProtocolError
from ..ops import Op, op_from_wire

__all__ = [
    "PROTOCOL_VERSION",
    "QUERY_KINDS",
    "Hello",
    "OpBatch",
    "Undo",
    "Redo",
    "Presence",
    "Meta",
    "Commit",
    "Query",
    "Ping",
]

PROTOCOL_VERSION = 1
QUERY_KINDS = ("diff", "log")


def _bad(path: str, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, f"field '{path}' {what}", field=path)


def _codecs(v: Any, path: str) -> tuple[str, ...]:
    """The snapshot codecs a client reads, in its order; ones this side does not know are dropped."""
    return tuple(c for c in f.str_list(v, path) if c in SNAPSHOT_CODECS)


def _ops(v: Any, path: str) -> tuple[Op, ...]:
    if not isinstance(v, list) or not v:
        raise _bad(path, "must be a non-empty list")
    return tuple(op_from_wire(o, f"{path}[{i}]") for i, o in enumerate(v))


def _state(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(path, "must be an object or null")
    return f.obj(v, path)


def _commit_message(v: Any, path: str) -> str:
    if not isinstance(v, str) or len(v) > 4096:
        raise _bad(path, "must be a string of at most 4096 characters")
    return v


def _query_kind(v: Any, path: str) -> str:
    kind = f.text(v, path)
    if kind not in QUERY_KINDS:
        raise _bad(path, f"is {kind!r}; use one of {', '.join(QUERY_KINDS)}")
    return kind


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message on a connection: join the room (PROTOCOL.md "hello")."""

    client: str
    version: int = PROTOCOL_VERSION
    since: int | None = None
    id: int | str | None = None
    codecs: tuple[str, ...] = ()  # snapshot codecs this client reads ("parquet", "zstd", "lz4")
    type: ClassVar[Literal["hello"]] = "hello"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        ID,
        req("client", f.short_text(128)),
        req("version", f.uint),
        Field("since", f.uint),
        Field("codecs", _codecs, default=(), blank=True, dump=list),
    )


@dataclass(frozen=True, slots=True)
class OpBatch(Message):
    """An atomic batch of ops (PROTOCOL.md "op")."""

    client_seq: int
    base_seq: int
    ops: tuple[Op, ...]
    id: int | str | None = None
    type: ClassVar[Literal["op"]] = "op"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        ID,
        req("client_seq", f.uint),
        req("base_seq", f.uint),
        req("ops", _ops, dump=wire_list),
    )


@dataclass(frozen=True, slots=True)
class Undo(Message):
    """Undo this client's last applied batch (its inverse is applied as a new seq)."""

    client_seq: int
    base_seq: int = 0
    id: int | str | None = None
    type: ClassVar[Literal["undo", "redo"]] = "undo"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        ID,
        req("client_seq", f.uint),
        Field("base_seq", f.uint, default=0),
    )


@dataclass(frozen=True, slots=True)
class Redo(Undo):
    """Redo the batch this client last undid."""

    type: ClassVar[Literal["redo"]] = "redo"


@dataclass(frozen=True, slots=True)
class Presence(Message):
    """Set (or clear, with ``state`` null) this client's presence state."""

    state: dict[str, Any] | None
    id: int | str | None = None
    type: ClassVar[Literal["presence"]] = "presence"
    FIELDS: ClassVar[tuple[Field, ...]] = (ID, Field("state", _state))


@dataclass(frozen=True, slots=True)
class Meta(Message):
    """A Yjs sync-protocol message for the room's metadata doc (both directions)."""

    update: bytes
    id: int | str | None = None
    re: int | str | None = None  # set on the server's sync-step-2 reply
    type: ClassVar[Literal["meta"]] = "meta"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        ID,
        req("update", f.blob),
        Field("re", f.request_id, omit_none=True),
    )


@dataclass(frozen=True, slots=True)
class Commit(Message):
    """Commit the room's current state as a new version (PROTOCOL.md "commit")."""

    message: str
    id: int | str | None = None
    type: ClassVar[Literal["commit"]] = "commit"
    FIELDS: ClassVar[tuple[Field, ...]] = (ID, Field("message", _commit_message, default="", blank=True))


@dataclass(frozen=True, slots=True)
class Query(Message):
    """Ask about versions (PROTOCOL.md "query"): ``diff`` between two versions, or ``log``.

    ``from``/``to`` name a commit (or unique prefix), a tag, a branch, or
    ``live`` (this room's current state). ``to`` defaults to ``live``.
    """

    kind: str
    from_: str | None = None
    to: str | None = None
    limit: int | None = None
    id: int | str | None = None
    type: ClassVar[Literal["query"]] = "query"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        ID,
        req("kind", _query_kind),
        Field("from", f.text),
        Field("to", f.text),
        Field("limit", f.uint),
    )

    def check(self) -> None:
        """A diff needs ``from``.

        Raises:
            ProtocolError: ``bad_field`` naming ``from``.
        """
        if self.kind == "diff" and self.from_ is None:
            raise _bad("from", "is required for a diff")


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Keepalive; answered by ``pong``."""

    id: int | str | None = None
    type: ClassVar[Literal["ping"]] = "ping"
    FIELDS: ClassVar[tuple[Field, ...]] = (ID,)
