"""The requests one room's views send the views process (:mod:`.host` answers them).

Each function builds one request, sends it through the :class:`~.process.ViewsProcess`
with its time budget and a tag naming what it is for (so that after a
request overran, :class:`~.live.RoomViews` knows which view to close), and
decodes the answer. Arrow work that is not tiny (a table's IPC for a build,
a delta's upserts) happens in a worker thread, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from protocol import Delta
from protocol.arrow import table_to_ipc
from protocol.dtypes import frame_to_arrow, parse_dtype

from ..ops.state import State
from ..rooms.outbound import Audience
from .audience import frame_for, stream_for
from .config import for_perspective
from .payload import DEFAULT_VIEWPORT_ROWS, is_grouped
from .process import ViewsProcess

__all__ = ["Budgets", "Tag", "build", "drop", "apply", "open_view", "read", "unref", "vkey_of", "zones_of"]


@dataclass(frozen=True, slots=True)
class Budgets:
    """Seconds a request may take in the views process (``views_timeout``, ``views_build_timeout``)."""

    view: float = 10.0
    build: float = 120.0


@dataclass(frozen=True, slots=True)
class Tag:
    """What a request was for: ``kind`` (``build``, ``apply``, ``open``, ``read``, ``session``), the
    room, and the subscriptions (or dashboard session) it read."""

    kind: str
    room: str
    subs: tuple[Any, ...] = ()


def vkey_of(config: dict[str, Any]) -> str:
    """The key that identical configs share (one Perspective view per key and table)."""
    return json.dumps(for_perspective(config), sort_keys=True, separators=(",", ":"))


def viewport_of(config: dict[str, Any], viewport: tuple[int, int] | None) -> list[int] | None:
    """The rows to read: a plain view without a viewport reads its first rows, a grouped one all."""
    if viewport is None:
        return None if is_grouped(config) else [0, DEFAULT_VIEWPORT_ROWS]
    return [viewport[0], viewport[1]]


def _frame_ipc(state: State, audience: Audience, columns: Iterable[str] | None) -> bytes:
    return table_to_ipc(frame_to_arrow(frame_for(state, audience, columns)))


async def build(
    proc: ViewsProcess,
    key: str,
    name: str,
    state: State,
    audience: Audience,
    columns: Iterable[str] | None,
    budgets: Budgets,
) -> None:
    """(Re)build table ``key`` (Perspective name ``name``): ``audience``'s rows of ``state`` and
    its visible ``columns`` (every visible one for None)."""
    ipc = await asyncio.to_thread(_frame_ipc, state, audience, columns)
    await proc.call(
        {"op": "build", "table": key, "name": name, "ipc": ipc}, budget=budgets.build, tag=Tag("build", name)
    )


async def drop(proc: ViewsProcess, key: str, budgets: Budgets) -> None:
    await proc.call({"op": "drop", "table": key}, budget=budgets.build, tag=None)


def _steps_wire(
    batch: list[Delta], state: State, audience: Audience, columns: Iterable[str] | None
) -> list[Any]:
    return [
        [removed, table_to_ipc(upserts) if upserts is not None else None]
        for removed, upserts in stream_for(batch, state, audience, columns)
    ]


def _decode(answer: list[Any]) -> list[tuple[pa.Table, int] | Exception]:
    out: list[tuple[pa.Table, int] | Exception] = []
    for item in answer:
        if isinstance(item, dict):
            out.append(RuntimeError(str(item.get("error"))))
        else:
            ipc, rows = item
            out.append((pa.ipc.open_stream(ipc).read_all(), int(rows)))
    return out


def _reads(subs: list[Any]) -> list[Any]:
    return [[s.vkey, viewport_of(s.config, s.viewport)] for s in subs]


async def apply(
    proc: ViewsProcess,
    key: str,
    name: str,
    batch: list[Delta],
    state: State,
    audience: Audience,
    columns: Iterable[str] | None,
    subs: list[Any],
    zones: dict[str, str],
    budgets: Budgets,
) -> list[tuple[pa.Table, int] | Exception]:
    """Apply ``batch`` (its stream for ``audience``, one poll), then read each of ``subs``' views.

    ``state`` is the room's state after the batch. Each read is a result or an exception.
    """
    deltas = await asyncio.to_thread(_steps_wire, batch, state, audience, columns)
    req = {"op": "apply", "table": key, "deltas": deltas, "reads": _reads(subs), "zones": zones}
    return _decode(await proc.call(req, budget=budgets.view, tag=Tag("apply", name, tuple(subs))))


async def read(
    proc: ViewsProcess, key: str, name: str, subs: list[Any], zones: dict[str, str], budgets: Budgets
) -> list[tuple[pa.Table, int] | Exception]:
    req = {"op": "read", "table": key, "reads": _reads(subs), "zones": zones}
    return _decode(await proc.call(req, budget=budgets.view, tag=Tag("read", name, tuple(subs))))


async def open_view(
    proc: ViewsProcess, key: str, name: str, sub: Any, zones: dict[str, str], budgets: Budgets
) -> tuple[pa.Table, int]:
    """Open (or share) ``sub``'s view and read it. Raises ViewsFailed ``bad_view`` for a rejected config."""
    req = {
        "op": "open",
        "table": key,
        "vkey": sub.vkey,
        "config": sub.config,
        "viewport": viewport_of(sub.config, sub.viewport),
        "zones": zones,
    }
    ipc, rows = await proc.call(req, budget=budgets.view, tag=Tag("open", name, (sub,)))
    return pa.ipc.open_stream(ipc).read_all(), int(rows)


async def unref(proc: ViewsProcess, key: str, vkey: str, budgets: Budgets) -> None:
    await proc.call({"op": "unref", "table": key, "vkey": vkey}, budget=budgets.view, tag=None)


def zones_of(schema: Any) -> dict[str, str]:
    """Zoned timestamp columns of a wire schema: name -> zone (dtype ``Datetime[Europe/Paris]``)."""
    zones = {c["name"]: parse_dtype(c["dtype"])[1] for c in schema}
    return {name: tz for name, tz in zones.items() if tz is not None}
