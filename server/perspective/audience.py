"""Tables per audience: what a view table holds, and the filtered stream that keeps it in step.

An :class:`~server.rooms.outbound.Audience` is a set of visible columns and
an optional row predicate (Polars SQL over the room's columns, compiled in
the expression sandbox). Each (room, audience) has its own table in the
views process, built from the audience's rows and columns only:

- **Columns.** The table holds only the visible columns that its views use
  (:func:`needed_columns`): a view that lists no ``columns`` uses them all;
  otherwise the columns it lists, groups, splits, aggregates, filters and
  sorts by, and those its expressions name (``"price"``). A dashboard may
  show any column, so a table with a dashboard holds every visible one.
  A hidden column is not in the table's schema at all, so no expression can
  read it; coframe checks the names first and answers ``no_such_column``.
- **Rows.** With a predicate, a tick's touched rows (upserted or deleted)
  are checked against it in the room's state after the tick
  (:func:`stream_for`): rows that match are upserted whole (a row that
  enters the audience needs every held column), the others are removed
  (Perspective ignores a remove of a row it does not hold). So a row that an
  edit moves across the predicate enters or leaves the audience's views.

Pure functions over Polars and Arrow; :mod:`.jobs` runs them in a worker thread.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from protocol import Delta
from protocol.dtypes import RID, frame_to_arrow

from ..ops.state import State
from ..rooms.deltas import row_positions
from ..rooms.policy import EVERYONE, Audience, row_filter, visible_names

__all__ = [
    "needed_columns",
    "expression_columns",
    "table_key",
    "frame_for",
    "stream_for",
]

# A column named in a Perspective expression: "name", with \" and \\ escapes.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def expression_columns(text: str) -> set[str]:
    """The column names an ExprTK expression quotes (``"price" * 2`` names ``price``)."""
    return {re.sub(r"\\(.)", r"\1", m) for m in _QUOTED.findall(text)}


def needed_columns(config: dict[str, Any]) -> set[str] | None:
    """The room columns a view config reads; None when it shows every column (no ``columns``)."""
    exprs = config.get("expressions", {})
    if "columns" not in config:
        return None
    out: set[str] = set()
    for key in ("columns", "group_by", "split_by"):
        out |= set(config.get(key, ()))
    out |= set(config.get("aggregates", {}))
    out |= {clause[0] for clause in config.get("filter", ())}
    out |= {clause[0] for clause in config.get("sort", ())}
    for text in exprs.values():
        out |= expression_columns(text)
    return out - set(exprs) - {RID}


def table_key(room: str, audience: Audience) -> str:
    """The views process's key of (room, audience): the room's name for :data:`EVERYONE`."""
    if audience == EVERYONE:
        return room
    cols = "\x1f".join(sorted(audience.columns)) if audience.columns is not None else "*"
    hide = ",".join(str(i) for i in sorted(audience.hide))
    digest = hashlib.sha256(f"{cols}\x1e{audience.rows or ''}\x1e{hide}".encode()).hexdigest()[:16]
    return f"{room}#{digest}"


def _held(state: State, audience: Audience, columns: Iterable[str] | None) -> list[str]:
    visible = visible_names(state.catalog, audience)
    if columns is None:
        return [RID, *visible]
    wanted = set(columns)
    return [RID, *(c for c in visible if c in wanted)]


def _predicate(state: State, audience: Audience) -> pl.Expr | None:
    return row_filter(state, audience)


def frame_for(state: State, audience: Audience, columns: Iterable[str] | None) -> pl.DataFrame:
    """The rows and columns of ``state`` that a table for ``audience`` holding ``columns`` gets."""
    frame = state.frame
    pred = _predicate(state, audience)
    if pred is not None:
        frame = frame.filter(pred)
    return frame.select(_held(state, audience, columns))


def stream_for(
    batch: Sequence[Delta], state: State, audience: Audience, columns: Iterable[str] | None
) -> list[tuple[list[int], pa.Table | None]]:
    """``batch``'s deltas as the (removed rids, upserts) a table for ``audience`` needs.

    ``state`` is the room's state after the last delta of the batch. Without
    a predicate each delta keeps its order, its upserts cut to the held
    columns (a delta that touches none of them sends nothing). With one, the
    batch becomes one step: the touched rows as they are in ``state``.
    """
    held = _held(state, audience, columns)
    pred = _predicate(state, audience)
    if pred is None:
        out: list[tuple[list[int], pa.Table | None]] = []
        for d in batch:
            upserts = d.upserts
            if upserts is not None:
                keep = [c for c in held if c in upserts.column_names]
                upserts = upserts.select(keep) if len(keep) > 1 and upserts.num_rows else None
            if d.deleted or upserts is not None:
                out.append((list(d.deleted), upserts))
        return out
    touched: list[np.ndarray] = [np.asarray(d.deleted, dtype=np.uint64) for d in batch if d.deleted]
    for d in batch:
        if d.upserts is not None and d.upserts.num_rows:
            touched.append(d.upserts.column(RID).to_numpy())
    if not touched:
        return []
    rids = np.unique(np.concatenate(touched)).astype(np.uint64)
    _, pos = row_positions(state, rids)
    rows = state.frame[pl.Series(pos, dtype=pl.Int64)]
    visible = rows.filter(pred).select(held)
    kept = set(visible[RID].to_list())
    removed = [int(r) for r in rids if int(r) not in kept]
    upserts = frame_to_arrow(visible) if visible.height else None
    return [(removed, upserts)]
