"""Answers to ``query`` messages (PROTOCOL.md "query"): version diffs and the log.

Queries never touch the frame: they read the room's published state (for
``live``) or committed versions, and the diff runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from protocol import Error, ErrorCode, Query, Result

from ..ops.state import OpError, State
from ..storage.diff import diff_states
from ..storage.types import NotFound, StorageCorrupt
from .policy import EVERYONE, Audience, PolicyBroken, narrow_state

if TYPE_CHECKING:
    from ..storage.service import Storage

__all__ = ["answer", "commit_json", "Source"]

log = logging.getLogger("coframe.room")


class Source(Protocol):
    """What a query reads: the room's published state and its branch (a Room satisfies it)."""

    @property
    def dataset(self) -> str: ...

    @property
    def state(self) -> State: ...

    @property
    def storage(self) -> Storage | None:
        """The versions of the dataset (None only for a room made without storage, as in unit tests)."""
        ...

    @property
    def log_ref(self) -> str:
        """Where ``log`` starts by default: the room's branch, or the commit a time-travel room shows."""
        ...


async def _version(room: Source, ref: str) -> State:
    if ref == "live":
        return room.state
    storage = _storage(room)
    return await storage.state_of(await storage.resolve(room.dataset, ref))


def _storage(room: Source) -> Storage:
    if room.storage is None:
        raise NotFound(f"room of dataset '{room.dataset}' was made without storage; only 'live' exists")
    return room.storage


def commit_json(m: Any, *, counts: bool = True) -> dict[str, Any]:
    """A commit (a manifest) as JSON, as the log query and the HTTP API give it; without
    ``counts`` (a restricted audience) no ``rows``, which would tell how many rows it does not see."""
    out: dict[str, Any] = {
        "commit": m.id,
        "parents": list(m.parents),
        "author": m.author,
        "message": m.message,
        "time": m.time,
        "seq": m.seq,
        "rows": m.rows,
    }
    if not counts:
        del out["rows"]
    return out


async def answer(room: Source, q: Query, audience: Audience = EVERYONE) -> Result | Error:
    """The ``result`` for ``q`` as ``audience`` may see it, or an ``error`` naming what was
    not found; never raises. A diff compares the audience's rows and columns of each side."""
    try:
        return await _answer(room, q, audience)
    except Exception as e:  # a bug must surface as a coded error, not a silent drop
        log.exception("query %s failed in %s", q.kind, room.dataset)
        return Error(ErrorCode.INTERNAL, f"query failed ({type(e).__name__})", re=q.id)


async def _answer(room: Source, q: Query, audience: Audience) -> Result | Error:
    try:
        if q.kind == "log":
            ref = q.from_ or room.log_ref
            manifests = await _storage(room).log(room.dataset, ref, q.limit or 100)
            rows = [commit_json(m, counts=audience == EVERYONE) for m in manifests]
            table = pa.Table.from_pylist(rows) if rows else pa.table({"commit": pa.array([], pa.string())})
            return Result("log", {"log": table}, rows, re=q.id)
        a = await _version(room, q.from_ or "live")
        b = await _version(room, q.to or "live")
        if audience != EVERYONE:  # each side as the audience sees it
            a, b = await asyncio.to_thread(lambda: (narrow_state(a, audience), narrow_state(b, audience)))
        diff = await asyncio.to_thread(diff_states, a, b)
        data = {"summary": diff.summary(), "schema": diff.schema, "from": q.from_, "to": q.to or "live"}
        return Result("diff", diff.to_arrow(), data, re=q.id)
    except NotFound as e:
        return Error(ErrorCode.NOT_FOUND, str(e), re=q.id)
    except PolicyBroken as e:  # the predicate names a column that version does not have
        return Error(ErrorCode.FORBIDDEN, e.message, re=q.id)
    except OpError as e:  # bad_name: a version that breaks the naming rule (a NUL, a newline)
        return Error(e.code, e.message, e.details, re=q.id)
    except StorageCorrupt as e:  # the version's chunks: one log line, no traceback
        log.error("query %s in %s: %s", q.kind, room.dataset, e.message)
        return Error(ErrorCode.STORAGE_CORRUPT, e.message, e.details, re=q.id)
