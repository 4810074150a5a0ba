"""Expensive expressions against a real server, while a healthy client works (issue 10).

Replays with the harness of tests/hostile.py, on the server's default limits
(``expr_max_literal`` 100,000, ``expr_memory_bytes`` 1 GiB, ``expr_timeout``
30 s): the attacker gets ``too_expensive`` for each expression, the healthy
client's p99 stays under 250 ms, the server's RSS grows by at most 500 MB
and comes back, and the ``sales`` room is unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from client import OpRejected, Room, connect
from tests.hostile import HostileServer, hostile_server, under_attack

pytestmark = pytest.mark.timeout(300)

Attempt = Callable[[Room], Awaitable[object]]

# Before: 1,000 rows grew the server to 24 GB. Now refused before any evaluation.
LPAD = [lambda room: room.add_column("padded", expr="lpad(product, 1000000000, 'x')")]
# Within every literal limit, but gigabytes once evaluated on the 20,000 rows of
# ``sales``: killed in the expression worker by its memory limit.
AT_RUN_TIME = [
    lambda room: room.add_column("padded", expr="lpad(region, 100000, 'x')"),  # 2 GB
    lambda room: room.add_column("all", expr="string_agg(product, ',')"),  # 160 KB x 20,000 rows
    lambda room: room.delete_rows(where="length(concat(lpad(region, 100000, 'x'), product)) > 3"),
]


async def _attack(server: HostileServer, attempts: list[Attempt], codes: list[str]) -> None:
    async with connect(server.url, "sales") as room:
        for attempt in attempts:
            with pytest.raises(OpRejected) as info:
                await attempt(room)
            codes.append(info.value.code)
        await room.add_column("total", expr="price * qty")  # the room still works...
        await room.drop_column("total")  # ...and is left as it was


@pytest.mark.parametrize(
    ("name", "attempts"), [("lpad literal", LPAD), ("expensive at run time", AT_RUN_TIME)]
)
async def test_expensive_expressions_are_refused_and_hurt_no_one(
    tmp_path: Path, name: str, attempts: list[Attempt]
) -> None:
    async with hostile_server(tmp_path) as server:
        codes: list[str] = []
        report = await under_attack(server, name, lambda: _attack(server, attempts, codes), room="sales")
        assert codes == ["too_expensive"] * len(attempts)
        report.check()
