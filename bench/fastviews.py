"""Micro-benchmark: a sorted plain viewport from the fast engine against Perspective (issue 11).

Builds the demo frame (:func:`server.demo.demo_sales`, 1M rows by default)
and, for a 1-key sort (``price`` desc) and a 2-key sort (``region`` asc,
``price`` desc), each with a 100-row viewport, and two grouped views of
``mean`` (whole result), reports:

- *fast read*: :meth:`server.perspective.fast.FastPlan.read` over the frame,
  median of ``--reads`` (20);
- *Perspective update + read*: one 1-row ``set`` of ``price`` applied the way
  a room tick does (ops, :class:`DeltaBuilder`, ``RoomTables.apply_delta``
  with its one poll), then :func:`read_view` of the open view, median of
  ``--updates`` (5), with only that view open.

It then checks that both engines return the same payload. Not run by the
tests (about 40 s and 2 GB at 1M rows)::

    python -m bench.fastviews [--rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from protocol import SetCells
from server.demo import demo_sales
from server.ops import State, apply, normalize_frame
from server.perspective import RoomTables
from server.perspective.config import for_perspective
from server.perspective.fast import plan_fast
from server.perspective.payload import read_view
from server.rooms.deltas import DeltaBuilder

__all__ = ["main"]

ROOM = "bench/fast"
VIEWPORT = (0, 100)
CONFIGS: dict[str, dict[str, Any]] = {
    "1-key (price desc)": {"sort": [["price", "desc"]]},
    "2-key (region asc, price desc)": {"sort": [["region", "asc"], ["price", "desc"]]},
}
#: Grouped views send every row (no viewport).
GROUPED: dict[str, dict[str, Any]] = {
    "mean price by region": {"group_by": ["region"], "columns": ["price"], "aggregates": {"price": "mean"}},
    "mean+count by region,product": {
        "group_by": ["region", "product"],
        "columns": ["price", "qty"],
        "aggregates": {"price": "mean", "qty": "count"},
    },
}


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:8.1f} ms"


def _set_price(tables: RoomTables, state: State, rid: int, price: float, seq: int) -> State:
    """One tick with a 1-cell edit, as a room applies it (ops, delta, one poll)."""
    builder = DeltaBuilder()
    applied = apply(state, SetCells((rid,), "price", (price,)))
    builder.add(applied.effect)
    tables.apply_delta(ROOM, builder.build(state, applied.state, seq, seq, ("bench",), None), applied.state)
    return applied.state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--updates", type=int, default=5)
    args = parser.parse_args()

    frame, catalog = normalize_frame(demo_sales(args.rows))
    state = State(frame, catalog, args.rows)
    schema = catalog.to_wire()
    tables = RoomTables()
    t0 = time.perf_counter()
    tables.open(ROOM, state)
    print(f"{args.rows:,} rows; Perspective table built in {time.perf_counter() - t0:.1f} s")
    print(f"{'view':32} {'fast read':>11} {'Perspective update+read':>24} {'view open':>10}  equal")
    seq = 0
    try:
        for name, config in {**CONFIGS, **GROUPED}.items():
            viewport = VIEWPORT if name in CONFIGS else None
            plan = plan_fast(config, viewport, schema)
            assert plan is not None, f"the engine does not serve {config}"
            fast = []
            for _ in range(args.reads):
                t = time.perf_counter()
                plan.read(state.frame)
                fast.append(time.perf_counter() - t)
            t = time.perf_counter()
            view = tables.view(ROOM, **for_perspective(config))
            opened = time.perf_counter() - t
            slow = []
            for i in range(args.updates):
                seq += 1
                t = time.perf_counter()
                state = _set_price(tables, state, rid=1000 * i + 7, price=10_000.0 + seq, seq=seq)
                want = read_view(view.handle, config, viewport, {})
                slow.append(time.perf_counter() - t)
            got = plan.read(state.frame)
            equal = got[1] == want[1] and got[0].equals(want[0])
            view.delete()
            print(f"{name:32} {_ms(fast):>11} {_ms(slow):>24} {opened * 1000:7.0f} ms  {equal}")
    finally:
        tables.close_all()


if __name__ == "__main__":
    main()
