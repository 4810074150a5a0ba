"""The message catalog (PROTOCOL.md "Messages"): typed, frozen classes.

Field names match PROTOCOL.md exactly. ``from_wire`` validates and names the
bad field; ``to_wire`` returns a map whose tables are ``pyarrow.Table`` and
whose binary blobs are ``bytes`` (the envelope picks their encoding).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from . import _fields as f
from .arrow import IPC_CODECS
from .errors import ErrorCode, ProtocolError
from .ops import Op, op_from_wire
from .views import Subscribe, Unsubscribe, View

__all__ = [
    "PROTOCOL_VERSION",
    "Hello",
    "OpBatch",
    "Undo",
    "Redo",
    "Presence",
    "Meta",
    "Ping",
    "Commit",
    "Committed",
    "Query",
    "Result",
    "QUERY_KINDS",
    "Welcome",
    "Ack",
    "Overwrite",
    "Error",
    "Delta",
    "PresenceUpdate",
    "Pong",
    "ClientMessage",
    "ServerMessage",
    "CLIENT_MESSAGES",
    "SERVER_MESSAGES",
]

PROTOCOL_VERSION = 1


_req_id = f.req_id


def _obj(v: Any, path: str) -> dict[str, Any]:
    """A free-form JSON object (presence state, details, limits)."""
    if not isinstance(v, dict):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"field '{path}' must be an object", field=path)
    out: dict[str, Any] = f.plain(v, path)
    return out


def _blob(v: Any, path: str) -> bytes:
    """Binary field: bytes in msgpack frames, base64 text in JSON frames."""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, str):
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise ProtocolError(
        ErrorCode.BAD_FIELD, f"field '{path}' must be bytes (base64 text in JSON)", field=path
    )


def _opt_table(v: Any, path: str) -> pa.Table | None:
    return None if v is None else f.table_field(v, path)


def _schema(v: Any, path: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(v, list):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"field '{path}' must be a list", field=path)
    out = []
    for i, c in enumerate(v):
        if not isinstance(c, dict):
            p = f"{path}[{i}]"
            raise ProtocolError(ErrorCode.BAD_FIELD, f"field '{p}' must be an object", field=p)
        out.append(
            {
                "id": f.req_int(c, "id", f"{path}[{i}].id"),
                "name": f.req_str(c, "name", f"{path}[{i}].name"),
                "dtype": f.req_str(c, "dtype", f"{path}[{i}].dtype"),
            }
        )
    return tuple(out)


# --------------------------------------------------------------- client → server


@dataclass(frozen=True, slots=True)
class Hello:
    """First message on a connection: join the room (PROTOCOL.md "hello")."""

    client: str
    version: int = PROTOCOL_VERSION
    since: int | None = None
    id: int | str | None = None
    codecs: tuple[str, ...] = ()  # Arrow IPC compressions this client reads ("zstd", "lz4")
    type: ClassVar[str] = "hello"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Hello:
        client = f.req_str(d, "client", "client")
        if len(client) > 128:
            raise ProtocolError(ErrorCode.BAD_FIELD, "field 'client' is over 128 characters", field="client")
        codecs = d.get("codecs") or []
        if not isinstance(codecs, list) or not all(isinstance(c, str) for c in codecs):
            raise ProtocolError(
                ErrorCode.BAD_FIELD, "field 'codecs' must be a list of strings", field="codecs"
            )
        return cls(
            client,
            f.req_int(d, "version", "version"),
            f.opt_int(d, "since", "since"),
            _req_id(d),
            tuple(c for c in codecs if c in IPC_CODECS),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "id": self.id,
            "client": self.client,
            "version": self.version,
            "since": self.since,
            "codecs": list(self.codecs),
        }


@dataclass(frozen=True, slots=True)
class OpBatch:
    """An atomic batch of ops (PROTOCOL.md "op")."""

    client_seq: int
    base_seq: int
    ops: tuple[Op, ...]
    id: int | str | None = None
    type: ClassVar[str] = "op"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> OpBatch:
        raw = f.req(d, "ops", "ops")
        if not isinstance(raw, list) or not raw:
            raise ProtocolError(ErrorCode.BAD_FIELD, "field 'ops' must be a non-empty list", field="ops")
        ops = tuple(op_from_wire(o, f"ops[{i}]") for i, o in enumerate(raw))
        return cls(
            f.req_int(d, "client_seq", "client_seq"), f.req_int(d, "base_seq", "base_seq"), ops, _req_id(d)
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "id": self.id,
            "client_seq": self.client_seq,
            "base_seq": self.base_seq,
            "ops": [o.to_wire() for o in self.ops],
        }


@dataclass(frozen=True, slots=True)
class Undo:
    """Undo this client's last applied batch (its inverse is applied as a new seq)."""

    client_seq: int
    base_seq: int = 0
    id: int | str | None = None
    type: ClassVar[str] = "undo"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Undo:
        return cls(
            f.req_int(d, "client_seq", "client_seq"), f.opt_int(d, "base_seq", "base_seq") or 0, _req_id(d)
        )

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "client_seq": self.client_seq, "base_seq": self.base_seq}


