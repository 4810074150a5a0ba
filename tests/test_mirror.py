"""The lazy client mirror (client/mirror.py) against the eager one it replaced.

The reference below is the eager mirror as it was: every delta applied to the
frame at once. Random delta streams (upserts of rows it has and new ones,
deletes, re-inserts of deleted rids, renames, new, dropped and recast
columns), with the frame read at random points, must give exactly the same
frames; a frame a caller holds must never change; applying a 1-cell delta
must not build a frame.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from client.mirror import MAX_PENDING, Mirror
from protocol import Delta, Welcome, decode_server, encode
from protocol.dtypes import RID, RID_POLARS, frame_to_arrow, polars_dtype

__all__: list[str] = []


class EagerMirror:
    """The mirror before issue 9: each delta rebuilds the frame (the reference)."""

    def __init__(self) -> None:
        self.frame = pl.DataFrame({RID: pl.Series([], dtype=RID_POLARS)})
        self.schema: list[dict[str, Any]] = []
        self.seq = -1

    def load(self, w: Welcome) -> None:
        schema = list(w.schema)
        assert w.snapshot is not None
        df = pl.from_arrow(w.snapshot)
        assert isinstance(df, pl.DataFrame)
        self.frame = df.select(
            [pl.col(RID)] + [pl.col(c["name"]).cast(polars_dtype(c["dtype"])) for c in schema]
        )
        self.schema, self.seq = schema, w.seq

    def apply(self, d: Delta) -> bool:
        if d.seq_to <= self.seq:
            return False
        df = self.frame
        if d.schema is not None:
            old = {c["id"]: c for c in self.schema}
            cols = [df.get_column(RID)]
            for c in d.schema:
                prev = old.get(c["id"])
                if prev is not None and prev["dtype"] == c["dtype"]:
                    cols.append(df.get_column(prev["name"]).alias(c["name"]))
                else:
                    cols.append(pl.Series(c["name"], [None] * df.height, dtype=polars_dtype(c["dtype"])))
            self.schema = list(d.schema)
            df = pl.DataFrame(cols)
        if d.deleted:
            gone = np.isin(df.get_column(RID).to_numpy(), np.asarray(d.deleted, dtype=np.uint64))
            df = df.filter(pl.Series(~gone))
        if d.upserts is not None and d.upserts.num_rows:
            up = pl.from_arrow(d.upserts)
            assert isinstance(up, pl.DataFrame)
            df = self._upsert(df, up)
        self.frame, self.seq = df, d.seq_to
        return True

    @staticmethod
    def _upsert(df: pl.DataFrame, up: pl.DataFrame) -> pl.DataFrame:
        names = [c for c in up.columns if c != RID]
        up = up.with_columns(pl.col(c).cast(df.schema[c]) for c in names if up.schema[c] != df.schema[c])
        have = df.get_column(RID).to_numpy()
        rids = up.get_column(RID).to_numpy().astype(np.uint64, copy=False)
        pos = np.searchsorted(have, rids)
        exists = np.zeros(len(rids), dtype=bool)
        inside = pos < len(have)
        exists[inside] = have[pos[inside]] == rids[inside]
        if exists.any():
            mask = pl.Series(exists)
            updated = []
            for c in names:
                s = df.get_column(c).clone()
                s.scatter(pos[exists], up.get_column(c).filter(mask))
                updated.append(s)
            df = df.with_columns(updated)
        if not exists.all():
            new = up.filter(pl.Series(~exists)).select(
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


def _wire(msg: Any) -> Any:
    """``msg`` as the client gets it: encoded by the server, decoded by the client."""
    return decode_server(encode(msg))


def _welcome(df: pl.DataFrame, schema: list[dict[str, Any]], seq: int = 0) -> Welcome:
    return _wire(Welcome("r", seq, "c", tuple(schema), frame_to_arrow(df), b""))


def _start(rows: int) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    df = pl.DataFrame(
        {
            RID: pl.Series(np.arange(1, rows + 1), dtype=RID_POLARS),
            "a": pl.Series(np.arange(rows), dtype=pl.Int64),
            "b": pl.Series(np.arange(rows) / 2, dtype=pl.Float64),
            "s": pl.Series([f"s{i}" for i in range(rows)], dtype=pl.String),
        }
    )
    schema = [
        {"id": 1, "name": "a", "dtype": "Int64"},
        {"id": 2, "name": "b", "dtype": "Float64"},
        {"id": 3, "name": "s", "dtype": "String"},
    ]
    return df, schema


def _value(rng: random.Random, dtype: str, i: int) -> Any:
    if rng.random() < 0.1:
        return None
    return {"Int64": i, "Float64": i + 0.25, "String": f"v{i}", "Int32": i % 1000}[dtype]


class _Stream:
    """A random but valid delta stream over a known set of rids and columns."""

    def __init__(self, rng: random.Random, rows: int, schema: list[dict[str, Any]]) -> None:
        self.rng, self.schema = rng, [dict(c) for c in schema]
        self.live = set(range(1, rows + 1))
        self.dead: set[int] = set()
        self.next_rid, self.next_id, self.seq, self.n = rows + 1, 10, 0, 0

    def _upserts(self, rids: list[int], cols: list[dict[str, Any]]) -> Any:
        self.n += 1
        data: dict[str, Any] = {RID: pl.Series(sorted(rids), dtype=RID_POLARS)}
        for c in cols:
            vals = [_value(self.rng, c["dtype"], self.n * 1000 + k) for k in range(len(rids))]
            data[c["name"]] = pl.Series(vals, dtype=polars_dtype(c["dtype"]))
        return frame_to_arrow(pl.DataFrame(data))

    def next(self) -> Delta:
        rng, self.seq = self.rng, self.seq + 1
        kind = rng.choices(["cell", "cells", "insert", "delete", "reinsert", "schema"], [8, 3, 2, 2, 1, 1])[0]
        schema, deleted, up = None, (), None
        if kind == "schema" and len(self.schema) > 1:
            schema, up = self._schema_change()
        elif kind == "delete" and self.live:
            gone = rng.sample(sorted(self.live), min(len(self.live), rng.randint(1, 3)))
            self.live -= set(gone)
            self.dead |= set(gone)
            deleted = tuple(gone) + ((self.next_rid + 50,) if rng.random() < 0.2 else ())  # one it lacks
        elif kind in ("insert", "reinsert"):
            rids = [self.next_rid + k for k in range(rng.randint(1, 3))]
            if kind == "reinsert" and self.dead:
                rids = [rng.choice(sorted(self.dead))]
            else:
                self.next_rid += len(rids)
            self.dead -= set(rids)
            self.live |= set(rids)
            up = self._upserts(rids, self.schema)
        elif self.live:
            rids = rng.sample(sorted(self.live), min(len(self.live), 1 if kind == "cell" else 4))
            up = self._upserts(
                rids, rng.sample(self.schema, min(len(self.schema), 1 if kind == "cell" else 2))
            )
        return _wire(Delta(self.seq, self.seq, ("w",), up, deleted, schema))

    def _schema_change(self) -> tuple[tuple[dict[str, Any], ...], Any]:
        rng, cols = self.rng, self.schema
        what = rng.choice(["rename", "add", "drop", "recast"])
        fresh: list[dict[str, Any]] = []
        if what == "rename":
            c = rng.choice(cols)
            c["name"] = f"{c['name']}_r"
        elif what == "add":
            self.next_id += 1
            fresh = [{"id": self.next_id, "name": f"n{self.next_id}", "dtype": "Float64"}]
            cols.append(fresh[0])
        elif what == "drop":
            cols.remove(rng.choice(cols))
        else:
            c = rng.choice([c for c in cols if c["dtype"] == "Int64"] or cols)
            c["dtype"] = "Int32" if c["dtype"] == "Int64" else "String"
            fresh = [c]
        up = self._upserts(sorted(self.live), fresh) if fresh and self.live else None
        return tuple(dict(c) for c in cols), up


@pytest.mark.parametrize("seed", range(12))
def test_lazy_mirror_equals_eager_mirror(seed: int) -> None:
    rng = random.Random(seed)
    df, schema = _start(rng.choice([0, 1, 5, 40]))
    lazy, eager = Mirror(), EagerMirror()
    w = _welcome(df, schema)
    lazy.load(w)
    eager.load(w)
    stream = _Stream(rng, df.height, schema)
    held: list[tuple[pl.DataFrame, pl.DataFrame]] = []
    for _ in range(150):
        d = stream.next()
        assert lazy.apply(d) and eager.apply(d)
        assert not lazy.apply(d)  # covered by seq: ignored
        assert lazy.seq == eager.seq and lazy.schema == eager.schema
        if rng.random() < 0.15:
            got = lazy.frame
            assert_frame_equal(got, eager.frame)
            held.append((got, got.clone()))
    assert_frame_equal(lazy.frame, eager.frame)
    for frame, copy in held:  # a frame handed out never changes afterwards
        assert_frame_equal(frame, copy)


def test_one_cell_deltas_build_no_frame_until_read() -> None:
    df, schema = _start(1000)
    m = Mirror()
    m.load(_welcome(df, schema))
    before = m.frame
    for i in range(1, 201):
        up = frame_to_arrow(pl.DataFrame({RID: pl.Series([i], dtype=RID_POLARS), "b": [float(-i)]}))
        assert m.apply(_wire(Delta(i, i, ("w",), up)))
    assert m.builds == 0 and m.pending == 200 and m.seq == 200
    after = m.frame
    assert m.builds == 1 and m.pending == 0
    assert after.get_column("b").head(200).to_list() == [float(-i) for i in range(1, 201)]
    assert_frame_equal(before, df)  # the frame read before the deltas is untouched
    assert m.frame is after  # nothing pending: the same frame again


def test_pending_deltas_are_bounded() -> None:
    df, schema = _start(10)
    m = Mirror()
    m.load(_welcome(df, schema))
    for i in range(1, MAX_PENDING + 5):
        up = frame_to_arrow(pl.DataFrame({RID: pl.Series([1 + i % 10], dtype=RID_POLARS), "a": [i]}))
        m.apply(_wire(Delta(i, i, ("w",), up)))
    assert m.builds == 1 and m.pending == 4


def test_a_resync_drops_pending_deltas() -> None:
    df, schema = _start(5)
    m = Mirror()
    m.load(_welcome(df, schema))
    up = frame_to_arrow(pl.DataFrame({RID: pl.Series([2], dtype=RID_POLARS), "a": [99]}))
    m.apply(_wire(Delta(1, 1, ("w",), up)))
    m.load(_welcome(df, schema, seq=7))
    assert m.seq == 7 and m.pending == 0
    assert_frame_equal(m.frame, df)
