"""Protocol messages as a restricted audience sees them (the outbound choke point's renderer).

:func:`render` is what :class:`~.outbound.Outbound` calls for every payload
and audience narrower than :data:`~.policy.EVERYONE`. It knows each message
kind, and fails closed on the others:

- ``delta``: :func:`.policy.render_delta` (rows move in and out as upserts
  and deletes, hidden columns cut, no metadata doc updates);
- ``ack``: overwrite reports only for cells the audience sees;
- ``error``: a message or details naming a hidden column are replaced by a
  generic message with the same code;
- ``presence``: a state's part that points at a hidden row or column (a
  dict with ``rid``/``row`` or ``col``/``column``) becomes ``null``, in the
  decoded states and in the re-encoded awareness update alike;
- ``meta`` (metadata doc sync): not sent; the welcome carries the metadata
  the audience may see;
- ``committed``: ``rows`` counts the visible rows;
- ``result``, ``view`` and the rest: rendered per audience where they are
  made (queries and views read the audience's rows), passed as they are.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from pycrdt import Decoder, Encoder

from protocol import Ack, Committed, Error, Meta, PresenceUpdate
from protocol.costs import presence_json

from ..ops.state import State
from .policy import Audience, hidden_names, visible_count, visible_rids

__all__ = ["render_message", "NOT_SENT"]

#: What :func:`render_message` returns for a message the audience does not get at all.
NOT_SENT = object()

_ROW_KEYS = ("rid", "row")
_COL_KEYS = ("col", "column")
_MAX_DEPTH = 8


def render_message(msg: Any, audience: Audience, state: State | None) -> Any:
    """``msg`` as ``audience`` may see it, or :data:`NOT_SENT`. ``state`` is the room's
    current state (None before the first welcome: then nothing data-bound is sent)."""
    if isinstance(msg, Meta):
        return NOT_SENT
    if isinstance(msg, Error):
        return _error(msg, audience, state)
    if state is None:
        return msg if not isinstance(msg, (Ack, PresenceUpdate, Committed)) else NOT_SENT
    if isinstance(msg, Ack):
        return _ack(msg, audience, state)
    if isinstance(msg, PresenceUpdate):
        return _presence(msg, audience, state)
    if isinstance(msg, Committed):
        rows = visible_count(state, audience)
        return Committed(msg.commit, msg.seq, rows, msg.message, msg.author, msg.time, msg.parents, re=msg.re)
    return msg


def _ack(msg: Ack, audience: Audience, state: State) -> Ack:
    if not msg.overwritten:
        return msg
    hidden = hidden_names(state.catalog, audience)
    kept = [o for o in msg.overwritten if o.column not in hidden]
    if audience.rows is not None and kept:
        seen = set(visible_rids(state, audience, [o.rid for o in kept]).tolist())
        kept = [o for o in kept if o.rid in seen]
    return Ack(msg.seq, msg.client_seq, msg.rids, tuple(kept), msg.duplicate, re=msg.re)


def _names_any(text: str, names: set[str]) -> bool:
    return any(re.search(r"(?<![\w])" + re.escape(n) + r"(?![\w])", text) for n in names if n)


def _error(msg: Error, audience: Audience, state: State | None) -> Error:
    if state is None:
        return msg
    hidden = hidden_names(state.catalog, audience)
    text = msg.message + " " + json.dumps(msg.details, default=str)
    if not hidden or not _names_any(text, hidden):
        return msg
    return Error(
        msg.code,
        f"refused ({msg.code}); the details name what your access policy hides",
        {},
        re=msg.re,
    )


# ---------------------------------------------------------------- presence


def _clean(
    value: Any, hidden: set[str], hidden_ids: frozenset[int], rows: set[int] | None, depth: int = 0
) -> Any:
    """``value`` with every dict that points at a hidden row or column replaced by None."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(value, list):
        return [_clean(v, hidden, hidden_ids, rows, depth + 1) for v in value]
    if not isinstance(value, dict):
        return value
    for k in _COL_KEYS:
        c = value.get(k)
        if (isinstance(c, str) and c in hidden) or (isinstance(c, int) and c in hidden_ids):
            return None
    for k in _ROW_KEYS:
        r = value.get(k)
        if rows is not None and isinstance(r, int) and not isinstance(r, bool) and r not in rows:
            return None
    return {k: _clean(v, hidden, hidden_ids, rows, depth + 1) for k, v in value.items()}


def _row_refs(value: Any, depth: int = 0) -> list[int]:
    if depth > _MAX_DEPTH:
        return []
    if isinstance(value, list):
        return [r for v in value for r in _row_refs(v, depth + 1)]
    if not isinstance(value, dict):
        return []
    out = [
        value[k] for k in _ROW_KEYS if isinstance(value.get(k), int) and not isinstance(value.get(k), bool)
    ]
    return out + [r for v in value.values() for r in _row_refs(v, depth + 1)]


def _presence(msg: PresenceUpdate, audience: Audience, state: State) -> PresenceUpdate:
    hidden = hidden_names(state.catalog, audience)
    hidden_ids = audience.hide
    entries = _decode_awareness(msg.update)
    rows: set[int] | None = None
    if audience.rows is not None:
        refs = [r for _, _, s in entries for r in _row_refs(s)] + _row_refs(list(msg.states.values()))
        refs = [r for r in refs if 0 <= r < 2**64]
        rows = (
            set(visible_rids(state, audience, np.asarray(refs, dtype=np.uint64)).tolist()) if refs else set()
        )
    enc = Encoder()
    enc.write_var_uint(len(entries))
    for aid, clock, s in entries:
        enc.write_var_uint(aid)
        enc.write_var_uint(clock)
        enc.write_var_string(presence_json(_clean(s, hidden, hidden_ids, rows)))
    states = {k: _clean(v, hidden, hidden_ids, rows) for k, v in msg.states.items()}
    return PresenceUpdate(enc.to_bytes(), states)


def _decode_awareness(update: bytes) -> list[tuple[int, int, Any]]:
    """A y-protocols awareness update's (client id, clock, state) entries."""
    dec = Decoder(update)
    out = []
    for _ in range(dec.read_var_uint()):
        aid = dec.read_var_uint()
        clock = dec.read_var_uint()
        out.append((aid, clock, json.loads(dec.read_var_string())))
    return out
