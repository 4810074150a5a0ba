"""Protocol messages as a restricted audience sees them (the outbound choke point's renderer).

:func:`render` is what :class:`~.outbound.Outbound` calls for every payload
and audience narrower than :data:`~.policy.EVERYONE`. It knows each message
kind, and fails closed on the others:

- ``delta``: :func:`render_delta` (rows move in and out as upserts and
  deletes, hidden columns cut, no metadata doc updates), with the
  outbound's :class:`Visibility` of each audience's rows;
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
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
from pycrdt import Decoder, Encoder

from protocol import Ack, Committed, Delta, Error, Meta, PresenceUpdate
from protocol.costs import presence_json
from protocol.dtypes import RID, frame_to_arrow

from ..ops.state import Catalog, State
from .deltas import row_positions
from .policy import (
    Audience,
    PolicyBroken,
    compiled_rows,
    hidden_names,
    narrow_schema,
    row_filter,
    rows_at,
    visible_count,
    visible_names,
    visible_rids,
)

__all__ = ["render_message", "render_delta", "Touched", "Visibility", "NOT_SENT"]

#: What :func:`render_message` returns for a message the audience does not get at all.
NOT_SENT = object()

_NONE = np.empty(0, dtype=np.uint64)
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


# ---------------------------------------------------------------- deltas


class Visibility:
    """Which rows each audience with a row predicate sees, as a bool array indexed by rid.

    The outbound renders a room's deltas in order, once per audience, and
    each render moves the audience's mask from the tick's ``before`` state to
    its ``after`` state: an edit that touches no column the predicate reads
    looks its rows up here instead of evaluating the predicate. A mask that
    is not in step (the first delta, or one after a state the outbound did
    not render) is rebuilt from the whole frame.
    """

    def __init__(self) -> None:
        self._masks: dict[Audience, tuple[State, np.ndarray]] = {}
        self._names: dict[Audience, tuple[Catalog, list[str]]] = {}

    def names(self, catalog: Catalog, audience: Audience) -> list[str]:
        """``_rid`` and the audience's visible columns in ``catalog`` (kept while the catalog is)."""
        got = self._names.get(audience)
        if got is not None and got[0] is catalog:
            return got[1]
        names = [RID, *visible_names(catalog, audience)]
        self._names[audience] = (catalog, names)
        return names

    def mask(self, state: State, audience: Audience) -> np.ndarray:
        """The audience's mask for ``state`` (at least ``state.next_rid`` long).

        Raises:
            PolicyBroken: its row predicate does not compile for ``state``.
        """
        got = self._masks.get(audience)
        if got is not None and got[0] is state:
            return got[1]
        pred = row_filter(state, audience)
        mask = np.zeros(state.next_rid, dtype=bool)
        rids = state.frame.get_column(RID) if pred is None else state.frame.filter(pred).get_column(RID)
        mask[rids.to_numpy().astype(np.int64)] = True
        self._masks[audience] = (state, mask)
        return mask

    def moved(self, audience: Audience, state: State, mask: np.ndarray) -> None:
        """``mask`` is now the audience's mask for ``state``."""
        if len(mask) < state.next_rid:
            mask = np.concatenate([mask, np.zeros(state.next_rid - len(mask), dtype=bool)])
        self._masks[audience] = (state, mask)

    def keep(self, audiences: Iterable[Audience]) -> None:
        """Forget the masks of every other audience (none of its subscribers is left)."""
        wanted = set(audiences)
        for a in [a for a in self._masks if a not in wanted]:
            del self._masks[a]
        for a in [a for a in self._names if a not in wanted]:
            del self._names[a]


def _seen_in(mask: np.ndarray, rids: np.ndarray) -> np.ndarray:
    """Which of ``rids`` ``mask`` marks (a rid past its end was not there)."""
    idx = rids.astype(np.int64)
    inside = idx < len(mask)
    out = np.zeros(len(rids), dtype=bool)
    out[inside] = mask[idx[inside]]
    return out


class Touched:
    """What one delta touched, worked out once for every audience it is rendered for."""

    __slots__ = ("rids", "deleted", "changed", "new", "_every")

    def __init__(self, delta: Delta, before: State | None, inserted: bool | None = None) -> None:
        upserts = delta.upserts
        rows = upserts is not None and upserts.num_rows > 0
        self.rids = upserts.column(RID).to_numpy().astype(np.uint64) if rows else _NONE  # type: ignore[union-attr]
        self.deleted = np.asarray(delta.deleted, dtype=np.uint64) if delta.deleted else _NONE
        self.changed = frozenset(upserts.column_names) if upserts is not None else frozenset()
        # Whether an upserted row is new (an insert): None when there is no earlier state to ask.
        # ``inserted=False`` (the tick inserted no row, as its delta builder knows) saves the lookup.
        if before is None or not rows:
            self.new: bool | None = None
        elif inserted is False:
            self.new = False
        else:
            self.new = not bool(row_positions(before, self.rids)[0].all())
        self._every: np.ndarray | None = None

    def every(self) -> np.ndarray:
        """Every rid the delta upserted or deleted, ascending (worked out on first use)."""
        if self._every is None:
            self._every = np.unique(np.concatenate([self.deleted, self.rids]))
        return self._every


