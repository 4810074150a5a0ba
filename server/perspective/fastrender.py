"""A grouped fast view's payload from its tally: groups in order, split columns, Perspective's types.

:class:`~.fastgroup.GroupedPlan` keeps one :class:`~.fasttally.Tally` whose
keys are the ``group_by`` values, then the ``split_by`` value when it has
one. :func:`render` turns it into what :func:`.payload.read_view` returns
for Perspective's view with the same config. What Perspective 5.5.1 does
with ``split_by`` (one column; measured on this machine, and checked by
tests/test_fast_views.py after random edits):

- One column per split value present in the rows the filters keep, named
  ``<value>|<column>`` for each aggregated column in ``columns`` order,
  split values in the plain ascending order, null first (named ``null``);
  values printed as ``true``/``false``, decimal integers, ISO dates, and
  strings as they are (cut at a NUL).
- A group row for each group with rows; a (group, split value) without
  rows has null in every one of its columns (a ``count`` too).

Not served (:class:`.fastbase.NotServable` at read time): two split
values printed alike (a string ``"null"`` beside a null), or more than
:data:`MAX_SPLIT_COLUMNS` split columns.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
import pyarrow as pa

from .fastbase import NotServable, view_arrow
from .fasttally import Tally

__all__ = ["MAX_SPLIT_CELLS", "MAX_SPLIT_COLUMNS", "OUT", "cells", "label", "render"]

#: Polars type of each aggregate kind's output column (a max or min has its column's).
OUT = {"count": pl.Int64, "mean": pl.Float64, "fsum": pl.Float64, "isum": pl.Int64}
#: A view with more split columns than this is served by Perspective.
MAX_SPLIT_COLUMNS = 2_000
#: ... or with more cells (group rows × split columns): the pivot is built in Python.
MAX_SPLIT_CELLS = 1_000_000


def cells(tally: Tally, n: int, naggs: int, split: bool) -> int:
    """How many cells :func:`render` would build from ``tally`` (``n`` group columns)."""
    if not split:
        return len(tally.groups) * max(naggs, 1)
    groups = {key[:n] for key in tally.groups}
    splits = {key[n] for key in tally.groups}
    return len(groups) * len(splits) * max(naggs, 1)


def _order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """Ascending, nulls first: Python orders the values a tally holds as Polars does (strings by
    code point, which is UTF-8's byte order)."""
    return tuple((k is not None, k) for k in key)


def label(value: Any) -> str:
    """A split value as Perspective prints it in a column name."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def render(
    tally: Tally,
    group_by: list[str],
    split: str | None,
    aggregates: list[tuple[str, str]],
    viewport: tuple[int, int] | None,
) -> tuple[pa.Table, int]:
    """The payload of a grouped view from ``tally``; ``aggregates`` as (column, tally kind).

    Raises:
        NotServable: split values print alike, or too many split columns.
    """
    n = len(group_by)
    key_types = list(tally.key_schema.values())
    schema: dict[str, Any] = dict(zip(group_by, key_types[:n], strict=True))
    if split is None:
        columns = [name for name, _ in aggregates]
        values = sorted(tally.values(), key=lambda v: _order(v[:n]))
    else:
        values, columns = _pivot(tally, n, split, aggregates)
    types = [OUT.get(kind) or tally.value_schema[i] for i, (_, kind) in enumerate(aggregates)]
    schema.update(dict(zip(columns, types * (len(columns) // len(types)) if types else [], strict=True)))
    out = pl.DataFrame(values, schema=schema, orient="row")
    rows = out.height
    if viewport is not None:
        start, end = viewport
        out = out.slice(start, max(end - start, 0))
    return view_arrow(out, [*group_by, *columns]), rows


def _pivot(
    tally: Tally, n: int, split: str, aggregates: list[tuple[str, str]]
) -> tuple[list[tuple[Any, ...]], list[str]]:
    rows: dict[tuple[Any, ...], dict[Any, tuple[Any, ...]]] = {}
    for v in tally.values():
        rows.setdefault(v[:n], {})[v[n]] = v[n + 1 :]
    splits = sorted({s for cells in rows.values() for s in cells}, key=lambda s: _order((s,)))
    labels = [label(s) for s in splits]
    if len(set(labels)) != len(labels):
        raise NotServable("two split values print alike: served by Perspective", column=split)
    if len(labels) * len(aggregates) > MAX_SPLIT_COLUMNS:
        raise NotServable(
            f"more than {MAX_SPLIT_COLUMNS:,} split columns: served by Perspective", column=split
        )
    if len(rows) * len(labels) * len(aggregates) > MAX_SPLIT_CELLS:
        raise NotServable(f"more than {MAX_SPLIT_CELLS:,} cells: served by Perspective", column=split)
    columns = [f"{lab}|{name}" for lab in labels for name, _ in aggregates]
    empty = (None,) * len(aggregates)
    out = []
    for key in sorted(rows, key=_order):
        cells = rows[key]
        out.append((*key, *(x for s in splits for x in cells.get(s, empty))))
    return out, columns