@dataclass(frozen=True, slots=True)
class Redo(Undo):
    type: ClassVar[str] = "redo"


@dataclass(frozen=True, slots=True)
class Presence:
    """Set (or clear, with ``state`` null) this client's presence state."""

    state: dict[str, Any] | None
    id: int | str | None = None
    type: ClassVar[str] = "presence"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Presence:
        state = d.get("state")
        if state is not None and not isinstance(state, dict):
            raise ProtocolError(ErrorCode.BAD_FIELD, "field 'state' must be an object or null", field="state")
        return cls(None if state is None else _obj(state, "state"), _req_id(d))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "state": self.state}


@dataclass(frozen=True, slots=True)
class Meta:
    """A Yjs sync-protocol message for the room's metadata doc (both directions)."""

    update: bytes
    id: int | str | None = None
    re: int | str | None = None  # set on the server's sync-step-2 reply
    type: ClassVar[str] = "meta"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Meta:
        return cls(_blob(f.req(d, "update", "update"), "update"), _req_id(d), _req_id(d, "re"))

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "id": self.id, "update": self.update}
        if self.re is not None:
            d["re"] = self.re
        return d


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit the room's current state as a new version (PROTOCOL.md "commit")."""

    message: str
    id: int | str | None = None
    type: ClassVar[str] = "commit"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Commit:
        message = d.get("message") or ""
        if not isinstance(message, str) or len(message) > 4096:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                "field 'message' must be a string of at most 4096 characters",
                field="message",
            )
        return cls(message, _req_id(d))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "message": self.message}


QUERY_KINDS = ("diff", "log")


@dataclass(frozen=True, slots=True)
class Query:
    """Ask about versions (PROTOCOL.md "query"): ``diff`` between two versions, or ``log``.

    ``from``/``to`` name a commit (or unique prefix), a tag, a branch, or
    ``live`` (this room's current state). ``to`` defaults to ``live``.
    """

    kind: str
    from_: str | None = None
    to: str | None = None
    limit: int | None = None
    id: int | str | None = None
    type: ClassVar[str] = "query"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Query:
        kind = f.req_str(d, "kind", "kind")
        if kind not in QUERY_KINDS:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"field 'kind' is {kind!r}; use one of {', '.join(QUERY_KINDS)}",
                field="kind",
            )
        frm = f.opt_str(d, "from", "from")
        if kind == "diff" and frm is None:
            raise ProtocolError(ErrorCode.BAD_FIELD, "field 'from' is required for a diff", field="from")
        return cls(kind, frm, f.opt_str(d, "to", "to"), f.opt_int(d, "limit", "limit"), _req_id(d))

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "id": self.id,
            "kind": self.kind,
            "from": self.from_,
            "to": self.to,
            "limit": self.limit,
        }


@dataclass(frozen=True, slots=True)
class Ping:
    id: int | str | None = None
    type: ClassVar[str] = "ping"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Ping:
        return cls(_req_id(d))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id}


# --------------------------------------------------------------- server → client


