"""The views process: Perspective in a process of its own (docs/architecture.md "Live views").

The server starts one (:mod:`.process`) as a fresh interpreter (``python -I``,
not a fork), joined to it by a socket pair that carries only bytes: each
frame is a 4-byte big-endian length and a msgpack map. No object
serialization crosses it.

Requests come in one at a time, in order; each gets exactly one answer,
``{"id", "ok"}`` or ``{"id", "error": {"code", "message"}}``. Between
answers the process may send ``{"push": sid, "data"}``: a dashboard
session's reply from Perspective (during a request or a poll).

It runs at a lower CPU priority than the server (``nice`` +5), so a
runaway view competes with other views, not with acks. It limits its own
address space (``RLIMIT_AS``: its size after start-up plus the budget it is
given): an allocation over it fails, and Perspective answers ``bad_alloc``
(the view gets ``too_expensive``). The server kills the process when one
request runs over its time budget, and starts a new one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import sys
from typing import Any

import msgpack

from ..memory import limit_address_space

__all__ = ["main", "serve", "read_frame", "write_frame", "pack", "unpack", "MAX_FRAME"]

log = logging.getLogger("coframe.views.worker")

_LEN = struct.Struct(">I")
NICE = 5  # the views process's CPU priority below the server's (os.nice increment)
MAX_FRAME = (1 << 32) - 1  # a frame's length field is 32 bits


def pack(obj: Any) -> bytes:
    """One frame: length, then the msgpack map."""
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ValueError(f"views frame of {len(body)} bytes is over {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the server closed the views socket")
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket) -> Any:
    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    return unpack(_recv_exact(sock, size))


def write_frame(sock: socket.socket, obj: Any) -> None:
    sock.sendall(pack(obj))


def main(fd: int, memory_bytes: int) -> None:
    """The views process's entry point: serve the socket ``fd`` under ``memory_bytes``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops this process itself
    try:
        os.nice(NICE)  # views are best effort: on a busy machine the server's acks go first
    except OSError:
        pass
    logging.basicConfig(level=logging.WARNING, format="coframe views process: %(message)s")
    serve(socket.socket(fileno=fd), memory_bytes)


def serve(sock: socket.socket, memory_bytes: int) -> None:
    """Answer requests until the server hangs up."""
    from .host import Host, HostError  # Perspective is imported here, in this process only

    def push(sid: int, data: bytes) -> None:
        write_frame(sock, {"push": sid, "data": data})

    host = Host(push)
    _warm_up(host)
    if memory_bytes > 0:
        limit_address_space(memory_bytes)
    write_frame(sock, {"ready": True})
    while True:
        try:
            req = read_frame(sock)
        except (EOFError, OSError):
            break
        rid = req.get("id")
        try:
            ok = host.handle(req)
        except HostError as e:
            write_frame(sock, {"id": rid, "error": {"code": e.code, "message": e.message}})
        except MemoryError:
            write_frame(sock, {"id": rid, "error": {"code": "memory", "message": "out of memory"}})
            break  # a fresh process replaces this one
        except Exception as e:  # a bug or a Perspective failure: answered, the process goes on
            log.exception("views request %r failed", req.get("op"))
            error = {"code": "internal", "message": f"{type(e).__name__}: {e}"}
            write_frame(sock, {"id": rid, "error": error})
        else:
            write_frame(sock, {"id": rid, "ok": ok})
        del req
    host.close()


def _warm_up(host: Any) -> None:
    """Build, view and drop a small table before the limit, so Perspective's pools exist."""
    import pyarrow as pa

    from protocol.arrow import table_to_ipc

    n = 1000
    rids = pa.array(range(n), pa.uint64())
    data = pa.table({"_rid": rids, "x": pa.array([float(i % 7) for i in range(n)])})
    host.handle({"op": "build", "table": "_warm", "name": "_warm", "ipc": table_to_ipc(data)})
    config = {"group_by": ["x"]}
    host.handle(
        {"op": "open", "table": "_warm", "vkey": "v", "config": config, "viewport": None, "zones": {}},
    )
    host.handle({"op": "drop", "table": "_warm"})


if __name__ == "__main__":  # pragma: no cover - started by .process with python -I -c
    main(int(sys.argv[1]), int(sys.argv[2]))
