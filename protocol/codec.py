"""The envelope (PROTOCOL.md "Frames"): msgpack for binary frames, JSON for text.

Sans-I/O: bytes or text in, typed messages out, and back. Decoding never
raises anything but :class:`ProtocolError`.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import msgpack
import pyarrow as pa

from ._fields import valid_request_id
from .arrow import table_to_ipc, table_to_rows
from .errors import ErrorCode, ProtocolError
from .messages import CLIENT_MESSAGES, SERVER_MESSAGES, ClientMessage, ServerMessage

__all__ = ["encode", "encode_map", "decode_client", "decode_server", "decode_map", "client_from_map"]


def _msgpack_default(v: Any) -> Any:
    if isinstance(v, pa.Table):
        return table_to_ipc(v)
    if isinstance(v, (tuple, frozenset, set)):
        return list(v)
    raise TypeError(f"cannot encode {type(v).__name__}")


def _json_default(v: Any) -> Any:
    if isinstance(v, pa.Table):
        return table_to_rows(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, (tuple, frozenset, set)):
        return list(v)
    from .arrow import json_value

    out = json_value(v)
    if out is v:
        raise TypeError(f"cannot encode {type(v).__name__}")
    return out


def _finite(v: Any) -> Any:
    """``v`` with NaN and infinities replaced by null: JSON has no such numbers."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _json_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text} overflows")
    return v


def _json_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def encode_map(d: dict[str, Any], *, binary: bool = True) -> bytes | str:
    """Encode one wire map: msgpack bytes, or JSON text.

    JSON has no NaN or infinity; in text frames they are sent as null, as
    they are inside tables (PROTOCOL.md "Tables").
    """
    if binary:
        return msgpack.packb(d, default=_msgpack_default, use_bin_type=True)
    try:
        return json.dumps(d, default=_json_default, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN or infinity outside a table: rare, so pay only then
        return json.dumps(_finite(d), default=_json_default, separators=(",", ":"), allow_nan=False)


def encode(msg: ClientMessage | ServerMessage, *, binary: bool = True) -> bytes | str:
    """Encode one message for a binary (msgpack) or text (JSON) frame."""
    return encode_map(msg.to_wire(), binary=binary)


def decode_map(data: bytes | str) -> dict[str, Any]:
    """Decode a frame to its map; raise ProtocolError(bad_frame) if it is not one."""
    try:
        if isinstance(data, str):
            # Strict JSON: NaN, Infinity and numbers that overflow to it are refused.
            d = json.loads(data, parse_float=_json_float, parse_constant=_json_constant)
        else:
            d = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack and json raise many kinds; all mean "bad frame"
        kind = "JSON" if isinstance(data, str) else "msgpack"
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"frame is not valid {kind} ({type(e).__name__}); send one map per frame"
        ) from None
    if not isinstance(d, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"frame must hold a map, got {type(d).__name__}")
    return d


def _decode(data: bytes | str, catalog: dict[str, Any]) -> Any:
    return _message(decode_map(data), catalog)


def _message(d: dict[str, Any], catalog: dict[str, Any]) -> Any:
    try:
        return _from_map(d, catalog)
    except ProtocolError as e:
        # Only a valid id is echoed: one outside int64 (or a long string) could not be encoded back.
        e.request_id = valid_request_id(d.get("id"))
        raise


def _from_map(d: dict[str, Any], catalog: dict[str, Any]) -> Any:
    kind = d.get("type")
    cls = catalog.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {kind!r}; use one of {', '.join(sorted(catalog))}",
            field="type",
        )
    try:
        return cls.from_wire(d)
    except ProtocolError:
        raise
    except Exception as e:  # a validator bug must still surface as a coded error
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"invalid '{kind}' message ({type(e).__name__}: {e})"
        ) from None


def decode_client(data: bytes | str) -> ClientMessage:
    """Decode a client → server frame."""
    msg: ClientMessage = _decode(data, CLIENT_MESSAGES)
    return msg


def client_from_map(d: dict[str, Any]) -> ClientMessage:
    """Build and validate a client message from a decoded frame map (:func:`decode_map`)."""
    msg: ClientMessage = _message(d, CLIENT_MESSAGES)
    return msg


def decode_server(data: bytes | str) -> ServerMessage:
    """Decode a server → client frame."""
    msg: ServerMessage = _decode(data, SERVER_MESSAGES)
    return msg
