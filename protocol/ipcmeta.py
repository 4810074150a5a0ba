"""What an Arrow IPC stream declares, read without decoding or decompressing it.

A peer's table costs what its record batches declare: their row counts, and
the sizes of their buffers once decompressed. Both are in each message's
metadata (a flatbuffer ``Message``), and a compressed buffer starts with its
uncompressed length (8 bytes, little-endian; -1 when the buffer was left
uncompressed). :func:`ipc_info` reads exactly that, by hand, so a request over
a limit is refused before any buffer is decompressed or any array is built
(PROTOCOL.md section 10).

Format: https://arrow.apache.org/docs/format/Columnar.html#serialization-and-interprocess-communication-ipc
(the stream format, and ``Message.fbs``/``Schema.fbs`` for the tables read
here). Only what the limits need is read; the full decode still validates
everything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import ErrorCode, ProtocolError

__all__ = ["IpcInfo", "ipc_info"]

_CONTINUATION = 0xFFFFFFFF
# MessageHeader union tags (Message.fbs).
_DICTIONARY_BATCH = 2
_RECORD_BATCH = 3
# Field slots of the flatbuffer tables read here.
_MESSAGE_HEADER_TYPE, _MESSAGE_HEADER, _MESSAGE_BODY_LENGTH = 1, 2, 3
_BATCH_LENGTH, _BATCH_BUFFERS, _BATCH_COMPRESSION = 0, 2, 3
_DICT_DATA = 1


@dataclass(frozen=True, slots=True)
class IpcInfo:
    """What a stream declares: rows of its record batches, and its buffers' bytes.

    ``bytes`` counts every buffer of record and dictionary batches as it will
    be in memory once decompressed; ``compressed`` tells whether any buffer
    was compressed.
    """

    rows: int
    bytes: int
    compressed: bool


class _Bad(Exception):
    pass


class _Flat:
    """Bounds-checked reads of one flatbuffer (every offset comes from a peer)."""

    __slots__ = ("buf", "n")

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.n = buf, len(buf)

    def _at(self, fmt: str, pos: int, size: int) -> int:
        if pos < 0 or pos + size > self.n:
            raise _Bad("offset out of range")
        value: int = struct.unpack_from(fmt, self.buf, pos)[0]
        return value

    def root(self) -> int:
        return self._at("<I", 0, 4)

    def field(self, table: int, slot: int) -> int | None:
        """The position of ``slot`` in the table at ``table``, or None when absent."""
        vtable = table - self._at("<i", table, 4)
        vsize = self._at("<H", vtable, 2)
        at = 4 + 2 * slot
        if at + 2 > vsize:
            return None
        off = self._at("<H", vtable + at, 2)
        return table + off if off else None

    def scalar(self, table: int, slot: int, fmt: str, size: int, default: int = 0) -> int:
        pos = self.field(table, slot)
        return default if pos is None else self._at(fmt, pos, size)

    def ref(self, table: int, slot: int) -> int | None:
        """The table or vector a reference field points to."""
        pos = self.field(table, slot)
        return None if pos is None else pos + self._at("<I", pos, 4)

    def structs(self, vector: int, size: int) -> tuple[int, int]:
        """A vector of ``size``-byte structs: (position of the first, count), checked to fit."""
        count = self._at("<I", vector, 4)
        if vector + 4 + count * size > self.n:
            raise _Bad("vector out of range")
        return vector + 4, count

    def i64(self, pos: int) -> int:
        return self._at("<q", pos, 8)


def _batch(flat: _Flat, batch: int, body: memoryview) -> tuple[int, int, bool]:
    """(rows, decompressed bytes, compressed?) of one RecordBatch table."""
    rows = flat.scalar(batch, _BATCH_LENGTH, "<q", 8)
    if rows < 0:
        raise _Bad("negative row count")
    compressed = flat.field(batch, _BATCH_COMPRESSION) is not None
    vector = flat.ref(batch, _BATCH_BUFFERS)
    total = 0
    if vector is None:
        return rows, 0, compressed
    first, count = flat.structs(vector, 16)
    for i in range(count):
        offset, length = flat.i64(first + 16 * i), flat.i64(first + 16 * i + 8)
        if offset < 0 or length < 0 or offset + length > len(body):
            raise _Bad("buffer out of the message body")
        if not compressed or length == 0:
            total += length
            continue
        if length < 8:
            raise _Bad("compressed buffer without its length")
        size = struct.unpack_from("<q", body, offset)[0]
        if size < -1:
            raise _Bad("negative uncompressed length")
        total += length - 8 if size == -1 else size
    return rows, total, compressed


def ipc_info(data: bytes, path: str = "table") -> IpcInfo:
    """Rows and decompressed bytes an Arrow IPC stream declares, without decoding it.

    Raises:
        ProtocolError: ``bad_field`` naming ``path`` when the framing or a
            message's metadata is malformed.
    """
    view = memoryview(data)
    pos, rows, total, compressed = 0, 0, 0, False
    try:
        while pos + 4 <= len(view):
            size = struct.unpack_from("<I", view, pos)[0]
            pos += 4
            if size == _CONTINUATION:
                if pos + 4 > len(view):
                    raise _Bad("truncated message length")
                size = struct.unpack_from("<I", view, pos)[0]
                pos += 4
            if size == 0:  # end of stream
                break
            if pos + size > len(view):
                raise _Bad("truncated message metadata")
            flat = _Flat(view[pos : pos + size])
            pos += size
            message = flat.root()
            body_length = flat.scalar(message, _MESSAGE_BODY_LENGTH, "<q", 8)
            if body_length < 0 or pos + body_length > len(view):
                raise _Bad("truncated message body")
            body = view[pos : pos + body_length]
            pos += body_length
            kind = flat.scalar(message, _MESSAGE_HEADER_TYPE, "<B", 1)
            header = flat.ref(message, _MESSAGE_HEADER)
            if header is None or kind not in (_RECORD_BATCH, _DICTIONARY_BATCH):
                continue
            if kind == _DICTIONARY_BATCH:
                header = flat.ref(header, _DICT_DATA)
                if header is None:
                    continue
            n, b, c = _batch(flat, header, body)
            if kind == _RECORD_BATCH:
                rows += n
            total += b
            compressed = compressed or c
        else:
            if pos != len(view):
                raise _Bad("truncated message length")
    except (_Bad, struct.error) as e:
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"field '{path}' is not an Arrow IPC stream ({e})", field=path
        ) from None
    return IpcInfo(rows, total, compressed)
