"""A Perspective view's content as coframe sends it (PROTOCOL.md "view").

``view.to_arrow()`` gives Perspective's own Arrow: dictionary strings,
``"region (Group by 1)"`` headers for group columns, ``_rid`` as float64
and timestamps as naive milliseconds. :func:`view_table` turns that into
the table a ``view`` message carries: plain strings, group columns under
their own names, ``_rid`` as uint64, and zoned timestamps back in their
zone (Perspective holds their UTC wall time, see :mod:`.types`).
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

from .types import RID

__all__ = ["DEFAULT_VIEWPORT_ROWS", "view_table", "is_grouped", "read_view"]

#: Rows a plain view sends when its subscriber gave no viewport.
DEFAULT_VIEWPORT_ROWS = 100

_GROUP_HEADER = re.compile(r"^(.*) \((?:Group|Split) by \d+\)$")


def is_grouped(config: dict[str, Any]) -> bool:
    """A grouped view (``group_by`` or ``split_by``) sends its whole result; a plain one its viewport."""
    return bool(config.get("group_by") or config.get("split_by"))


def view_table(ipc: bytes, zones: dict[str, str], *, split: bool = False) -> pa.Table:
    """Perspective's Arrow IPC ``ipc`` as a coframe table (see module doc).

    ``zones`` maps each zoned timestamp column to its time zone; ``split``:
    the view has ``split_by``, so a column ``<value>|<name>`` is column
    ``name``'s (its zone applies).
    """
    table = pa.ipc.open_stream(ipc).read_all()
    names: list[str] = []
    arrays: list[pa.ChunkedArray] = []
    plain = {n for n in table.column_names if _GROUP_HEADER.match(n) is None}
    for name, col in zip(table.column_names, table.columns, strict=True):
        m = _GROUP_HEADER.match(name)
        if m is not None and m.group(1) not in plain:  # grouped by a column it also aggregates: keep
            name = m.group(1)  # Perspective's "qty (Group by 1)", so names stay unique
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if name == RID and pa.types.is_floating(col.type):
            col = col.cast(pa.uint64())
        elif (zone := _zone(name, zones, split)) and pa.types.is_timestamp(col.type) and col.type.tz is None:
            # Naive UTC wall time -> the same instants, labelled with the column's zone.
            col = col.cast(pa.timestamp(col.type.unit, "UTC")).cast(pa.timestamp(col.type.unit, zone))
        names.append(name)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, names=names)


def _zone(name: str, zones: dict[str, str], split: bool) -> str | None:
    if name in zones:
        return zones[name]
    if split and "|" in name:
        return zones.get(name.rsplit("|", 1)[1])
    return None


def read_view(
    view: Any, config: dict[str, Any], viewport: tuple[int, int] | None, zones: dict[str, str]
) -> tuple[pa.Table, int]:
    """The payload of ``view`` (a ``perspective.View``): its table and total row count.

    A grouped view without a viewport sends every row; a plain view sends
    ``viewport``, or its first :data:`DEFAULT_VIEWPORT_ROWS` rows.
    """
    if viewport is None and not is_grouped(config):
        viewport = (0, DEFAULT_VIEWPORT_ROWS)
    if viewport is None:
        ipc = view.to_arrow()
    else:
        ipc = view.to_arrow(start_row=viewport[0], end_row=viewport[1])
    return view_table(ipc, zones, split=bool(config.get("split_by"))), view.num_rows()
