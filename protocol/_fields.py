"""Field readers and validators that name the bad field in their error.

Two shapes: readers take the map, the key and the path (``req_int(d, "seq", "seq")``);
validators take a present value and its path (``uint(v, "seq")``) and are what the
message spec (``_spec.Field``) calls. Both raise ``ProtocolError(bad_field)``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from .errors import ErrorCode, ProtocolError

__all__ = [
    "uint",
    "text",
    "string",
    "short_text",
    "flag",
    "number",
    "request_id",
    "valid_request_id",
    "MAX_ID_CHARS",
    "obj",
    "blob",
    "schema",
    "str_list",
    "req_id",
    "req",
    "opt",
    "req_int",
    "opt_int",
    "req_str",
    "opt_str",
    "opt_bool",
    "int_list",
    "col_ref",
    "table_field",
    "snapshot_field",
    "scalar",
    "scalar_list",
    "plain",
    "MISSING",
]

MISSING: Any = object()

_JSON_SCALARS = (type(None), bool, int, float, str)
# Exact types (no subclasses) that need no check beyond their type, but ints' range.
_PLAIN_SCALARS = frozenset(_JSON_SCALARS)
_INT_ONLY = {int}

# Integers must survive both envelopes: msgpack carries -2**63 .. 2**64-1, and
# seqs, rids and ids are int64 on the server.
INT64_MAX = 2**63 - 1
MAX_ID_CHARS = 256  # a string request id is at most this long (it is echoed on every reply)
_WIRE_INT_MIN, _WIRE_INT_MAX = -(2**63), 2**64 - 1


def _bad(path: str, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, f"field '{path}' {what}", field=path)


def req(d: dict[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise _bad(path, "is required")
    return d[key]


def req_id(d: dict[str, Any], key: str = "id") -> int | str | None:
    """A request id (``id``) or the id a reply answers (``re``): int64, string or null."""
    return request_id(d.get(key), key)


def request_id(v: Any, path: str) -> int | str | None:
    """Validate a request id value: a signed 64-bit integer, a string of at most
    :data:`MAX_ID_CHARS` characters, or null."""
    if v is None:
        return v
    if isinstance(v, str) and len(v) <= MAX_ID_CHARS:
        return v
    if isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v <= INT64_MAX:
        return v
    raise _bad(path, f"must be a 64-bit integer or a string of at most {MAX_ID_CHARS} characters")


def valid_request_id(v: Any) -> int | str | None:
    """``v`` if it is a valid request id, else None (an invalid id is never echoed)."""
    try:
        return request_id(v, "id")
    except ProtocolError:
        return None


def opt(d: dict[str, Any], key: str, default: Any = None) -> Any:
    return d.get(key, default)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def req_int(d: dict[str, Any], key: str, path: str, *, minimum: int | None = 0) -> int:
    return uint(req(d, key, path), path, minimum=minimum)


def uint(v: Any, path: str, *, minimum: int | None = 0) -> int:
    """An integer >= ``minimum`` (0 unless told) that fits in 64 bits."""
    if not _is_int(v):
        raise _bad(path, f"must be an integer, got {type(v).__name__}")
    if minimum is not None and v < minimum:
        raise _bad(path, f"must be >= {minimum}, got {v}")
    if not -INT64_MAX - 1 <= v <= INT64_MAX:
        raise _bad(path, f"must fit in 64 bits, got {v}")
    return int(v)


def opt_int(d: dict[str, Any], key: str, path: str, *, minimum: int | None = 0) -> int | None:
    if d.get(key) is None:
        return None
    return req_int(d, key, path, minimum=minimum)


def req_str(d: dict[str, Any], key: str, path: str, *, nonempty: bool = True) -> str:
    return text(req(d, key, path), path) if nonempty else string(req(d, key, path), path)


def string(v: Any, path: str) -> str:
    """A string, possibly empty."""
    if not isinstance(v, str):
        raise _bad(path, f"must be a string, got {type(v).__name__}")
    return v


def text(v: Any, path: str) -> str:
    """A non-empty string."""
    s = string(v, path)
    if not s:
        raise _bad(path, "must not be empty")
    return s


def short_text(limit: int) -> Callable[[Any, str], str]:
    """A validator for a non-empty string of at most ``limit`` characters."""

    def check(v: Any, path: str) -> str:
        s = text(v, path)
        if len(s) > limit:
            raise _bad(path, f"is over {limit} characters")
        return s

    return check


def opt_str(d: dict[str, Any], key: str, path: str) -> str | None:
    if d.get(key) is None:
        return None
    return req_str(d, key, path)


def opt_bool(d: dict[str, Any], key: str, path: str, default: bool = False) -> bool:
    v = d.get(key)
    return default if v is None else flag(v, path)


def flag(v: Any, path: str) -> bool:
    """A boolean (an integer 0 or 1 is not one)."""
    if not isinstance(v, bool):
        raise _bad(path, f"must be true or false, got {type(v).__name__}")
    return v


def number(v: Any, path: str) -> float:
    """A number (integer or float, not a boolean), as a float."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise _bad(path, "must be a number")
    return float(v)


def str_list(v: Any, path: str) -> tuple[str, ...]:
    """A list of strings."""
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _bad(path, "must be a list of strings")
    return tuple(v)


