"""kill -9 loses no acked op, on the persistent catalog backends (issue 3, "WAL").

A client pipelines 10k op batches into a server subprocess and records every
ack. The server is killed with SIGKILL mid-stream, restarted on the same data
directory (and catalog), and then:

- every acked batch is present (its seq is within the recovered seq, and its
  marker cell holds its value);
- the recovered frame equals a from-scratch replay of the first ``seq``
  batches on the initial frame, with the pure ops.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl
import pytest

from protocol import Insert, OpBatch, SetCells, decode_server, encode
from server.ops import apply, normalize_frame
from server.ops.state import State
from tests.conftest import Backend, persistent_only, timeout
from tests.procs import start_server
from tests.wire import RawPeer

TOTAL = 10_000
KILL_AFTER = 4_000
WINDOW = 64
ROWS = 500


def initial_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {"k": list(range(ROWS)), "v": pl.Series([0] * ROWS, dtype=pl.Int64), "note": ["x"] * ROWS}
    )


def batch(i: int) -> OpBatch:
    """Batch i: mostly a set of a marker cell to i; every 50th also inserts a row."""
    ops: tuple = (SetCells((i % ROWS,), "v", (i,)),)  # type: ignore[type-arg]
    if i % 50 == 0:
        import pyarrow as pa

        ops += (Insert(pa.table({"k": [ROWS + i], "v": [i], "note": [f"row {i}"]})),)
    return OpBatch(i, 0, ops, id=i)


@pytest.fixture
def catalog_args(backend: Backend) -> list[str]:
    return [] if backend.url is None else ["--catalog", backend.url]


async def push_until_killed(url: str, kill: asyncio.Event) -> dict[int, int]:
    """Pipeline batches 1..TOTAL; return {client_seq: seq} of every ack received."""
    peer = await RawPeer.open(url, "t")
    await peer.hello("pusher")
    acks: dict[int, int] = {}
    sent = 0
    try:
        while sent < TOTAL:
            while sent < TOTAL and sent - len(acks) < WINDOW:
                sent += 1
                await peer.ws.send(encode(batch(sent), binary=True))
            msg = decode_server(await peer.ws.recv())
            if msg.type == "ack":
                acks[msg.client_seq] = msg.seq
                if len(acks) == KILL_AFTER:
                    kill.set()
            elif msg.type == "error":
                raise AssertionError(f"unexpected error: {msg.code}: {msg.message}")
    except Exception as e:  # the connection dies with the server
        if not kill.is_set():
            raise
        assert "ConnectionClosed" in type(e).__name__ or isinstance(e, (OSError, EOFError)), e
    return acks


@persistent_only  # in memory there is nothing to recover after a restart, by design
async def test_kill9_loses_no_acked_op(tmp_path: Path, catalog_args: list[str]) -> None:
    src = tmp_path / "t.parquet"
    initial_frame().write_parquet(src)
    data = tmp_path / "data"
    args = ["--no-demo", "--dataset", f"t={src}", "--autocommit-ops", "3000", *catalog_args]
    srv = await start_server(*args, data_dir=data)
    kill = asyncio.Event()
    pusher = asyncio.create_task(push_until_killed(srv.url, kill))
    try:
        await asyncio.wait_for(kill.wait(), timeout(120))
        srv.kill9()
        assert await srv.wait() == -9
        acks = await asyncio.wait_for(pusher, timeout(30))
    finally:
        await srv.stop()
    assert len(acks) >= KILL_AFTER
    assert sorted(acks.values()) == sorted(acks)  # one client in order: seq == client_seq

    srv = await start_server(*args, data_dir=data)
    try:
        peer = await RawPeer.open(srv.url, "t")
        welcome = await peer.hello("checker")
        recovered = pl.from_arrow(welcome.snapshot)
        assert isinstance(recovered, pl.DataFrame)
        applied = welcome.seq
        assert applied >= max(acks.values()), "an acked batch is missing after kill -9"
        # Every acked batch is there: its marker cell holds it, unless a later
        # applied batch overwrote that same cell.
        v = dict(zip(recovered["_rid"].to_list(), recovered["v"].to_list(), strict=True))
        for i in acks:
            last_writer = max(j for j in range(i, applied + 1) if j % ROWS == i % ROWS)
            assert v[i % ROWS] == last_writer
            if i % 50 == 0:
                assert recovered.filter(pl.col("k") == ROWS + i).height == 1
        # From-scratch replay of the first `applied` batches equals the recovery.
        df, catalog = normalize_frame(initial_frame())
        state = State(df, catalog, df.height)
        for i in range(1, applied + 1):
            for op in batch(i).ops:
                state = apply(state, op).state
        assert recovered.equals(state.frame), "recovered frame differs from a from-scratch replay"
        await peer.close()
        print(f"acked {len(acks)}, recovered seq {applied}, log tail: {srv.log[-3:]}")
    finally:
        await srv.stop()
