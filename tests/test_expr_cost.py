"""The cost of expressions is bounded (issue 10): statically, then in a worker process.

``add_column(expr=...)`` and ``delete(where=...)`` used to run in the
server's own process: ``lpad(name, 1000000000, 'x')`` on 1,000 rows grew it
to 24 GB until the kernel killed it. Now a literal length over
``expr_max_literal`` is refused before anything is evaluated, and everything
else is evaluated in a worker process under ``expr_memory_bytes`` and
``expr_timeout``: over either, the worker is killed and the op gets
``too_expensive``, the room's state is unchanged and the room keeps working.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from client import OpRejected, connect
from protocol import AddColumn, Delete, ErrorCode
from server.ops import IN_PROCESS, TRUSTED, ExprCost, OpError, apply_all, compile_expr
from server.ops.exprcost import check_cost, evaluate_ipc, frame_to_ipc, series_from_ipc
from server.settings import Settings
from tests.conftest import small_frame

pytestmark = pytest.mark.timeout(120)

MB = 1024 * 1024
# Small limits keep the tests fast: a worker may grow by 300 MB and run 2 s.
SETTINGS = Settings(demo=False, expr_memory_bytes=300 * MB, expr_timeout=2.0)
LPAD_ATTACK = "lpad(name, 1000000000, 'x')"
# Tiny in memory, but the regex engine's fast paths give up on it: about 15 s
# of CPU for these 500 rows of 20,000 characters on the reference machine.
SLOW_WHERE = r"regexp_like(lpad(name, 20000, 'x'), '(\w\W?){30}z')"


def frames() -> dict[str, pl.DataFrame]:
    n = 20_000
    return {
        "sales": small_frame(),
        # ``huge`` is a length no one should pad to: lpad(name, huge, 'x') is only
        # expensive at run time, when the values are read.
        "wide": pl.DataFrame({"name": [f"row{i}" for i in range(n)], "huge": [10**9] * n}),
        "slow": pl.DataFrame({"name": [f"row{i}" for i in range(500)]}),
    }


def alive(pid: int) -> bool:
    """The process exists (a worker the pool killed has also been reaped)."""
    return Path(f"/proc/{pid}").exists()


def cost_of(text: str, cost: ExprCost) -> None:
    check_cost(compile_expr(text, ["name", "qty", "huge"]), cost)


# ---------------------------------------------------------------- static checks


@pytest.mark.parametrize(
    "text",
    [
        LPAD_ATTACK,
        "rpad(name, 100001, 'x')",
        "lpad(name, 1e9)",
        "lpad(name, '1000000', 'x')",
        "rpad(name, 2 * 50001, 'x')",
        "lpad(name, cast(1e9 as int), 'x')",
        "lpad(name, power(10, 9), 'x')",
        "upper(lpad(lpad(name, 5, 'x'), 200000, 'y'))",
        "lpad(name, 10000000000000000000000, 'x')",
    ],
)
def test_a_literal_length_over_the_limit_is_too_expensive(text: str) -> None:
    for cost in (IN_PROCESS, ExprCost(bounded=True)):
        with pytest.raises(OpError) as info:
            cost_of(text, cost)
        assert info.value.code == ErrorCode.TOO_EXPENSIVE
        assert "100,000" in info.value.message and "expr_max_literal" in info.value.message
        assert info.value.details["limit"] == 100_000


@pytest.mark.parametrize(
    "text",
    ["lpad(name, 100000, 'x')", "rpad(name, 5)", "lpad(name, 1e5)", "lpad(name, '12', '0')", "price * 2"],
)
def test_a_literal_length_within_the_limit_passes(text: str) -> None:
    check_cost(compile_expr(text, ["name", "price"]), IN_PROCESS)


def test_the_limit_is_the_setting() -> None:
    with pytest.raises(OpError) as info:
        cost_of("lpad(name, 11, 'x')", ExprCost(max_literal=10))
    assert info.value.code == ErrorCode.TOO_EXPENSIVE and "limit of 10 " in info.value.message
    cost_of("lpad(name, 10, 'x')", ExprCost(max_literal=10))


@pytest.mark.parametrize(
    "text", ["lpad(name, huge, 'x')", "rpad(name, qty * 1000, 'x')", "lpad(name, length(name))"]
)
def test_a_computed_length_needs_a_bounded_evaluator(text: str) -> None:
    with pytest.raises(OpError) as info:
        cost_of(text, IN_PROCESS)  # in process nothing bounds it
    assert info.value.code == ErrorCode.TOO_EXPENSIVE and "must be a number" in info.value.message
    cost_of(text, ExprCost(bounded=True))  # the worker's limits bound it
    cost_of(text, TRUSTED)  # a WAL replay checks nothing


def test_a_worker_answers_materialised_values() -> None:
    """A scalar is repeated on every row in the worker, and written out in full (no shared
    string views), so a cheap-looking aggregate costs its real size there, not in the room."""
    frame = pl.DataFrame({"name": [f"row{i:04d}" for i in range(1000)]})
    agg = len(",".join(frame["name"]))
    out = evaluate_ipc("string_agg(name, ',')", frame_to_ipc(frame))
    assert len(out) >= 1000 * agg
    values = series_from_ipc(out)
    assert values.len() == 1000 and values.n_unique() == 1 and len(values[0]) == agg


# ---------------------------------------------------------------- through a server


async def test_the_lpad_attack_is_refused_before_any_evaluation(make_server: Callable[..., Any]) -> None:
    async with make_server(settings=SETTINGS, frames=frames()) as srv, connect(srv.url, "sales") as room:
        before = srv.room("sales").core.state
        with pytest.raises(OpRejected) as info:
            await room.add_column("padded", expr=LPAD_ATTACK)
        assert info.value.code == ErrorCode.TOO_EXPENSIVE
        assert "expr_max_literal" in info.value.message
        assert srv.registry.exprs.started == 0  # refused statically: no worker was even started
        assert srv.room("sales").core.state is before
        ack = await room.add_column("total", expr="price * qty")
        assert ack.seq == 1


@pytest.mark.parametrize(
    "expr",
    [
        "lpad(name, huge, 'x')",  # a computed length: 1 GB for the first row already
        "string_agg(name, ',')",  # one 180 KB string, repeated on 20,000 rows: 3.6 GB
        "concat(" + ", ".join(["lpad(name, 100000, 'x')"] * 4) + ")",  # within the literal limit; 8 GB
    ],
)
async def test_a_memory_hungry_expression_is_killed_in_its_worker(
    make_server: Callable[..., Any], expr: str
) -> None:
    async with make_server(settings=SETTINGS, frames=frames()) as srv, connect(srv.url, "wide") as room:
        await room.add_column("twice", expr="huge * 2")  # starts a worker
        (first,) = srv.registry.exprs.pids()
        before = srv.room("wide").core.state
        with pytest.raises(OpRejected) as info:
            await room.add_column("padded", expr=expr)
        assert info.value.code == ErrorCode.TOO_EXPENSIVE
        assert "expr_memory_bytes" in info.value.message and "300 MiB" in info.value.message
        assert srv.room("wide").core.state is before  # nothing changed
        assert not alive(first)  # the worker was killed and reaped
        ack = await room.add_column("upper", expr="upper(name)")  # a new worker serves it
        assert ack.seq == 2
        (second,) = srv.registry.exprs.pids()
        assert second != first
        await room.sync()
        assert room.frame["upper"][3] == "ROW3" and "padded" not in room.frame.columns


async def test_a_slow_expression_is_stopped_at_the_timeout(make_server: Callable[..., Any]) -> None:
    async with make_server(settings=SETTINGS, frames=frames()) as srv, connect(srv.url, "slow") as room:
        before = srv.room("slow").core.state
        with pytest.raises(OpRejected) as info:
            await room.delete_rows(where=SLOW_WHERE)
        assert info.value.code == ErrorCode.TOO_EXPENSIVE
        assert "expr_timeout" in info.value.message and "2 s" in info.value.message
        assert srv.room("slow").core.state is before
        assert srv.registry.exprs.pids() == []  # killed
        ack = await room.delete_rows(where="name = 'row7'")
        assert ack.seq == 1
        await room.sync()
        assert room.frame.height == 499


async def test_expressions_give_the_same_results_as_in_process(make_server: Callable[..., Any]) -> None:
    ops = [
        AddColumn("total", None, None, "price * qty"),
        AddColumn("label", None, None, "upper(region) || '-' || cast(qty as varchar)"),
        AddColumn("padded", None, None, "lpad(name, 12, '0')"),
        AddColumn("rows", None, None, "count(*)"),  # an aggregate: the same value on every row
        AddColumn("flag", "Boolean", None, "price > 10"),
        AddColumn("nothing", "String", None, "null"),
        Delete(None, "qty > 2 OR price IS NULL"),
        Delete(None, "false"),
    ]
    async with make_server(settings=SETTINGS, frames=frames()) as srv, connect(srv.url, "sales") as room:
        start = srv.room("sales").core.state
        for op in ops:
            await room.apply([op])
        expected, _ = apply_all(start, ops)
        got = srv.room("sales").core.state
        assert got.catalog == expected.catalog
        assert got.frame.equals(expected.frame)
        assert got.frame.height == 10 and got.frame["rows"].unique().to_list() == [20]
        assert srv.registry.exprs.pids()  # they ran in a worker


async def test_the_workers_stop_with_the_registry(make_server: Callable[..., Any]) -> None:
    async with make_server(settings=SETTINGS, frames=frames()) as srv:
        async with connect(srv.url, "sales") as room:
            await room.add_column("total", expr="price * qty")
        pids = srv.registry.exprs.pids()
        assert len(pids) == 1 and alive(pids[0])
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(OpError) as info:  # a closed pool starts nothing
        srv.registry.exprs.evaluate(pl.DataFrame({"a": [1]}), "a + 1")
    assert info.value.code == ErrorCode.INTERNAL


def test_the_settings_reach_the_rooms() -> None:
    from server.app import room_config

    settings = dataclasses.replace(SETTINGS, expr_max_literal=7)
    config = room_config(settings)
    assert (config.expr_max_literal, config.expr_memory_bytes, config.expr_timeout) == (7, 300 * MB, 2.0)
