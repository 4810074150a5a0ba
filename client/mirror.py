"""The client's live Polars mirror of a room (PROTOCOL.md "Applying a delta").

Applying a delta must not cost a copy of the whole frame: a 1-cell edit into
a 1M-row mirror would otherwise copy a column per delta. So the mirror keeps
the frame it last built and, beside it, the deltas applied since (their
upsert tables and deleted rids), and builds the next frame only when
:attr:`Mirror.frame` is read: all pending cells of a column land in one
scatter, whatever the number of deltas. Each built frame is a new plain
DataFrame; one a caller holds never changes.

The pending state has this shape, so that building is two steps: the frame,
minus the rids in ``gone``, upserted with the pending tables in arrival
order (last value per rid and column wins; a rid the frame does not have is
appended, its other columns null). A delete therefore strips the rids it
names from the pending upserts before joining ``gone``, and a schema change
(rare, and it touches whole columns anyway) builds the frame first, then
reshapes it at once. Past :data:`MAX_PENDING` deltas the frame is built
anyway, which bounds memory and amortises the copy when nobody reads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from protocol import Delta, Welcome
from protocol.dtypes import RID, RID_POLARS, polars_dtype

# polars_dtype is the dtype vocabulary's (protocol.dtypes), re-exported for old callers.
__all__ = ["Mirror", "MAX_PENDING", "polars_dtype"]

MAX_PENDING = 1024  # upsert tables held before the frame is built unasked


class Mirror:
    """A frame kept equal to the room's frame at ``seq``, built lazily from pending deltas."""

    def __init__(self) -> None:
        self._frame = pl.DataFrame({RID: pl.Series([], dtype=RID_POLARS)})
        self.schema: list[dict[str, Any]] = []
        self.seq = -1
        self.snapshots = 0  # full loads (join or resync); deltas never add to it
        self.builds = 0  # frames built from pending deltas
        self._ups: list[pa.Table] = []  # pending upserts, oldest first
        self._up_rids: list[np.ndarray] = []  # their rids (uint64), parallel to _ups
        self._gone: list[np.ndarray] = []  # pending deleted rids, applied before _ups

    @property
    def frame(self) -> pl.DataFrame:
        """The room's frame at :attr:`seq` (built now if deltas are pending)."""
        if self._ups or self._gone:
            self._build()
        return self._frame

    @property
    def pending(self) -> int:
        """How many upsert tables wait to be applied to the frame."""
        return len(self._ups)

    def load(self, w: Welcome) -> None:
        """Replace everything with a welcome's snapshot (join or resync)."""
        schema = list(w.schema)
        if w.snapshot is not None:
            self.snapshots += 1
            self._clear()
            # Parquet (hello.codecs) comes as a Polars frame; Arrow IPC as a table.
            df = w.snapshot if isinstance(w.snapshot, pl.DataFrame) else pl.from_arrow(w.snapshot)
            assert isinstance(df, pl.DataFrame)
            self._frame = df.select(
                [pl.col(RID)] + [pl.col(c["name"]).cast(polars_dtype(c["dtype"])) for c in schema]
            )
        self.schema = schema
        self.seq = w.seq

    def apply(self, d: Delta) -> bool:
        """Apply one delta; False if it is already covered by ``seq``."""
        if d.seq_to <= self.seq:
            return False
        if d.schema is not None:
            self._frame = self._reshape(self.frame, list(d.schema))
        if d.deleted:
            self._delete(np.asarray(d.deleted, dtype=np.uint64))
        up = d.upserts
        if up is not None and up.num_rows:
            self._ups.append(up)
            self._up_rids.append(_rids(up))
            if len(self._ups) >= MAX_PENDING:
                self._build()
        self.seq = d.seq_to
        return True

    # ------------------------------------------------------------ pending deltas

    def _clear(self) -> None:
        self._ups, self._up_rids, self._gone = [], [], []

    def _delete(self, gone: np.ndarray) -> None:
        """Record deleted rids; the pending upserts of those rids are void."""
        if self._ups:
            sizes = [len(r) for r in self._up_rids]
            hit = np.isin(np.concatenate(self._up_rids), gone)
            if hit.any():
                ends = np.cumsum(sizes)
                for i in np.unique(np.searchsorted(ends, np.flatnonzero(hit), side="right")):
                    lo = int(ends[i]) - sizes[i]
                    keep = ~hit[lo : int(ends[i])]
                    self._ups[i] = self._ups[i].filter(pa.array(keep))
                    self._up_rids[i] = self._up_rids[i][keep]
                kept = [(t, r) for t, r in zip(self._ups, self._up_rids) if len(r)]
                self._ups, self._up_rids = [t for t, _ in kept], [r for _, r in kept]
        self._gone.append(gone)

    def _build(self) -> None:
        """Apply the pending deletes, then the pending upserts, to a new frame."""
        df = self._frame
        if self._gone:
            gone = np.concatenate(self._gone)
            keep = ~np.isin(df.get_column(RID).to_numpy(), gone)
            if not keep.all():
                df = df.filter(pl.Series(keep))
        if self._ups:
            df = _upsert(df, self._ups, self._up_rids)
        self._clear()
        self.builds += 1
        self._frame = df

    def _reshape(self, df: pl.DataFrame, schema: list[dict[str, Any]]) -> pl.DataFrame:
        old = {c["id"]: c for c in self.schema}
        cols = [df.get_column(RID)]
        for c in schema:
            prev = old.get(c["id"])
            dtype = polars_dtype(c["dtype"])
            if prev is not None and prev["dtype"] == c["dtype"]:
                cols.append(df.get_column(prev["name"]).alias(c["name"]))
            else:  # new or recast column: its values arrive in this delta's upserts
                cols.append(pl.Series(c["name"], [None] * df.height, dtype=dtype))
        self.schema = schema
        return pl.DataFrame(cols)


