"""Dtype names and column names for the ops: the vocabulary with op errors, and name checks.

The vocabulary itself (names, Polars and Arrow types, ``Datetime[<tz>]``,
``_rid``) is :mod:`protocol.dtypes`; here its lookups raise :class:`OpError`
so a bad dtype rejects the op. Private to ``server.ops``;
:mod:`server.ops.dtypes` is the public face.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from protocol import ErrorCode
from protocol import dtypes as vocab
from protocol.dtypes import DTYPE_NAMES, INT_RANGE, RID, DtypeError, dtype_family, time_zone

from .state import OpError

__all__ = [
    "DTYPE_NAMES",
    "MAX_NAME_LEN",
    "INT_RANGE",
    "polars_dtype",
    "dtype_name",
    "dtype_family",
    "time_zone",
    "check_name",
    "NAME_RE",
    "is_ref_name",
    "check_ref_name",
]

MAX_NAME_LEN = 128

# The naming rule of datasets, branches and tags (PROTOCOL.md §11 ``bad_name``).
# Always used with ``fullmatch``: ``$`` would let a name end in a newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _op_error(e: DtypeError) -> OpError:
    return OpError(e.code, e.message, **e.details)


def polars_dtype(name: str) -> pl.DataType:
    """The Polars dtype for a dtype name (see :data:`DTYPE_NAMES`).

    Raises:
        OpError: ``bad_dtype``, listing the valid names, or naming an unknown time zone.
    """
    try:
        return vocab.polars_dtype(name)
    except DtypeError as e:
        raise _op_error(e) from None


def dtype_name(dtype: pl.DataType) -> str:
    """The dtype name of a supported Polars dtype (inverse of :func:`polars_dtype`).

    Raises:
        OpError: ``bad_dtype`` for a dtype coframe does not store.
    """
    try:
        return vocab.dtype_name(dtype)
    except DtypeError as e:
        raise _op_error(e) from None


def check_name(name: Any, *, what: str = "column name") -> str:
    """Validate a column name (PROTOCOL.md "Ops": names are 1-128 chars, ``_rid`` is reserved).

    Raises:
        OpError: ``bad_op`` for an empty or over-long name, ``reserved_name`` for ``_rid``.
    """
    if not isinstance(name, str) or not name:
        raise OpError(ErrorCode.BAD_OP, f"{what} must be a non-empty string", name=str(name))
    if len(name) > MAX_NAME_LEN:
        raise OpError(
            ErrorCode.BAD_OP,
            f"{what} is {len(name)} characters long; use at most {MAX_NAME_LEN}",
            name=name[:MAX_NAME_LEN] + "…",
        )
    if name == RID:
        raise OpError(
            ErrorCode.RESERVED_NAME,
            f"the name '{RID}' is reserved for row ids; choose another name",
            name=name,
        )
    return name


def is_ref_name(value: Any) -> bool:
    """Whether ``value`` follows the naming rule of datasets, branches and tags.

    1-128 letters, digits, ``_``, ``.`` or ``-``, starting with a letter or
    digit, no ``..``: never a path, never a control character (NUL, newline),
    matched in full. A commit id or a unique prefix of one (hex) follows it too.
    """
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None and ".." not in value


def check_ref_name(value: Any, what: str = "dataset") -> str:
    """Validate a dataset, branch or tag name, or a version (a ref or a commit id prefix).

    ``what`` names it in the message (``dataset``, ``branch``, ``tag``, ``version``).

    Raises:
        OpError: ``bad_name`` (HTTP 400), the value shown escaped (a NUL reads ``\\x00``).
    """
    if is_ref_name(value):
        return str(value)
    shown = repr(value) if not isinstance(value, str) or len(value) <= 140 else repr(value[:140]) + "…"
    noun = what if what == "version" else f"{what} name"
    raise OpError(
        ErrorCode.BAD_NAME,
        f"invalid {noun} {shown}: use 1-128 letters, digits, '_', '.' or '-',"
        " starting with a letter or digit (never a path, no control characters)",
        name=shown,
        what=what,
    )
