"""The room's small shared metadata as a pycrdt doc, plus presence (Awareness).

PROTOCOL.md §9. The doc holds:

- ``order``: Array of column ids (as strings: Yjs hands small ints back as floats);
- ``columns``: Map id → Map {name, dtype, description}.

The server writes ``order``, ``name`` and ``dtype`` from the column catalog
whenever the schema changes (renames go through ops, never through the doc).
Clients may edit ``description`` (and add their own top-level types) with
standard Yjs sync messages. An update that changes a name, a dtype, the
order or the set of columns is answered ``read_only`` and the server writes
those back at once (the correction reaches every client as an update). No
per-row data ever goes into a Y type.

Bounded cost (PROTOCOL.md §10): a client's update is applied to the doc
directly, so its cost is the update's, not the doc's (pycrdt holds the GIL
and spends microseconds per item, so copying the doc per update would stall
every room). The doc's history is bounded: every update's bytes are
counted, and once the doc may be over ``max_bytes`` it is *compacted*:
replaced by a fresh doc holding only the columns' order, names, dtypes and
descriptions, with descriptions dropped (longest first) if they alone take
more than half the limit. Other top-level types and their history go. The
room then sends every client the new doc as a resync. The welcome's copy of
the doc is encoded once per change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pycrdt import (
    Array,
    Awareness,
    Doc,
    Encoder,
    Map,
    YMessageType,
    YSyncMessageType,
    create_update_message,
    read_message,
)
from pycrdt._sync import create_sync_step2_message  # not re-exported by pycrdt

from protocol import ErrorCode, ProtocolError
from protocol.costs import presence_json

from ..ops.state import Catalog

__all__ = ["MetaDoc", "MetaResult", "Compaction", "MAX_DOC_BYTES"]

MAX_DOC_BYTES = 1024 * 1024
_EMPTY_UPDATE = b"\x00\x00"
_EMPTY_STATE = b"\x00"
_ENTRY_BYTES = 64  # about what one column's entry takes in the doc, besides its strings
_SERVER_KEYS = frozenset({"name", "dtype"})
_ROOTS = ("order", "columns")


def _awareness_update(awareness_id: int, clock: int, state: dict[str, Any] | None) -> bytes:
    enc = Encoder()
    enc.write_var_uint(1)
    enc.write_var_uint(awareness_id)
    enc.write_var_uint(clock)
    enc.write_var_string(presence_json(state))
    return enc.to_bytes()


def _reraise_unless_yrs(e: BaseException) -> None:
    """Re-raise ``e`` unless pycrdt raised it for bad input: an exception, or a Rust
    panic (pyo3's ``PanicException`` derives from ``BaseException``)."""
    if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
        raise e


@dataclass(frozen=True, slots=True)
class Compaction:
    """What a compaction dropped: top-level types, and the columns whose description went."""

    roots: tuple[str, ...] = ()
    descriptions: tuple[str, ...] = ()  # column names

    @property
    def dropped(self) -> bool:
        return bool(self.roots or self.descriptions)

    def why(self, limit: int) -> str:
        what = []
        if self.roots:
            what.append(f"the top-level types {', '.join(self.roots)}")
        if self.descriptions:
            what.append(f"the descriptions of {', '.join(self.descriptions[:10])}")
        return (
            f"the metadata doc was over its {limit}-byte limit and was compacted; {' and '.join(what)}"
            " were dropped. Keep descriptions and your own types small"
        )


@dataclass(frozen=True, slots=True)
class MetaResult:
    """What a client's sync frame led to (:meth:`MetaDoc.handle`).

    ``reply`` goes to the sender (sync step 2). ``relay`` is an update for
    the others, or for everyone (the sender too) when ``refused`` says the
    server wrote read-only parts back. ``compacted`` is set when the doc was
    replaced: every client then needs it as a resync.
    """

    reply: bytes | None = None
    relay: bytes | None = None
    refused: str | None = None
    compacted: Compaction | None = None


class MetaDoc:
    """Column metadata doc and presence for one room."""

    def __init__(self, catalog: Catalog, *, max_bytes: int = MAX_DOC_BYTES) -> None:
        self.max_bytes = max_bytes
        self.awareness = Awareness(Doc())  # presence needs no doc content
        self.presence: dict[int, str] = {}  # awareness id → client id
        self.compactions = 0
        self._fresh(catalog, {})

    def _fresh(self, catalog: Catalog, descriptions: dict[str, str]) -> None:
        self.doc = Doc()
        self.order: Array[str] = self.doc.get("order", type=Array)
        self.columns: Map[Any] = self.doc.get("columns", type=Map)
        self._catalog = catalog
        with self.doc.transaction():
            self.order.extend([str(c.id) for c in catalog.columns])
            for c in catalog.columns:
                key = str(c.id)
                entry = {"name": c.name, "dtype": c.dtype, "description": descriptions.get(key, "")}
                self.columns[key] = Map(entry)
        self._touched = False
        self._subs = (
            self.order.observe(self._order_changed),
            self.columns.observe_deep(self._columns_changed),
        )
        self._state: bytes | None = None
        self.base = len(self.state())  # the doc's size when it was (re)built...
        self.grown = 0  # ...plus the bytes of every update since

    # --------------------------------------------------------------- columns

    def _order_changed(self, _event: Any) -> None:
        self._touched = True

    def _columns_changed(self, events: Any) -> None:
        for e in events:
            path = list(e.path)
            if not path or (len(path) == 1 and _SERVER_KEYS & set(e.keys)):
                self._touched = True  # an entry added, replaced or removed; a name or dtype changed

    def _view(self) -> tuple[list[str], dict[str, tuple[str, str]]]:
        cols = {k: (str(v.get("name")), str(v.get("dtype"))) for k, v in self.columns.items()}
        return [str(x) for x in self.order], cols

    def sync(self, catalog: Catalog) -> bytes | None:
        """Make the doc match ``catalog``; return the Yjs update, or None if unchanged."""
        self._catalog = catalog
        want_order = [str(c.id) for c in catalog.columns]
        before = self.doc.get_state()
        with self.doc.transaction():
            order, cols = self._view()
            if order != want_order:
                del self.order[:]
                self.order.extend(want_order)
            for c in catalog.columns:
                key = str(c.id)
                if key not in self.columns:
                    self.columns[key] = Map({"name": c.name, "dtype": c.dtype, "description": ""})
                    continue
                entry = self.columns[key]
                if cols[key][0] != c.name:
                    entry["name"] = c.name
                if cols[key][1] != c.dtype:
                    entry["dtype"] = c.dtype
            for key in set(cols) - set(want_order):
                del self.columns[key]
        update = self.doc.get_update(before)
        if update == _EMPTY_UPDATE:
            return None
        self._changed(len(update))
        return update

    def state(self) -> bytes:
        """The whole doc as one Yjs update (for ``welcome.meta``), encoded once per change."""
        if self._state is None:
            self._state = self.doc.get_update()
        return self._state

    def _changed(self, size: int) -> None:
        self._state = None
        self.grown += size

    @property
    def over_limit(self) -> bool:
        """The doc may be over ``max_bytes`` (its size when built, plus every update since)."""
        return self.base + self.grown > self.max_bytes

    def handle(self, message: bytes) -> MetaResult:
        """Handle a y-websocket sync frame from a client.

        Raises:
            ProtocolError: ``bad_field`` for a malformed frame.
        """
        if len(message) < 2 or message[0] != YMessageType.SYNC:
            raise ProtocolError(
                ErrorCode.BAD_FIELD, "field 'update' must be a y-websocket sync message", field="update"
            )
        kind, body = message[1], message[2:]
        try:
            payload = read_message(body)
        except Exception:
            raise ProtocolError(ErrorCode.BAD_FIELD, "field 'update' is truncated", field="update") from None
        if kind == YSyncMessageType.SYNC_STEP1:
            try:
                update = self.state() if payload == _EMPTY_STATE else self.doc.get_update(payload)
            except BaseException as e:
                _reraise_unless_yrs(e)
                raise ProtocolError(
                    ErrorCode.BAD_FIELD, "field 'update' holds no Yjs state vector", field="update"
                ) from None
            return MetaResult(reply=create_sync_step2_message(update))
        if kind not in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"unknown sync message kind {kind}", field="update")
        if payload == _EMPTY_UPDATE:
            return MetaResult()
        return self._apply(payload)

    def _apply(self, payload: bytes) -> MetaResult:
        before = self.doc.get_state()
        self._touched = False
        try:
            self.doc.apply_update(payload)
        except BaseException as e:
            _reraise_unless_yrs(e)
            raise ProtocolError(
                ErrorCode.BAD_FIELD, "field 'update' is not a Yjs update", field="update"
            ) from None
        # Parts of the update that wait for changes the doc lacks stay in pycrdt's
        # pending store: counted here, so a compaction frees them too.
        self._changed(len(payload))
        refused = None
        if self._touched:
            self.sync(self._catalog)  # write names, dtypes, order and the set of columns back
            refused = (
                "column names, dtypes and order change only through ops (rename_column, cast_column,"
                " ...), and columns only through add_column and drop_column; edit 'description' instead"
            )
        if self.over_limit:
            return MetaResult(refused=refused, compacted=self.compact())
        diff = self.doc.get_update(before)
        relay = None if diff == _EMPTY_UPDATE else create_update_message(diff)
        return MetaResult(relay=relay, refused=refused)

    def compact(self) -> Compaction:
        """Replace the doc by a fresh one: columns' order, names, dtypes and descriptions only.

        Descriptions are dropped, longest first, when they would take more
        than half of ``max_bytes``, so that the next compaction is at least
        half the limit of updates away.
        """
        catalog = self._catalog
        roots = tuple(sorted(k for k in self.doc.keys() if k not in _ROOTS))
        texts: dict[str, str] = {}
        for c in catalog.columns:
            entry = self.columns.get(str(c.id))
            text = entry.get("description") if isinstance(entry, Map) else None
            if isinstance(text, str) and text:
                texts[str(c.id)] = text
        budget = self.max_bytes // 2 - _ENTRY_BYTES * len(catalog.columns)
        kept: dict[str, str] = {}
        for key, text in sorted(texts.items(), key=lambda kv: len(kv[1])):
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > budget:
                break
            kept[key], budget = text, budget - size
        names = {str(c.id): c.name for c in catalog.columns}
        gone = tuple(names[k] for k in texts if k not in kept)
        self.order.unobserve(self._subs[0])
        self.columns.unobserve(self._subs[1])
        self._fresh(catalog, kept)
        self.compactions += 1
        return Compaction(roots, gone)

    # -------------------------------------------------------------- presence

    def narrowed(self, hide: frozenset[int]) -> bytes:
        """A fresh doc for an audience that may not see the columns ``hide`` (ids), as one update.

        It holds the visible columns' order, names, dtypes and descriptions,
        nothing else: no hidden column's entry and no other top-level type
        (a client's own notes may name a hidden column).
        """
        doc: Doc = Doc()
        order: Array[str] = doc.get("order", type=Array)
        columns: Map[Any] = doc.get("columns", type=Map)
        visible = [c for c in self._catalog.columns if c.id not in hide]
        with doc.transaction():
            order.extend([str(c.id) for c in visible])
            for c in visible:
                entry = self.columns.get(str(c.id))
                text = entry.get("description") if isinstance(entry, Map) else None
                description = text if isinstance(text, str) else ""
                columns[str(c.id)] = Map({"name": c.name, "dtype": c.dtype, "description": description})
        return doc.get_update()

    def set_presence(self, awareness_id: int, clock: int, client: str, state: dict[str, Any] | None) -> bytes:
        """Apply one client's presence state; return the awareness update to relay."""
        update = _awareness_update(awareness_id, clock, state)
        self.awareness.apply_awareness_update(update, client)
        if state is None:
            self.presence.pop(awareness_id, None)
        else:
            self.presence[awareness_id] = client
        return update

    def presence_states(self) -> dict[str, Any]:
        states = self.awareness.states
        return {client: states.get(aid) for aid, client in self.presence.items() if aid in states}

    def presence_update(self) -> bytes:
        return self.awareness.encode_awareness_update(list(self.presence))
