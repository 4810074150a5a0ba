"""The synchronous delivery fast path of the WebSocket endpoint (docs/architecture.md "Delivery").

When uvicorn serves a socket with its websockets-sansio protocol, a session
whose queue is empty writes each frame synchronously onto the connection's
asyncio transport (:class:`DirectWriter`), as ``websockets.broadcast`` does,
with no task wake-up and no coroutine per reader; :func:`frame_of` builds
each payload's frame once for every reader.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State as WsState

__all__ = ["DirectWriter", "frame_of"]


# One frame per payload: deliver() hands the same bytes object to every
# reader in turn, so the frame built for the first is reused by the others.
_last_frame: tuple[object, bytes] = (None, b"")
_CACHE_MAX = 1 << 20  # payloads above this are framed per write (no big object kept alive)


def frame_of(data: bytes | str) -> bytes:
    """The unmasked server frame of ``data`` (binary for bytes, text for str), built once per payload."""
    global _last_frame
    last = _last_frame
    if last[0] is data:
        return last[1]
    if isinstance(data, str):
        frame = Frame(Opcode.TEXT, data.encode()).serialize(mask=False, extensions=[])
    else:
        frame = Frame(Opcode.BINARY, data).serialize(mask=False, extensions=[])
    if len(data) <= _CACHE_MAX:
        _last_frame = (data, frame)
    return frame


class DirectWriter:
    """Writes a data frame synchronously onto a uvicorn websockets-sansio connection's transport.

    This is what uvicorn's own ``send`` does once its ``writable`` event is
    set (``conn.send_binary`` then ``transport.write``), without the
    coroutines around it; the frame bytes are built once per payload
    (:func:`frame_of`), as uvicorn's ``ServerProtocol`` would build them (no
    mask; no extension, which :meth:`of` requires). A call returns False and
    writes nothing when the connection is not open or its transport has
    paused writing (the write buffer is over its high-water mark): the
    session then queues, and its writer task waits for the buffer to drain.
    """

    __slots__ = ("_proto",)

    def __init__(self, proto: WebSocketsSansIOProtocol) -> None:
        self._proto = proto

    @classmethod
    def of(cls, send: object) -> DirectWriter | None:
        """The writer for ``send`` if it is uvicorn's websockets-sansio connection, else None."""
        proto = getattr(send, "__self__", None)
        if not isinstance(proto, WebSocketsSansIOProtocol) or proto.conn.extensions:
            return None
        return cls(proto)

    def _transport(self) -> asyncio.Transport | None:
        p = self._proto
        if not p.writable.is_set() or p.close_sent or p.conn.state is not WsState.OPEN:
            return None
        transport = p.transport
        return None if transport.is_closing() else transport

    def __call__(self, data: bytes | str) -> bool:
        transport = self._transport()
        if transport is None:
            return False
        transport.write(frame_of(data))
        return True

    def many(self, payloads: list[bytes | str]) -> bool:
        """Write the frames of ``payloads`` with one write (one syscall), or none of them."""
        transport = self._transport()
        if transport is None:
            return False
        transport.write(b"".join([frame_of(d) for d in payloads]))
        return True

    def backlog(self) -> int:
        """Bytes in the transport's buffer while it is over its high-water mark (0 when it is not)."""
        p = self._proto
        return 0 if p.writable.is_set() else p.transport.get_write_buffer_size()

    async def drained(self) -> None:
        """Return once the transport's buffer is back under its low-water mark."""
        await self._proto.writable.wait()

    def abort(self) -> None:
        """Drop the connection at once (a peer that does not take its close frame)."""
        self._proto.transport.abort()