# ---------------------------------------------------------------- building a frame


def _rids(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column(RID).to_numpy(), dtype=np.uint64)


def _columns(df: pl.DataFrame, tables: list[pa.Table], rids: list[np.ndarray]) -> dict[str, tuple[Any, Any]]:
    """Per column of ``df``: the (rids, values) the tables give it, deduplicated, last value wins.

    The tables are grouped by schema (one Arrow concat and one conversion per
    group, not per table); an order key keeps arrival order across groups.
    """
    groups: list[tuple[pa.Schema, list[int]]] = []  # few: deltas mostly repeat the last schema
    for i, t in enumerate(tables):
        schema = t.schema
        for known, idx in reversed(groups):
            if known == schema:
                idx.append(i)
                break
        else:
            groups.append((schema, [i]))
    pieces: dict[str, list[tuple[np.ndarray, np.ndarray, pl.Series]]] = {}
    for _, idx in groups:
        joined = pa.concat_tables([tables[i] for i in idx]) if len(idx) > 1 else tables[idx[0]]
        up = pl.from_arrow(joined.combine_chunks())
        assert isinstance(up, pl.DataFrame)
        g_rids = np.concatenate([rids[i] for i in idx]) if len(idx) > 1 else rids[idx[0]]
        order = np.repeat(np.asarray(idx), [len(rids[i]) for i in idx]) if len(groups) > 1 else idx
        for c in up.columns:
            if c != RID:
                pieces.setdefault(c, []).append((g_rids, order, up.get_column(c)))
    out: dict[str, tuple[Any, Any]] = {}
    for c, ps in pieces.items():
        dtype = df.schema[c]
        vals = [s if s.dtype == dtype else s.cast(dtype) for _, _, s in ps]
        r = ps[0][0] if len(ps) == 1 else np.concatenate([p[0] for p in ps])
        v = vals[0] if len(vals) == 1 else pl.concat(vals)
        if len(ps) > 1:  # rows of several groups: back into arrival order
            by = np.argsort(np.concatenate([p[1] for p in ps]), kind="stable")
            r, v = r[by], v.gather(by)
        if len(r) > 1:
            uniq, first_rev = np.unique(r[::-1], return_index=True)  # sorted; index of the last write
            r, v = uniq, v.gather(len(r) - 1 - first_rev)
        out[c] = (r, v)
    return out


def _upsert(df: pl.DataFrame, tables: list[pa.Table], rids: list[np.ndarray]) -> pl.DataFrame:
    """``df`` with the tables' cells written over its rows and their new rows appended (sorted)."""
    have = df.get_column(RID).to_numpy()
    updated: list[pl.Series] = []
    fresh: dict[str, tuple[np.ndarray, pl.Series]] = {}
    for c, (r, v) in _columns(df, tables, rids).items():
        pos = np.searchsorted(have, r)
        exists = np.zeros(len(r), dtype=bool)
        inside = pos < len(have)
        exists[inside] = have[pos[inside]] == r[inside]
        if exists.any():
            s = df.get_column(c).clone()
            if exists.all():
                s.scatter(pos, v)
            else:
                s.scatter(pos[exists], v.filter(pl.Series(exists)))
            updated.append(s)
        if not exists.all():
            fresh[c] = (r[~exists], v.filter(pl.Series(~exists)))
    if updated:
        df = df.with_columns(updated)
    if fresh:
        new_rids = np.unique(np.concatenate([r for r, _ in fresh.values()]))
        cols = [pl.Series(RID, new_rids, dtype=RID_POLARS)]
        for c in df.columns[1:]:
            r, v = fresh.get(c, (None, None))
            if r is not None and len(r) == len(new_rids):
                cols.append(v.alias(c))
                continue
            s = pl.Series(c, [None] * len(new_rids), dtype=df.schema[c])
            if r is not None:
                s.scatter(np.searchsorted(new_rids, r), v)
            cols.append(s)
        needs_sort = df.height > 0 and new_rids[0] < have[-1]
        df = pl.concat([df, pl.DataFrame(cols)], how="vertical")
        if needs_sort:
            df = df.sort(RID)
    return df