@dataclass(frozen=True, slots=True)
class Welcome:
    """Join reply, or a resync: the room state at ``seq`` (PROTOCOL.md "welcome")."""

    room: str
    seq: int
    client: str
    schema: tuple[dict[str, Any], ...]
    snapshot: pa.Table | None  # None when resumed: deltas follow instead
    meta: bytes
    role: str = "editor"
    resumed: bool = False
    reason: str = "join"  # join | resume | resync
    limits: dict[str, Any] = field(default_factory=dict)
    re: int | str | None = None
    type: ClassVar[str] = "welcome"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Welcome:
        return cls(
            f.req_str(d, "room", "room"),
            f.req_int(d, "seq", "seq"),
            f.req_str(d, "client", "client"),
            _schema(f.req(d, "schema", "schema"), "schema"),
            _opt_table(d.get("snapshot"), "snapshot"),
            _blob(f.req(d, "meta", "meta"), "meta"),
            f.req_str(d, "role", "role"),
            f.opt_bool(d, "resumed", "resumed"),
            f.req_str(d, "reason", "reason"),
            _obj(d.get("limits") or {}, "limits"),
            _req_id(d, "re"),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "re": self.re,
            "room": self.room,
            "seq": self.seq,
            "client": self.client,
            "schema": list(self.schema),
            "snapshot": self.snapshot,
            "meta": self.meta,
            "role": self.role,
            "resumed": self.resumed,
            "reason": self.reason,
            "limits": self.limits,
        }


