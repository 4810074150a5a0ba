"""The raw ``websockets`` baseline server ("the broadcast floor").

Run as ``python -m bench.baseline_server --port P``; it listens on 127.0.0.1
only. It does the least work a relay can do for the same traffic as coframe,
with the same envelope format (msgpack maps):

* ``/ws/fanout`` — every connection is a subscriber. A message from a
  connection is an "op" ``{"type": "op", "client_seq": n, "pad_to": T}``:
  the server decodes it, encodes **one** ``delta``-shaped map of exactly ``T``
  bytes (``seq_from = seq_to = n``), sends it to every subscriber with
  ``websockets.broadcast`` (the writer included, as coframe does) and replies
  an ``ack`` to the writer. ``T`` is the byte size of coframe's delta, which
  the load generator measures in the same run.
* ``/ws/echo`` — every message is decoded and answered by an ``ack`` to its
  sender only (the transport's message-rate floor for pipelined ops).
* ``GET /healthz`` — 200, for start-up polling.

The event loop is asyncio's default, as coframe's uvicorn uses (no uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http
import signal
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["main", "padded_delta"]


def padded_delta(seq: int, by: str, size: int) -> bytes:
    """A msgpack ``delta`` map of exactly ``size`` bytes (or its minimum size)."""
    pad = 0
    out = b""
    for _ in range(4):  # the bin header grows 2 → 3 → 5 bytes; converges in ≤ 3 steps
        out = msgpack.packb(
            {"type": "delta", "seq_from": seq, "seq_to": seq, "by": [by], "upserts": b"\0" * pad},
            use_bin_type=True,
        )
        if len(out) == size or len(out) > size and pad == 0:
            return out
        pad = max(0, pad + size - len(out))
    return out


def _ack(d: dict[str, Any]) -> bytes:
    seq = d.get("client_seq", 0)
    return msgpack.packb(
        {
            "type": "ack",
            "re": d.get("id"),
            "seq": seq,
            "client_seq": seq,
            "rids": [],
            "overwritten": [],
            "duplicate": False,
        },
        use_bin_type=True,
    )


async def _fanout(ws: ServerConnection, subscribers: set[ServerConnection]) -> None:
    subscribers.add(ws)
    try:
        async for data in ws:
            d = msgpack.unpackb(data, raw=False)
            if d.get("type") != "op":
                continue
            seq = int(d["client_seq"])
            broadcast(subscribers, padded_delta(seq, str(d.get("client", "w")), int(d.get("pad_to", 0))))
            await ws.send(_ack(d))
    finally:
        subscribers.discard(ws)


async def _echo(ws: ServerConnection) -> None:
    async for data in ws:
        d = msgpack.unpackb(data, raw=False)
        await ws.send(_ack(d))


async def _handler(ws: ServerConnection, subscribers: set[ServerConnection]) -> None:
    path = ws.request.path if ws.request is not None else ""
    try:
        if path.startswith("/ws/fanout"):
            await _fanout(ws, subscribers)
        elif path.startswith("/ws/echo"):
            await _echo(ws)
        else:
            await ws.close(4404, "unknown path")
    except ConnectionClosed:
        pass  # the benchmark's peers abort their connections when done


def _process_request(ws: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        body = b'{"status":"ok"}'
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(http.HTTPStatus.OK, "OK", headers, body)
    return None


async def _serve(port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    subscribers: set[ServerConnection] = set()  # the fan-out connections of this server
    async with serve(
        functools.partial(_handler, subscribers=subscribers),
        "127.0.0.1",
        port,
        compression=None,
        max_size=None,
        max_queue=None,
        process_request=_process_request,
    ):
        await stop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="raw websockets baseline for coframe benchmarks")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
