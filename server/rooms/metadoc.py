"""The room's small shared metadata as a pycrdt doc, plus presence (Awareness).

PROTOCOL.md §9. The doc holds:

- ``order``: Array of column ids (as strings: Yjs hands small ints back as floats);
- ``columns``: Map id → Map {name, dtype, description}.

The server writes ``order``, ``name`` and ``dtype`` from the column catalog
whenever the schema changes (renames go through ops, never through the doc).
Clients may edit ``description`` (and add their own top-level types) with
standard Yjs sync messages; an update that would change a name, a dtype or
the order is refused. No per-row data ever goes into a Y type.
"""

from __future__ import annotations

import json
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

from ..ops.state import Catalog

__all__ = ["MetaDoc"]


def _awareness_update(awareness_id: int, clock: int, state: dict[str, Any] | None) -> bytes:
    enc = Encoder()
    enc.write_var_uint(1)
    enc.write_var_uint(awareness_id)
    enc.write_var_uint(clock)
    enc.write_var_string(json.dumps(state, separators=(",", ":")))
    return enc.to_bytes()


class MetaDoc:
    """Column metadata doc and presence for one room."""

    def __init__(self, catalog: Catalog) -> None:
        self.doc = Doc()
        self.order: Array[str] = self.doc.get("order", type=Array)
        self.columns: Map[Any] = self.doc.get("columns", type=Map)
        self.awareness = Awareness(self.doc)
        self.presence: dict[int, str] = {}  # awareness id → client id
        self.sync(catalog)

    # --------------------------------------------------------------- columns

    def _view(self) -> tuple[list[str], dict[str, tuple[str, str]]]:
        cols = {k: (str(v.get("name")), str(v.get("dtype"))) for k, v in self.columns.items()}
        return [str(x) for x in self.order], cols

    def sync(self, catalog: Catalog) -> bytes | None:
        """Make the doc match ``catalog``; return the Yjs update, or None if unchanged."""
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
        return None if update == b"\x00\x00" else update

    def state(self) -> bytes:
        """The whole doc as one Yjs update (for ``welcome.meta``)."""
        return self.doc.get_update()

    def handle(self, message: bytes) -> tuple[bytes | None, bytes | None]:
        """Handle a y-websocket sync frame from a client.

        Returns ``(reply, broadcast)``: a sync-step-2 reply for the sender, and
        an update message for everyone else.

        Raises:
            ProtocolError: ``bad_field`` for a malformed frame, ``read_only`` for
                an update that changes names, dtypes or column order.
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
            return create_sync_step2_message(self.doc.get_update(payload)), None
        if kind not in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"unknown sync message kind {kind}", field="update")
        if payload == b"\x00\x00":
            return None, None
        scratch = Doc()
        try:
            scratch.apply_update(self.doc.get_update())
            scratch.apply_update(payload)
        except Exception:
            raise ProtocolError(
                ErrorCode.BAD_FIELD, "field 'update' is not a Yjs update", field="update"
            ) from None
        s_order = [str(x) for x in scratch.get("order", type=Array)]
        s_cols = {
            k: (str(v.get("name")), str(v.get("dtype"))) for k, v in scratch.get("columns", type=Map).items()
        }
        order, cols = self._view()
        if s_order != order or s_cols != cols:
            raise ProtocolError(
                ErrorCode.READ_ONLY,
                "column names, dtypes and order change only through ops (rename_column, cast_column, ...);"
                " edit 'description' instead",
            )
        before = self.doc.get_state()
        self.doc.apply_update(payload)
        diff = self.doc.get_update(before)
        return None, (None if diff == b"\x00\x00" else create_update_message(diff))

    # -------------------------------------------------------------- presence

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
