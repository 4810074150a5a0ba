"""Diff two states (two commits, or a commit and live): rows, cells and schema.

Rows are matched by ``_rid`` and columns by id. A cell is *changed* when
its row and its column exist on both sides and the values differ, with
null-aware equality (null = null, NaN = NaN, ``ne_missing``). For a recast
column the values are compared as text instead, so a cast that keeps every
value's text (say Int64 → String) changes no cell while Int64 → Float64
changes every non-null one (``1`` → ``1.0``).

Values are rendered as text so that one table holds cells of every dtype:
the text is what Polars gives when casting to String (the same text a
``cast_column`` to String produces): ints ``12``, floats ``1.5``/``1e+20``/
``NaN``/``inf``, booleans ``true``/``false``, dates ``2024-01-02``,
datetimes ``2024-01-02 03:04:05.000006`` (``+00:00``-style offset when
zoned), strings as they are. A null value is a null, never the text
``"null"``.

Everything is vectorized: rows are aligned with two ``isin`` masks on the
sorted rid arrays (a join on ``_rid``) and each column is compared in one
pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from server.ops.state import RID, Column, State

__all__ = ["Diff", "diff_states", "CHANGED_SCHEMA", "render_text"]

CHANGED_SCHEMA = pa.schema(
    [
        pa.field("rid", pa.uint64(), nullable=False),
        pa.field("column_id", pa.int64(), nullable=False),
        pa.field("column", pa.string(), nullable=False),
        pa.field("old", pa.string()),
        pa.field("new", pa.string()),
    ]
)

_SCHEMA_CHANGE_SCHEMA = pa.schema(
    [
        pa.field("change", pa.string(), nullable=False),
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("old_name", pa.string()),
        pa.field("old_dtype", pa.string()),
        pa.field("dtype", pa.string()),
    ]
)


def render_text(s: pl.Series) -> pl.Series:
    """The values of ``s`` as text (see the module docstring); nulls stay null."""
    return s if s.dtype == pl.String else s.cast(pl.String)


@dataclass(frozen=True, slots=True)
class Diff:
    """What changed from state ``a`` to state ``b``.

    ``added``/``deleted``: ascending uint64 rid arrays (rows only in b / only
    in a). ``changed``: a table with :data:`CHANGED_SCHEMA` (``rid``,
    ``column_id``, ``column`` = name in b, ``old``, ``new`` as text), sorted
    by rid, then by column position in b. ``schema``: dicts ``{"change":
    "added"|"dropped"|"renamed"|"recast", "id", "name", ...}`` in b's column
    order (dropped columns last, in a's order); ``added``/``dropped`` carry
    ``dtype``, ``renamed`` carries ``old_name`` and ``recast`` carries
    ``old_dtype`` and ``dtype``. A column both renamed and recast gets both
    entries; ``name`` is always the current name (a's name for a dropped one).
    """

    added: np.ndarray
    deleted: np.ndarray
    changed: pa.Table
    schema: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """Counts: rows added/deleted, cells and rows changed, changed cells per column, schema changes."""
        per_col: dict[str, int] = {}
        if self.changed.num_rows:
            counts = pl.from_arrow(self.changed.select(["column"])).to_series().value_counts()
            per_col = {str(k): int(v) for k, v in counts.iter_rows()}
        rows = len(np.unique(self.changed.column("rid").to_numpy())) if self.changed.num_rows else 0
        return {
            "added": int(self.added.size),
            "deleted": int(self.deleted.size),
            "changed_cells": int(self.changed.num_rows),
            "changed_rows": int(rows),
            "changed_by_column": per_col,
            "schema": len(self.schema),
        }

    def to_json(self) -> dict[str, Any]:
        """``{"added": [rid], "deleted": [rid], "changed": [{rid, column_id, column, old, new}],
        "schema": [...], "summary": {...}}``."""
        return {
            "added": self.added.tolist(),
            "deleted": self.deleted.tolist(),
            "changed": self.changed.to_pylist(),
            "schema": [dict(s) for s in self.schema],
            "summary": self.summary(),
        }

    def to_arrow(self) -> dict[str, pa.Table]:
        """A dict of tables: ``added`` and ``deleted`` (one ``rid`` uint64 column each),
        ``changed`` (:data:`CHANGED_SCHEMA`) and ``schema`` (``change``, ``id``, ``name``,
        ``old_name``, ``old_dtype``, ``dtype``; absent fields are null)."""
        return {
            "added": pa.table({"rid": pa.array(self.added, pa.uint64())}),
            "deleted": pa.table({"rid": pa.array(self.deleted, pa.uint64())}),
            "changed": self.changed,
            "schema": pa.Table.from_pylist(
                [{k: s.get(k) for k in _SCHEMA_CHANGE_SCHEMA.names} for s in self.schema],
                schema=_SCHEMA_CHANGE_SCHEMA,
            ),
        }


def _schema_changes(a: tuple[Column, ...], b: tuple[Column, ...]) -> list[dict[str, Any]]:
    old = {c.id: c for c in a}
    new_ids = {c.id for c in b}
    out: list[dict[str, Any]] = []
    for c in b:
        o = old.get(c.id)
        if o is None:
            out.append({"change": "added", "id": c.id, "name": c.name, "dtype": c.dtype})
            continue
        if o.name != c.name:
            out.append({"change": "renamed", "id": c.id, "name": c.name, "old_name": o.name})
        if o.dtype != c.dtype:
            out.append(
                {"change": "recast", "id": c.id, "name": c.name, "old_dtype": o.dtype, "dtype": c.dtype}
            )
    for c in a:
        if c.id not in new_ids:
            out.append({"change": "dropped", "id": c.id, "name": c.name, "dtype": c.dtype})
    return out


def _align(ra: np.ndarray, rb: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Masks of the rows of a whose rid is in b, and of b's rows whose rid is in a (None: all)."""
    if ra.shape == rb.shape and np.array_equal(ra, rb):
        return None, None
    return np.isin(ra, rb, assume_unique=True), np.isin(rb, ra, assume_unique=True)


def diff_states(a: State, b: State) -> Diff:
    """Rows added and deleted, changed cells and schema changes from ``a`` to ``b``."""
    ra, rb = a.rids(), b.rids()
    in_b, in_a = _align(ra, rb)
    empty = np.empty(0, dtype=np.uint64)
    added = empty if in_a is None else rb[~in_a]
    deleted = empty if in_b is None else ra[~in_b]
    common = ra if in_b is None else ra[in_b]
    schema = _schema_changes(a.catalog.columns, b.catalog.columns)

    old_cols = {c.id: c for c in a.catalog.columns}
    pairs = [(old_cols[c.id], c) for c in b.catalog.columns if c.id in old_cols]
    fa = a.frame.select([o.name for o, _ in pairs])
    fb = b.frame.select([n.name for _, n in pairs])
    if in_b is not None and in_a is not None and pairs:
        fa, fb = fa.filter(pl.Series(in_b)), fb.filter(pl.Series(in_a))
    rid_s = pl.Series(RID, common, dtype=pl.UInt64)

    parts: list[pl.DataFrame] = []
    for pos, (o, n) in enumerate(pairs):
        sa, sb = fa.to_series(pos), fb.to_series(pos)
        if o.dtype == n.dtype:
            mask = sa.ne_missing(sb)
            if not mask.any():
                continue
            idx = mask.arg_true()
            old, new = render_text(sa.gather(idx)), render_text(sb.gather(idx))
        else:
            ta, tb = render_text(sa), render_text(sb)
            mask = ta.ne_missing(tb)
            if not mask.any():
                continue
            idx = mask.arg_true()
            old, new = ta.gather(idx), tb.gather(idx)
        parts.append(
            pl.DataFrame(
                {
                    "rid": rid_s.gather(idx),
                    "column_id": pl.repeat(n.id, len(idx), dtype=pl.Int64, eager=True),
                    "column": pl.repeat(n.name, len(idx), dtype=pl.String, eager=True),
                    "old": old.rename("old"),
                    "new": new.rename("new"),
                    "_pos": pl.repeat(pos, len(idx), dtype=pl.Int64, eager=True),
                }
            )
        )
    if parts:
        cells = pl.concat(parts).sort(["rid", "_pos"]).drop("_pos").to_arrow()
        changed = cells.cast(CHANGED_SCHEMA)
    else:
        changed = CHANGED_SCHEMA.empty_table()
    return Diff(added, deleted, changed, schema)