def int_list(v: Any, path: str) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise _bad(path, f"must be a list of integers, got {type(v).__name__}")
    # Fast path (a decoded frame): only plain ints, all in range; checked in C, not per element.
    if not v or (set(map(type, v)) == _INT_ONLY and min(v) >= 0 and max(v) <= INT64_MAX):
        return tuple(v)
    for i, x in enumerate(v):
        if not _is_int(x) or not 0 <= x <= INT64_MAX:
            raise _bad(f"{path}[{i}]", f"must be a non-negative 64-bit integer, got {x!r}")
    return tuple(int(x) for x in v)


def col_ref(v: Any, path: str) -> int | str:
    """A column reference: a name (string) or a server-assigned id (integer)."""
    if isinstance(v, str) and v:
        return v
    if _is_int(v) and 0 <= v <= INT64_MAX:
        return int(v)
    raise _bad(path, f"must be a column name (string) or id (integer), got {v!r}")


def scalar(v: Any, path: str) -> Any:
    """A cell value: null, boolean, number or string that both envelopes can carry."""
    if not isinstance(v, _JSON_SCALARS):
        raise _bad(path, f"must be a null, boolean, number or string, got {type(v).__name__}")
    if _is_int(v) and not _WIRE_INT_MIN <= v <= _WIRE_INT_MAX:
        raise _bad(path, f"is an integer out of the 64-bit range, got {v}")
    return v


def scalar_list(v: list[Any] | tuple[Any, ...], path: str) -> tuple[Any, ...]:
    """Each item a :func:`scalar` (paths ``path[i]``), as a tuple."""
    kinds = set(map(type, v))
    if kinds <= _PLAIN_SCALARS and (int not in kinds or _ints_fit(v, kinds)):
        return tuple(v)  # checked in C, not per element (a decoded frame's values)
    return tuple(scalar(x, f"{path}[{i}]") for i, x in enumerate(v))


def _ints_fit(v: list[Any] | tuple[Any, ...], kinds: set[type]) -> bool:
    if kinds != _INT_ONLY:
        return False  # mixed with other kinds: checked per element
    return _WIRE_INT_MIN <= min(v) and max(v) <= _WIRE_INT_MAX


def plain(v: Any, path: str) -> Any:
    """Free-form data (presence state, details, limits): JSON objects, arrays and scalars.

    msgpack can also carry bytes, extension types and non-string keys; those
    cannot be re-sent to a JSON client, so they are refused here, by path.
    """
    stack = [(v, path)]
    while stack:
        x, p = stack.pop()
        if isinstance(x, dict):
            for k, item in x.items():
                if not isinstance(k, str):
                    raise _bad(p, f"has a non-string key {k!r}")
                stack.append((item, f"{p}.{k}"))
        elif isinstance(x, list):
            stack.extend((item, f"{p}[{i}]") for i, item in enumerate(x))
        else:
            scalar(x, p)
    return v


def obj(v: Any, path: str) -> dict[str, Any]:
    """A free-form JSON object (presence state, details, limits)."""
    if not isinstance(v, dict):
        raise _bad(path, "must be an object")
    out: dict[str, Any] = plain(v, path)
    return out


def blob(v: Any, path: str) -> bytes:
    """Binary field: bytes in msgpack frames, base64 text in JSON frames."""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, str):
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise _bad(path, "must be bytes (base64 text in JSON)")


def schema(v: Any, path: str) -> tuple[dict[str, Any], ...]:
    """A room schema: a list of ``{id, name, dtype}`` (PROTOCOL.md "welcome")."""
    if not isinstance(v, list):
        raise _bad(path, "must be a list")
    out = []
    for i, c in enumerate(v):
        if not isinstance(c, dict):
            raise _bad(f"{path}[{i}]", "must be an object")
        out.append(
            {
                "id": req_int(c, "id", f"{path}[{i}].id"),
                "name": req_str(c, "name", f"{path}[{i}].name"),
                "dtype": req_str(c, "dtype", f"{path}[{i}].dtype"),
            }
        )
    return tuple(out)


def snapshot_field(v: Any, path: str) -> Any:
    """A welcome snapshot: like :func:`table_field`, or Parquet bytes (a Polars frame).

    Only a welcome's snapshot may be Parquet, sent to a client that listed
    "parquet" in ``hello.codecs``; tables a client sends are never Parquet.
    """
    if isinstance(v, (bytes, bytearray, memoryview)):
        from .arrow import snapshot_from_bytes

        return snapshot_from_bytes(bytes(v), path)
    return table_field(v, path)


def table_field(v: Any, path: str) -> pa.Table:
    """A table: Arrow IPC bytes (binary frames) or a list of row dicts (JSON)."""
    if isinstance(v, pa.Table):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        from .arrow import table_from_ipc

        return table_from_ipc(bytes(v), path)
    if isinstance(v, list):
        for i, row in enumerate(v):
            if not isinstance(row, dict):
                raise _bad(f"{path}[{i}]", "must be an object of column: value")
            for k, x in row.items():
                if not isinstance(k, str):
                    raise _bad(f"{path}[{i}]", "has a non-string column name")
                scalar(x, f"{path}[{i}].{k}")
        # Columns are the union of every row's keys: a row may leave out a null.
        # (Table.from_pylist would take the first row's keys and drop the rest.)
        arrays = {}
        for c in dict.fromkeys(k for row in v for k in row):
            try:
                arrays[c] = pa.array([row.get(c) for row in v])
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
                raise _bad(
                    path, f"column '{c}' has values that do not fit one type; send one type per column ({e})"
                ) from None
        return pa.Table.from_pydict(arrays)
    raise _bad(path, f"must be a list of row objects or Arrow IPC bytes, got {type(v).__name__}")
