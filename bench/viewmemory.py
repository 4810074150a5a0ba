"""Benchmark 6 of the views group: the memory of a room with live views, server and views process.

Perspective runs in the server's views process (``server/perspective/worker.py``),
so the server's RSS alone leaves out the tables and views. Every reading here
is the RSS of both (psutil: the server pid, and its child whose command line
runs ``server.perspective.worker``), reported apart and summed.

The data directory is prepared by one earlier start (which commits the demo
and a 10-row dataset ``tiny``), so a restarted server holds no dataset until a
room loads. Readings, in order: after start; after the views process started
(a Python client of ``tiny`` subscribed one view: the process's start-up,
which no room of any size avoids); after a raw peer resumed into ``sales``
(the room is loaded, no snapshot encoded); after a Python client joined
(``connect()``: full snapshot, cached per room state); after each of 10
``subscribe_view`` calls using 7 distinct demo columns in all (all 10 are
served from the room's frame, so no Perspective table is built; a table
would hold only the columns its views use); then, beside the target, after a
grouped ``max`` view, which only Perspective serves: it builds the room's
table in the views process. The room's memory is the total minus
the reading with the views process started, as a ratio to the room frame's
Arrow size (``frame_to_arrow`` of the normalized demo frame, computed here).

Each reading starts after a fixed number of round trips (``/healthz`` or
``ping``); RSS is then read between further round trips (every
``settle_every`` s) until the total moved by at most ``settle_mb`` over
``settle_window`` s (bounded by ``settle_max``): transient buffers of the
join (about 130 MB at 1M rows) are handed back to the OS a few seconds later.
The reading is the median of the last 3 reads; the first read is kept too.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack

from .common import HOST, Stats, connect_peer
from .storage import StorageServer
from .viewload import DATASET
from .views import ViewsBench, tempdir

__all__ = [
    "memory",
    "TINY",
    "MEMORY_VIEWS",
    "MEMORY_COLUMNS",
    "STEP_START",
    "STEP_VIEWS_UP",
    "STEP_ROOM",
    "STEP_CLIENT",
    "view_step",
    "PERSPECTIVE_VIEW",
    "STEP_PERSPECTIVE",
]

TINY = "tiny"  # the 10-row dataset whose view starts the views process


def _plain(label: str, columns: list[str], **kw: Any) -> tuple[str, dict[str, Any]]:
    return label, {"columns": columns, **kw, "viewport": (0, 100)}


def _grouped(label: str, by: list[str], col: str, agg: str, **kw: Any) -> tuple[str, dict[str, Any]]:
    return label, {"group_by": by, "columns": [col], "aggregates": {col: agg}, **kw}


#: The 10 views of the memory benchmark: (label, ``subscribe_view`` keyword arguments). Each names its
#: columns, so the room's table holds only the 7 they use together (:data:`MEMORY_COLUMNS`).
MEMORY_VIEWS: tuple[tuple[str, dict[str, Any]], ...] = (
    _grouped("grouped: sum of price by region", ["region"], "price", "sum"),
    _grouped("grouped: sum of price by product", ["product"], "price", "sum"),
    _grouped("grouped: count of order_id by region", ["region"], "order_id", "count"),
    _grouped("grouped: sum of qty by region × product", ["region", "product"], "qty", "sum"),
    _grouped("split: sum of price by region, split by paid", ["region"], "price", "sum", split_by=["paid"]),
    _plain(
        "plain: order_id, qty, price where qty > 40", ["order_id", "qty", "price"], filter=[["qty", ">", 40]]
    ),
    _plain(
        "plain: order_id, region, price where region = EU",
        ["order_id", "region", "price"],
        filter=[["region", "==", "EU"]],
    ),
    _plain(
        "plain: order_id, product, price sorted by price desc",
        ["order_id", "product", "price"],
        sort=[["price", "desc"]],
    ),
    _plain(
        "plain: order_id, updated_at sorted by updated_at desc",
        ["order_id", "updated_at"],
        sort=[["updated_at", "desc"]],
    ),
    _plain(
        "plain: order_id, paid, price where paid = false, sorted by price desc",
        ["order_id", "paid", "price"],
        filter=[["paid", "==", False]],
        sort=[["price", "desc"]],
    ),
)


def _columns_used(config: dict[str, Any]) -> set[str]:
    used = set(config.get("columns", ())) | set(config.get("group_by", ())) | set(config.get("split_by", ()))
    used |= {c[0] for c in config.get("filter", ())} | {c[0] for c in config.get("sort", ())}
    return used


#: The demo columns the memory benchmark's views use, together.
MEMORY_COLUMNS: tuple[str, ...] = tuple(sorted(set().union(*(_columns_used(kw) for _, kw in MEMORY_VIEWS))))


STEP_START = "after start (room not loaded, no views process)"
STEP_VIEWS_UP = "views process started (a view of a 10-row room)"
STEP_ROOM = "room loaded by a resuming raw peer (no snapshot encoded)"
STEP_CLIENT = "room with no views: a Python client joined (`connect()`, full snapshot cached)"


def view_step(i: int) -> str:
    return f"room + {i} view{'s' if i > 1 else ''}"


#: Reported beside the target: a view only Perspective serves (``high``, its own name for a max),
#: which builds the room's table (the columns it uses) in the views process, after the 10 views.
PERSPECTIVE_VIEW = _grouped(
    "beside: grouped `high` (Perspective's max) of price by region (builds the room's table)",
    ["region"],
    "price",
    "high",
)
STEP_PERSPECTIVE = "room + 10 views + a Perspective view (beside)"


def _write_tiny(path: Path) -> Path:
    import polars as pl

    pl.DataFrame({"k": list(range(10)), "x": [float(i) for i in range(10)]}).write_csv(path)
    return path


async def memory(bench: ViewsBench) -> None:
    """Benchmark 6: RSS (server + views process) after start, the views process, the room, 10 views."""
    from server.demo import demo_sales
    from server.ops.dtypes import normalize_frame
    from server.rooms.deltas import frame_to_arrow

    cfg, r = bench.cfg, bench.result.memory
    r.rows = cfg.mem_rows
    df = demo_sales(cfg.mem_rows)
    r.arrow_bytes_raw = int(df.to_arrow().nbytes)
    arrow = frame_to_arrow(normalize_frame(df)[0])
    r.arrow_bytes = int(arrow.nbytes)
    r.arrow_bytes_used = int(
        arrow.select([c for c in arrow.column_names if c in {*MEMORY_COLUMNS, "_rid"}]).nbytes
    )
    del df, arrow
    with tempdir("mem") as data, tempdir("mem-csv") as files:
        extra = ["--data-dir", str(data), "--dataset", f"{TINY}={_write_tiny(files / 'tiny.csv')}"]
        prep = StorageServer("coframe-mem-prep", cfg.mem_rows, extra)
        bench.servers.append(prep)
        prep.start()
        bench.retire(prep)  # the first start committed the datasets; later starts only open them
        for run in range(cfg.mem_runs):
            srv = StorageServer(f"coframe-mem-{run}", cfg.mem_rows, extra)
            bench.servers.append(srv)
            srv.start()
            try:
                await _memory_run(bench, srv)
            finally:
                bench.retire(srv)
            last = {k: (v.runs[-1] / 1e6, r.views[k].runs[-1] / 1e6) for k, v in r.server.items() if v.runs}
            bench.log(
                f"  memory run {run + 1}/{cfg.mem_runs}: RSS MB server + views process: "
                + ", ".join(
                    f"{k.split(' (')[0].split(':')[0]} {s:,.0f} + {v:,.0f}" for k, (s, v) in last.items()
                )
            )


async def _memory_run(bench: ViewsBench, srv: StorageServer) -> None:
    from client.room import Room

    cfg, r = bench.cfg, bench.result.memory

    async def healthz() -> None:
        def get() -> None:
            with urllib.request.urlopen(f"http://{HOST}:{srv.port}/healthz", timeout=30) as resp:
                resp.read()

        await asyncio.to_thread(get)

    def read() -> tuple[int, int]:
        return srv.rss_bytes(), srv.views_rss_bytes()

    async def rss(label: str, settle: Callable[[], Awaitable[Any]]) -> None:
        for _ in range(cfg.settle):
            await settle()
        t0 = time.monotonic()
        reads = [(t0, *read())]
        while True:
            await settle()
            # Pacing of the round trips while the allocator hands freed pages back (not a sync wait).
            await asyncio.sleep(cfg.settle_every)
            now = time.monotonic()
            reads.append((now, *read()))
            recent = [s + v for t, s, v in reads if t >= now - cfg.settle_window]
            stable = (
                reads[0][0] <= now - cfg.settle_window and max(recent) - min(recent) <= cfg.settle_mb * 1e6
            )
            if stable or now - t0 >= cfg.settle_max:
                break
        last3 = sorted(reads[-3:], key=lambda x: x[1] + x[2])
        _, server, views = last3[len(last3) // 2]  # the read with the median total
        r.step(label).add(server + views)
        r.server.setdefault(label, Stats()).add(server)
        r.views.setdefault(label, Stats()).add(views)
        r.first.setdefault(label, Stats()).add(reads[0][1] + reads[0][2])
        r.settle_s.setdefault(label, Stats()).add(reads[-1][0] - t0)

    await rss(STEP_START, healthz)
    tiny = Room(srv.url, TINY, open_timeout=60, reconnect=False)
    welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_message(data: bytes | bytearray | memoryview) -> None:
        if not welcome.done():
            welcome.set_result(msgpack.unpackb(data, raw=False))

    peer = None
    room = Room(srv.url, DATASET, open_timeout=300, reconnect=False)
    try:
        await tiny.open()
        # Starts the views process: an expression is only ever served by Perspective.
        await tiny.subscribe_view(columns=["y"], expressions={"y": '"x" + 1'}, viewport=(0, 10))
        await rss(STEP_VIEWS_UP, tiny.ping)
        peer = await connect_peer(f"{srv.url}/ws/{DATASET}", on_message, limit=300)
        peer.send(
            msgpack.packb({"type": "hello", "id": 0, "client": "bench-mem-peer", "version": 1, "since": 0})
        )
        async with asyncio.timeout(300):
            w = await welcome
        if w.get("type") != "welcome":
            raise RuntimeError(f"raw peer: expected a welcome, got {w.get('type')}: {w.get('message')}")
        await rss(STEP_ROOM, tiny.ping)
        await room.open()
        if room.frame.height != cfg.mem_rows:
            raise RuntimeError(f"client mirror has {room.frame.height} rows, not {cfg.mem_rows}")
        await rss(STEP_CLIENT, room.ping)
        for i, (label, kw) in enumerate(MEMORY_VIEWS, 1):
            t = time.perf_counter()
            view = await room.subscribe_view(**kw)
            r.view_open_s.setdefault(label, Stats()).add(time.perf_counter() - t)
            r.view_rows[label] = view.rows
            await rss(view_step(i), room.ping)
        label, kw = PERSPECTIVE_VIEW
        t = time.perf_counter()
        view = await room.subscribe_view(**kw)
        r.view_open_s.setdefault(label, Stats()).add(time.perf_counter() - t)
        r.view_rows[label] = view.rows
        await rss(STEP_PERSPECTIVE, room.ping)
    finally:
        await room.close()
        await tiny.close()
        if peer is not None:
            peer.close()
