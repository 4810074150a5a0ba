"""What :class:`~.live.RoomViews` runs in its worker thread (the Perspective executor).

Perspective releases the GIL, and at 1M rows its work is slow: a build
takes about 4 s, opening a sorted view 1-4 s, and an update of a table with
a sorted view over every row 240-380 ms. So ``RoomViews`` runs every
Perspective call in a worker thread, one at a time per room, and the
functions here are those jobs: (re)build or drop a room's table, apply a
batch of deltas and read the subscribed views, open and read one view, close
everything. A read that fails returns its exception instead of raising, so
one bad view is closed on the loop without failing the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from protocol import Delta, ErrorCode
from protocol.dtypes import parse_dtype

from ..ops.state import State
from .config import ViewConfigError, check_expressions, for_perspective
from .payload import read_view
from .subscription import Subscription
from .tables import RoomTables, RoomView, release_memory

__all__ = [
    "rebuild",
    "drop",
    "close_all",
    "read",
    "read_all",
    "apply_and_read",
    "open_and_read",
    "zones_of",
]


def rebuild(tables: RoomTables, name: str, state: State, closers: list[Callable[[], None]]) -> None:
    for close in closers:
        close()
    tables.rebuild(name, state)
    release_memory()


def drop(tables: RoomTables, name: str, closers: list[Callable[[], None]]) -> None:
    for close in closers:
        close()
    tables.close(name)


def close_all(tables: RoomTables, views: list[RoomView], closers: list[Callable[[], None]]) -> None:
    for close in closers:
        close()
    for view in views:
        view.delete()
    tables.close_all()
    release_memory()


def read(sub: Subscription, zones: dict[str, str]) -> tuple[pa.Table, int] | Exception:
    try:
        assert sub.view is not None
        return read_view(sub.view.handle, sub.config, sub.viewport, zones)
    except Exception as e:  # reported on the loop, which closes the view
        return e


def read_all(subs: list[Subscription], zones: dict[str, str]) -> list[tuple[pa.Table, int] | Exception]:
    return [read(sub, zones) for sub in subs]


def apply_and_read(
    tables: RoomTables, name: str, batch: list[Delta], subs: list[Subscription], zones: dict[str, str]
) -> list[tuple[pa.Table, int] | Exception]:
    """Apply the deltas (one poll for all), then read every subscribed view."""
    for delta in batch:
        tables.apply_delta(name, delta, poll=False)
    tables.poll()
    return read_all(subs, zones)


def open_and_read(
    tables: RoomTables, name: str, sub: Subscription, zones: dict[str, str]
) -> tuple[RoomView, tuple[pa.Table, int]]:
    check_expressions(sub.config)  # checked on subscribe; again here, after any rename rewrote it
    try:
        view = tables.view(name, **for_perspective(sub.config))
    except Exception as e:  # PyPerspectiveError, or a serde error for a bad value
        text = str(e).removeprefix("Abort(): ").strip()
        raise ViewConfigError(
            ErrorCode.BAD_VIEW, f"Perspective rejected the view config: {text}", field="config"
        ) from None
    try:
        return view, read_view(view.handle, sub.config, sub.viewport, zones)
    except BaseException:
        view.delete()
        raise


def zones_of(schema: Any) -> dict[str, str]:
    """Zoned timestamp columns of a wire schema: name -> zone (dtype ``Datetime[Europe/Paris]``)."""
    zones = {c["name"]: parse_dtype(c["dtype"])[1] for c in schema}
    return {name: tz for name, tz in zones.items() if tz is not None}