def _whole(delta: Delta, schema: Any) -> bool:
    """Whether an audience that sees every row and column of ``delta`` may get it as it is: it
    carries no metadata-doc update (never sent under a policy) and a schema it sees whole."""
    return delta.meta is None and schema == delta.schema


def render_delta(
    delta: Delta,
    before: State | None,
    after: State,
    audience: Audience,
    vis: Visibility | None = None,
    touched: Touched | None = None,
) -> Delta:
    """``delta`` as ``audience`` sees it (``after`` is the room's state after the tick).

    Without a predicate, upserts keep only the visible columns (a delta that
    changed none of them still carries its seqs). With one, every touched
    row that is visible after the tick is upserted whole (a row that enters
    the audience needs all its visible columns), and a touched row that was
    visible before (in ``before``) but is not after is deleted. A tick that
    only updated existing rows in columns the predicate does not read moves
    no row in or out: its upserts are just cut to the visible rows and
    columns (the common edit; no whole-row gather). The metadata doc's
    updates are not sent (a restricted client gets the metadata it may see
    in its welcome). ``vis`` (the outbound's) answers "was it visible
    before?" without evaluating the predicate, and is moved to ``after``;
    ``touched`` (the outbound's, shared by the audiences of one delta) is
    what the delta touched.

    Returns ``delta`` itself when the audience sees all of it (no metadata
    update, every row and column visible): the outbound then sends the
    bytes already encoded for everyone.
    """
    catalog = after.catalog
    keep = [RID, *visible_names(catalog, audience)] if vis is None else vis.names(catalog, audience)
    schema = None if delta.schema is None else narrow_schema(delta.schema, audience)
    upserts = delta.upserts
    if audience.rows is None:
        names = None if upserts is None else [n for n in keep if n in upserts.column_names]
        if (names is None or len(names) == upserts.num_columns) and _whole(delta, schema):  # type: ignore[union-attr]
            return delta  # it sees every column the delta carries
        if upserts is not None:
            upserts = upserts.select(names) if len(names) > 1 and upserts.num_rows else None  # type: ignore[arg-type]
        return Delta(delta.seq_from, delta.seq_to, delta.by, upserts, delta.deleted, schema, None)
    t = touched if touched is not None else Touched(delta, before)
    reads = compiled_rows(after, audience)[1]  # type: ignore[index]
    if before is not None and before.catalog is after.catalog and t.new is False and not reads & t.changed:
        # Updates of rows that already existed, in columns the predicate does not read: no row
        # moved in or out, so the visible ones keep their changed cells and the rest go unsaid.
        assert upserts is not None
        if vis is not None:
            mask = vis.mask(before, audience)
            shown = _seen_in(mask, t.rids)
            gone = t.deleted[_seen_in(mask, t.deleted)] if len(t.deleted) else _NONE
            if len(t.deleted):
                mask[t.deleted.astype(np.int64)] = False
            vis.moved(audience, after, mask)
        else:
            shown = np.isin(t.rids, visible_rids(after, audience, t.rids))
            gone = visible_rids(before, audience, t.deleted)
        names = [n for n in keep if n in t.changed]
        everything = bool(shown.all())
        if (
            everything
            and len(names) == upserts.num_columns
            and len(gone) == len(t.deleted)
            and _whole(delta, schema)
        ):
            return delta
        cut = None
        if len(names) > 1 and (everything or shown.any()):
            cut = (upserts if everything else upserts.filter(pa.array(shown))).select(names)
        return Delta(delta.seq_from, delta.seq_to, delta.by, cut, tuple(int(r) for r in gone), schema, None)
    touched_rids = t.every()
    seen = visible_rids(after, audience, touched_rids)
    rows = rows_at(after, seen).select(keep)
    out: pa.Table | None = frame_to_arrow(rows) if rows.height else None
    mask = None
    if before is None:  # no earlier state known: a touched row not visible now may have been
        was = touched_rids
    else:
        try:
            if vis is not None:
                mask = vis.mask(before, audience)
                was = touched_rids[_seen_in(mask, touched_rids)]
            else:
                was = visible_rids(before, audience, touched_rids)
        except PolicyBroken:  # the predicate only compiles after the tick (a column came back)
            was = _NONE
    gone = np.setdiff1d(was, seen, assume_unique=True)
    if mask is not None and vis is not None:
        if after.next_rid > len(mask):
            mask = np.concatenate([mask, np.zeros(after.next_rid - len(mask), dtype=bool)])
        mask[touched_rids.astype(np.int64)] = False
        mask[seen.astype(np.int64)] = True
        vis.moved(audience, after, mask)
    return Delta(delta.seq_from, delta.seq_to, delta.by, out, tuple(int(r) for r in gone), schema, None)