@dataclass(frozen=True, slots=True)
class Overwrite:
    """A cell this batch overwrote although its sender had not seen the last write."""

    rid: int
    column: str
    value: Any
    by: str
    seq: int

    def to_wire(self) -> dict[str, Any]:
        return {"rid": self.rid, "column": self.column, "value": self.value, "by": self.by, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class Ack:
    """The batch with ``client_seq`` was applied as ``seq`` (PROTOCOL.md "ack")."""

    seq: int
    client_seq: int
    rids: tuple[int, ...] = ()
    overwritten: tuple[Overwrite, ...] = ()
    duplicate: bool = False
    re: int | str | None = None
    type: ClassVar[str] = "ack"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Ack:
        raw = d.get("overwritten") or []
        if not isinstance(raw, list):
            raise ProtocolError(
                ErrorCode.BAD_FIELD, "field 'overwritten' must be a list", field="overwritten"
            )
        ows = []
        for i, o in enumerate(raw):
            p = f"overwritten[{i}]"
            if not isinstance(o, dict):
                raise ProtocolError(ErrorCode.BAD_FIELD, f"field '{p}' must be an object", field=p)
            ows.append(
                Overwrite(
                    f.req_int(o, "rid", f"{p}.rid"),
                    f.req_str(o, "column", f"{p}.column"),
                    f.scalar(o.get("value"), f"{p}.value"),
                    f.req_str(o, "by", f"{p}.by"),
                    f.req_int(o, "seq", f"{p}.seq"),
                )
            )
        return cls(
            f.req_int(d, "seq", "seq"),
            f.req_int(d, "client_seq", "client_seq"),
            f.int_list(d.get("rids") or [], "rids"),
            tuple(ows),
            f.opt_bool(d, "duplicate", "duplicate"),
            _req_id(d, "re"),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "re": self.re,
            "seq": self.seq,
            "client_seq": self.client_seq,
            "rids": list(self.rids),
            "overwritten": [o.to_wire() for o in self.overwritten],
            "duplicate": self.duplicate,
        }


@dataclass(frozen=True, slots=True)
class Error:
    """A rejection: a stable ``code`` and a message that says what to do."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    re: int | str | None = None
    type: ClassVar[str] = "error"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Error:
        details = _obj(d.get("details") or {}, "details")
        return cls(
            f.req_str(d, "code", "code"), f.req_str(d, "message", "message"), details, _req_id(d, "re")
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "re": self.re,
            "code": self.code,
            "message": self.message,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class Delta:
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
    type: ClassVar[str] = "delta"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Delta:
        by = d.get("by") or []
        if not isinstance(by, list) or not all(isinstance(b, str) for b in by):
            raise ProtocolError(ErrorCode.BAD_FIELD, "field 'by' must be a list of strings", field="by")
        return cls(
            f.req_int(d, "seq_from", "seq_from"),
            f.req_int(d, "seq_to", "seq_to"),
            tuple(by),
            _opt_table(d.get("upserts"), "upserts"),
            f.int_list(d.get("deleted") or [], "deleted"),
            None if d.get("schema") is None else _schema(d["schema"], "schema"),
            None if d.get("meta") is None else _blob(d["meta"], "meta"),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "seq_from": self.seq_from,
            "seq_to": self.seq_to,
            "by": list(self.by),
            "upserts": self.upserts,
            "deleted": list(self.deleted),
            "schema": None if self.schema is None else list(self.schema),
            "meta": self.meta,
        }


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """Presence changed: a y-protocols awareness update plus the decoded states."""

    update: bytes
    states: dict[str, Any]
    type: ClassVar[str] = "presence"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> PresenceUpdate:
        states = _obj(d.get("states") or {}, "states")
        return cls(_blob(f.req(d, "update", "update"), "update"), states)

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "update": self.update, "states": self.states}


@dataclass(frozen=True, slots=True)
class Committed:
    """A commit was made on this room's branch; ``re`` is set for the requester."""

    commit: str
    seq: int
    rows: int
    message: str
    author: str
    time: float
    parents: tuple[str, ...] = ()
    re: int | str | None = None
    type: ClassVar[str] = "committed"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Committed:
        parents = d.get("parents") or []
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise ProtocolError(
                ErrorCode.BAD_FIELD, "field 'parents' must be a list of strings", field="parents"
            )
        t = d.get("time")
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            raise ProtocolError(ErrorCode.BAD_FIELD, "field 'time' must be a number", field="time")
        return cls(
            f.req_str(d, "commit", "commit"),
            f.req_int(d, "seq", "seq"),
            f.req_int(d, "rows", "rows"),
            f.req_str(d, "message", "message", nonempty=False),
            f.req_str(d, "author", "author", nonempty=False),
            float(t),
            tuple(parents),
            _req_id(d, "re"),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "re": self.re,
            "commit": self.commit,
            "seq": self.seq,
            "rows": self.rows,
            "message": self.message,
            "author": self.author,
            "time": self.time,
            "parents": list(self.parents),
        }


@dataclass(frozen=True, slots=True)
class Result:
    """The answer to a ``query``: named tables (Arrow) and JSON data."""

    kind: str
    tables: dict[str, pa.Table] = field(default_factory=dict)
    data: Any = None
    re: int | str | None = None
    type: ClassVar[str] = "result"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Result:
        raw = d.get("tables") or {}
        if not isinstance(raw, dict):
            raise ProtocolError(ErrorCode.BAD_FIELD, "field 'tables' must be an object", field="tables")
        tables = {str(k): f.table_field(v, f"tables.{k}") for k, v in raw.items()}
        return cls(f.req_str(d, "kind", "kind"), tables, f.plain(d.get("data"), "data"), _req_id(d, "re"))

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "re": self.re,
            "kind": self.kind,
            "tables": dict(self.tables),
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Pong:
    re: int | str | None = None
    type: ClassVar[str] = "pong"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Pong:
        return cls(_req_id(d, "re"))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "re": self.re}


ClientMessage = (
    Hello | OpBatch | Undo | Redo | Presence | Meta | Commit | Query | Ping | Subscribe | Unsubscribe
)
ServerMessage = Welcome | Ack | Error | Delta | PresenceUpdate | Meta | Committed | Result | Pong | View

CLIENT_MESSAGES: dict[str, Any] = {
    c.type: c
    for c in (Hello, OpBatch, Undo, Redo, Presence, Meta, Commit, Query, Ping, Subscribe, Unsubscribe)
}
SERVER_MESSAGES: dict[str, Any] = {
    c.type: c for c in (Welcome, Ack, Error, Delta, PresenceUpdate, Meta, Committed, Result, Pong, View)
}
