"""Perspective in a process of its own (issue 11 §1): budgets, restarts, and rooms that never wait.

Servers run in-process on port 0 (tests/conftest.py ``make_server``) with a
short views budget, so a runaway view is over it within a second. Waits are
on messages and events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from typing import Any

import polars as pl
import pytest

from client import OpRejected, connect
from server.settings import Settings
from tests.conftest import small_frame, timeout

# About 0.1 s per row when "qty" is 9 (ExprTK stops a loop at 10M iterations,
# so the cost comes from the row count): an update of 20 rows is ~2 s of work.
LOOP = 'var s := 0; for (var i := 0; i < "qty" * 100000; i += 1) { s += 1 }; s'
BUDGET = 0.5


def _frame(rows: int = 20) -> pl.DataFrame:
    return small_frame(rows).with_columns(pl.lit(0, dtype=pl.Int64).alias("qty"))


async def _ack_times(room: Any, until: asyncio.Event | None, count: int) -> list[float]:
    """Seconds per ``set_cells`` ack: ``count`` of them, or as many as fit before ``until`` is set."""
    out: list[float] = []
    i = 0
    while (until is None and len(out) < count) or (until is not None and not until.is_set()):
        t0 = time.perf_counter()
        await room.set_cells([i % 20], "price", [float(i)])
        out.append(time.perf_counter() - t0)
        i += 1
    return out


async def test_a_runaway_view_is_closed_within_its_budget_and_other_rooms_keep_acking(
    make_server: Any,
) -> None:
    settings = Settings(demo=False, views_timeout=BUDGET)
    async with make_server(settings=settings, frames={"a": _frame(), "b": small_frame()}) as srv:
        async with connect(srv.url, "a") as a, connect(srv.url, "b") as b:
            # A median: served by Perspective (the frame's engine serves count, sum, mean, max and min).
            plain = await a.subscribe_view(
                group_by=["name"], columns=["qty", "price"], aggregates={"qty": "sum", "price": "median"}
            )
            fast = await a.subscribe_view(columns=["name", "qty"])  # served from the frame, not Perspective
            runaway = await a.subscribe_view(expressions={"r": LOOP}, columns=["r"])
            assert runaway.frame["r"].to_list()[:3] == [0.0, 0.0, 0.0]  # cheap while qty is 0
            before = await _ack_times(b, None, 30)
            plain_updates = plain.updates()
            closed = asyncio.Event()

            async def watch() -> None:
                with pytest.raises(RuntimeError):
                    await runaway.wait_for(lambda f: False)
                closed.set()

            watcher = asyncio.ensure_future(watch())
            started = time.perf_counter()
            await a.set_cells(list(range(20)), "qty", [9] * 20)  # every row now loops 900k times
            during = await asyncio.wait_for(_ack_times(b, closed, 0), timeout(30))
            took = time.perf_counter() - started
            await watcher
            assert "views_timeout" in (runaway.reason or "") and "closed" in (runaway.reason or "")
            assert took < BUDGET + timeout(5)
            # The other room went on acking while the views process was busy, at its usual pace.
            assert len(during) >= 3, during
            assert statistics.median(during) <= 3 * statistics.median(before) + 0.05, (before, during)
            # The plain view of the same room came back with a fresh snapshot of the new state.
            async for ev in plain_updates:
                if ev.kind == "snapshot" and ev.frame["qty"].to_list() == [9] * 20:
                    break
            assert srv.registry.views.process.restarts == 1
            # The fast view never depended on the views process: it just followed the edit.
            await fast.wait_for(lambda f: f["qty"].to_list() == [9] * 20)
            assert not fast.closed


async def test_a_view_that_overruns_when_opened_is_refused_with_the_reason(make_server: Any) -> None:
    settings = Settings(demo=False, views_timeout=BUDGET)
    frame = _frame().with_columns(pl.lit(9, dtype=pl.Int64).alias("qty"))
    async with make_server(settings=settings, frames={"a": frame}) as srv, connect(srv.url, "a") as a:
        with pytest.raises(OpRejected) as e:
            await a.subscribe_view(expressions={"r": LOOP}, columns=["r"])
        assert e.value.code == "too_expensive" and "views_timeout" in e.value.message
        ok = await a.subscribe_view(columns=["qty"])  # the next view gets a fresh process
        assert ok.frame["qty"].to_list()[:2] == [9, 9]
        assert srv.registry.views.process.restarts == 1


async def test_killing_the_views_process_brings_views_back_with_fresh_snapshots(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(50)}) as srv, connect(srv.url, "sales") as room:
        grouped = await room.subscribe_view(  # a median: served by Perspective
            group_by=["region"], columns=["qty", "price"], aggregates={"qty": "sum", "price": "median"}
        )
        plain = await room.subscribe_view(columns=["qty"], sort=[["qty", "desc"]])
        stream = grouped.updates()
        process = srv.registry.views.process
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        async for ev in stream:  # the rebuilt table's first snapshot
            if ev.kind == "snapshot":
                break
        assert process.pid not in (None, first) and process.restarts == 1
        assert not grouped.closed and not plain.closed
        ack = await room.set_cells([0], "qty", [1000])  # and they follow edits again
        frame = await plain.wait_for(lambda f: plain.seq >= ack.seq)
        assert frame["qty"][0] == 1000
        await grouped.wait_for(lambda f: 1000 in f["qty"].to_list() or f["qty"].sum() >= 1000)


async def test_a_view_over_the_memory_budget_is_refused_and_the_others_go_on(make_server: Any) -> None:
    settings = Settings(demo=False, views_memory_bytes=256 * 1024 * 1024)
    async with make_server(settings=settings, frames={"a": _frame()}) as srv, connect(srv.url, "a") as a:
        plain = await a.subscribe_view(columns=["name", "qty"])
        with pytest.raises(OpRejected) as e:  # 400 MB per row, in a process that may grow by 256 MB
            await a.subscribe_view(expressions={"v": "var v[50000000] := {1}; v[0]"}, columns=["v"])
        assert e.value.code == "too_expensive" and "views_memory_bytes" in e.value.message
        assert srv.registry.views.process.restarts == 0  # the allocation failed; the process lives on
        ack = await a.set_cells([3], "qty", [7])
        frame = await plain.wait_for(lambda f: plain.seq >= ack.seq)
        assert frame["qty"][3] == 7 and not plain.closed
