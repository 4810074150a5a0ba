"""The grouped views' tally (server/perspective/fasttally.py): exact float sums, built and updated.

Every figure is checked against Python's fractions: a sum read after any
build and updates is the true sum of the group's values rounded once.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from server.perspective.fasttally import Tally, exact, from_exact

EXTREMES = [sys.float_info.max, -sys.float_info.max, 5e-324, -5e-324, sys.float_info.min, -0.0, 0.1, 1e308]
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EXTREMES),
    st.none(),
)
rows = st.lists(st.tuples(st.sampled_from(["a", "b", None]), floats, st.booleans()), max_size=30)


def frame(data: list[tuple[Any, float | None, bool]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "k0": [k for k, _, _ in data],
            "v0": [0 for _ in data],  # count reads no value
            "v1": [v for _, v, _ in data],
            "v2": [v for _, v, _ in data],
            "keep": [keep for _, _, keep in data],
        },
        schema={"k0": pl.String, "v0": pl.Int8, "v1": pl.Float64, "v2": pl.Float64, "keep": pl.Boolean},
    )


def expected(data: list[tuple[Any, float | None, bool]]) -> dict[Any, tuple[int, Any, Any]]:
    """Per group of kept rows: (rows, sum, mean) computed with fractions."""
    groups: dict[Any, list[float | None]] = {}
    for k, v, keep in data:
        if keep:
            groups.setdefault(k, []).append(v)
    out = {}
    for k, values in groups.items():
        present = [v for v in values if v is not None]
        if any(math.isnan(v) for v in present) or (math.inf in present and -math.inf in present):
            total = mean = math.nan
        elif math.inf in present or -math.inf in present:
            total = mean = math.inf if math.inf in present else -math.inf
        else:
            exact_sum = sum((Fraction(v) for v in present), Fraction(0))
            total = _float(exact_sum)
            mean = _float(exact_sum / len(present)) if present else None
        out[k] = (len(values), total, None if not present else mean)
    return out


def _float(x: Fraction) -> float:
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def read(t: Tally) -> dict[Any, tuple[int, Any, Any]]:
    return {k: (n, s, m) for k, n, s, m in ((k, *rest) for k, *rest in t.values())}


def same(a: dict[Any, tuple[int, Any, Any]], b: dict[Any, tuple[int, Any, Any]]) -> bool:
    return {k: tuple(map(repr, v)) for k, v in a.items()} == {k: tuple(map(repr, v)) for k, v in b.items()}


def test_exact_round_trips_the_extremes() -> None:
    for x in [*EXTREMES, 0.0, 1.0, -2.5, 2.0**-1022]:
        assert from_exact(exact(x)) == x
        assert Fraction(exact(x), 2**1126) == Fraction(x)
    assert from_exact(exact(sys.float_info.max) * 2) == math.inf
    assert from_exact(-exact(sys.float_info.max) * 2) == -math.inf


def test_one_rounding_where_doubles_lose_the_small_terms() -> None:
    t = Tally(["count", "fsum", "mean"])
    t.build(frame([("a", 1e16, True), ("a", 1.0, True), ("a", -1e16, True), ("a", 1.0, True)]), 1)
    assert read(t) == {"a": (4, 2.0, 0.5)}  # in double order: 1e16 + 1.0 - 1e16 + 1.0 = 1.0


@settings(max_examples=300, deadline=None)
@given(before=rows, changes=st.lists(st.tuples(st.integers(0, 29), floats, st.booleans()), max_size=10))
def test_build_then_update_equals_a_fresh_build(
    before: list[tuple[Any, float | None, bool]], changes: list[tuple[int, float | None, bool]]
) -> None:
    t = Tally(["count", "fsum", "mean"])
    t.build(frame(before), 1)
    assert same(read(t), expected(before))
    after = list(before)
    touched = sorted({i for i, _, _ in changes if i < len(before)})
    for i, v, keep in changes:
        if i < len(after):
            after[i] = (after[i][0], v, keep)
    t.update(frame([before[i] for i in touched]), frame([after[i] for i in touched]), 1)
    assert same(read(t), expected(after))


def test_integer_sums_wrap_as_int64() -> None:
    data = pl.DataFrame(
        {"k0": ["a", "a", "a"], "v0": [2**63 - 1, 1, 5], "keep": [True, True, True]},
        schema={"k0": pl.String, "v0": pl.Int64, "keep": pl.Boolean},
    )
    t = Tally(["isum"])
    t.build(data[:2], 1)
    assert list(t.values()) == [("a", -(2**63))]
    t.update(data[1:2], data[2:3], 1)
    assert list(t.values()) == [("a", -(2**63) + 4)]
