"""Heavy ops run off the event loop, so other rooms stay live meanwhile."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import server.rooms.tick as room_module
from client import connect
from protocol import AddColumn, CastColumn, Delete, FillNull, Insert, SetCells
from server.rooms.core import is_heavy
from tests.conftest import small_frame, timeout


def test_heavy_classification() -> None:
    import pyarrow as pa

    assert is_heavy((CastColumn("qty", "Float64"),))
    assert is_heavy((FillNull("qty", strategy="mean"),))
    assert is_heavy((AddColumn("t", None, None, "price * qty"),))
    assert is_heavy((Delete(None, "qty > 1"),))
    assert is_heavy((Insert(pa.table({"qty": list(range(10_001))})),))
    assert not is_heavy((Insert(pa.table({"qty": [1]})),))
    assert not is_heavy((SetCells((0,), "qty", (1,)),))
    assert not is_heavy((AddColumn("d", "Int64", 0),))


async def test_a_blocked_heavy_op_does_not_block_other_rooms(
    make_server, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    release = threading.Event()
    entered = threading.Event()
    real = room_module.run_general

    def gated(*args: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            entered.set()
            # Blocks only the worker thread; if this ran on the loop, the
            # other room below could never ack and the test would time out.
            assert release.wait(timeout(30))
        return real(*args)

    monkeypatch.setattr(room_module, "run_general", gated)
    async with make_server(frames={"a": small_frame(), "b": small_frame()}) as srv:
        async with connect(srv.url, "a") as a, connect(srv.url, "b") as b:
            heavy = asyncio.create_task(a.cast_column("qty", "Float64"))
            await asyncio.to_thread(entered.wait, timeout(10))
            assert entered.is_set() and not heavy.done()
            ack = await asyncio.wait_for(b.set_cells([0], "qty", 5), timeout(10))
            assert ack.seq == 1
            release.set()
            await asyncio.wait_for(heavy, timeout(10))
            await a.sync()
            assert str(a.frame.schema["qty"]) == "Float64"
