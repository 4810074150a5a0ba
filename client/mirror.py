"""The client's live Polars mirror of a room (PROTOCOL.md "Applying a delta").

Deltas are applied incrementally: schema first, then deletes, then upserts
(a scatter per column for rows we have, an append for new rows). The whole
frame is only replaced by a ``welcome`` (join or resync).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from protocol import Delta, Welcome
from protocol.dtypes import RID, RID_POLARS, polars_dtype

# polars_dtype is the dtype vocabulary's (protocol.dtypes), re-exported for old callers.
__all__ = ["Mirror", "polars_dtype"]


class Mirror:
    """A frame kept equal to the room's frame at ``seq``."""

    def __init__(self) -> None:
        self.frame = pl.DataFrame({RID: pl.Series([], dtype=RID_POLARS)})
        self.schema: list[dict[str, Any]] = []
        self.seq = -1
        self.snapshots = 0  # full loads (join or resync); deltas never add to it

    def load(self, w: Welcome) -> None:
        """Replace everything with a welcome's snapshot (join or resync)."""
        schema = list(w.schema)
        if w.snapshot is not None:
            self.snapshots += 1
            df = pl.from_arrow(w.snapshot)
            assert isinstance(df, pl.DataFrame)
            self.frame = df.select(
                [pl.col(RID)] + [pl.col(c["name"]).cast(polars_dtype(c["dtype"])) for c in schema]
            )
        self.schema = schema
        self.seq = w.seq

    def apply(self, d: Delta) -> bool:
        """Apply one delta; False if it is already covered by ``seq``."""
        if d.seq_to <= self.seq:
            return False
        df = self.frame
        if d.schema is not None:
            df = self._reshape(df, list(d.schema))
        if d.deleted:
            gone = np.isin(df.get_column(RID).to_numpy(), np.asarray(d.deleted, dtype=np.uint64))
            df = df.filter(pl.Series(~gone))
        if d.upserts is not None and d.upserts.num_rows:
            up = pl.from_arrow(d.upserts)
            assert isinstance(up, pl.DataFrame)
            df = self._upsert(df, up)
        self.frame = df
        self.seq = d.seq_to
        return True

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

    def _upsert(self, df: pl.DataFrame, up: pl.DataFrame) -> pl.DataFrame:
        names = [c for c in up.columns if c != RID]
        up = up.with_columns(pl.col(c).cast(df.schema[c]) for c in names if up.schema[c] != df.schema[c])
        have = df.get_column(RID).to_numpy()
        rids = up.get_column(RID).to_numpy().astype(np.uint64, copy=False)
        pos = np.searchsorted(have, rids)
        exists = np.zeros(len(rids), dtype=bool)
        inside = pos < len(have)
        exists[inside] = have[pos[inside]] == rids[inside]
        if exists.any():
            where = pos[exists]
            mask = pl.Series(exists)
            updated = []
            for c in names:
                s = df.get_column(c).clone()
                s.scatter(where, up.get_column(c).filter(mask))
                updated.append(s)
            df = df.with_columns(updated)
        if not exists.all():
            new = up.filter(pl.Series(~exists))
            new = new.select(
                [pl.col(RID)]
                + [
                    pl.col(c) if c in names else pl.lit(None, dtype=df.schema[c]).alias(c)
                    for c in df.columns[1:]
                ]
            )
            needs_sort = df.height and new.get_column(RID).min() < have[-1]  # type: ignore[operator]
            df = pl.concat([df, new], how="vertical")
            if needs_sort:
                df = df.sort(RID)
        return df
