"""Chunked columns (server.ops.chunks): a write copies only its chunks and equals a whole-column scatter."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.ops import chunks

DTYPES = {
    "float": (pl.Float64, st.one_of(st.none(), st.floats(allow_nan=False, width=64))),
    "int": (pl.Int64, st.one_of(st.none(), st.integers(-(2**40), 2**40))),
    "str": (pl.String, st.one_of(st.none(), st.text("abc", max_size=4))),
    "bool": (pl.Boolean, st.one_of(st.none(), st.booleans())),
}


@st.composite
def cases(draw: Any) -> tuple[pl.Series, np.ndarray, pl.Series, pl.Series]:
    dtype, values = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    height = draw(st.integers(1, 120))
    data = draw(st.lists(values, min_size=height, max_size=height))
    whole = pl.Series("c", data, dtype=dtype)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, height - 1)), max_size=30))))
    bounds = [0, *(c for c in cuts if c < height), height]
    column = pl.concat([whole.slice(a, b - a) for a, b in zip(bounds, bounds[1:])], rechunk=False)
    positions = np.asarray(sorted(set(draw(st.lists(st.integers(0, height - 1), min_size=1, max_size=20)))))
    written = pl.Series(
        "c", draw(st.lists(values, min_size=len(positions), max_size=len(positions))), dtype=dtype
    )
    return whole, positions, written, column


@settings(max_examples=200, deadline=None)
@given(case=cases())
def test_a_chunked_scatter_equals_a_whole_column_scatter_and_leaves_the_source(
    case: tuple[pl.Series, np.ndarray, pl.Series, pl.Series],
) -> None:
    whole, positions, written, column = case
    expected = whole.clone()
    expected.scatter(positions, written)
    before = column.to_list()
    with pytest.MonkeyPatch.context() as mp:  # chunks of 8 rows, 2 spare: small columns take every path
        mp.setattr(chunks, "CHUNK_ROWS", 8)
        mp.setattr(chunks, "SPARE_CHUNKS", 2)
        got = chunks.scatter(column, positions, written)
        assert got.n_chunks() <= chunks.max_chunks(len(got)) + len(got) // chunks.CHUNK_ROWS + 1
    assert got.to_list() == expected.to_list()
    assert got.dtype == whole.dtype and got.name == whole.name
    assert column.to_list() == before  # the old state's column is untouched


def test_a_write_copies_one_chunk_of_a_big_column_and_shares_the_rest() -> None:
    """A 1-cell write to a 1M-row column: the result's other chunks are the old column's buffers."""
    rows = 1_000_000
    old = pl.Series("price", np.arange(rows, dtype=np.float64))
    new = chunks.scatter(old, np.array([5]), pl.Series([-1.0]))
    assert new[5] == -1.0 and old[5] == 5.0
    assert new.n_chunks() == -(-rows // chunks.CHUNK_ROWS)
    again = chunks.scatter(new, np.array([rows - 1]), pl.Series([-2.0]))

    def buffer(chunk: pl.Series) -> tuple[int, int]:
        arr = chunk.to_arrow()
        return arr.buffers()[1].address, arr.offset

    shared = [buffer(x) == buffer(y) for x, y in zip(new.get_chunks(), again.get_chunks(), strict=True)]
    assert shared.count(False) == 1 and not shared[-1]  # only the last chunk was copied
    assert again[5] == -1.0 and again[rows - 1] == -2.0 and new[rows - 1] == rows - 1


def test_appends_are_merged_once_a_column_holds_too_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 8)
    s = pl.Series("c", list(range(40)))
    for i in range(60):  # sixty 1-row appends
        s = chunks.compact(pl.concat([s, pl.Series("c", [100 + i])], rechunk=False))
        assert s.n_chunks() <= chunks.max_chunks(len(s))
    assert s.to_list() == list(range(40)) + [100 + i for i in range(60)]
