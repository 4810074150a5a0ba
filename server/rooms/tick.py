"""One tick's work on the room core: apply each batch atomically, collect replies.

PROTOCOL.md sections 3 ("op"), 6 and 8. A tick takes the messages drained
from the room's queue and applies each as one atomic batch against the
:class:`~server.rooms.core.RoomCore`, in order. It answers exactly once per
``(client, client_seq)``, turns failures into coded errors, and gathers the
WAL entries and the delta builder for the tick. It sends nothing: the room
makes the batch durable, then publishes and delivers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from protocol import Ack, Error, ErrorCode, RestoreColumn, SetCells

from ..ops.state import OpError, State
from ..storage.types import WalEntry
from .core import RoomCore, is_heavy, run_general
from .deltas import DeltaBuilder
from .wal import make_entry

__all__ = ["Batch", "TickResult", "apply_batches", "check_limits", "op_rows", "with_re"]

log = logging.getLogger("coframe.room")


@dataclass(frozen=True, slots=True)
class Batch:
    """One queued ``op``, ``undo`` or ``redo`` message and who sent it."""

    kind: str  # op | undo | redo
    client: str
    msg: Any
    sender: Any  # the session to answer


@dataclass(slots=True)
class TickResult:
    before: State
    seq_from: int
    builder: DeltaBuilder = field(default_factory=DeltaBuilder)
    replies: list[tuple[Any, Ack | Error]] = field(default_factory=list)
    by: list[str] = field(default_factory=list)
    entries: list[WalEntry] = field(default_factory=list)


async def apply_batches(
    core: RoomCore, batches: list[Batch], *, max_rows: int, max_total: int | None = None
) -> TickResult:
    """Apply ``batches`` in order; never raises (a bug in one batch fails only that batch).

    ``max_rows`` bounds the rows of each op, ``max_total`` (when given) the
    rows of all ops of one ``op`` message (PROTOCOL.md section 10).
    """
    out = TickResult(core.state, core.seq + 1)
    limits = (max_rows, max_total)
    for b in batches:
        try:
            reply = await _apply_one(core, b, out.builder, limits)
        except Exception:
            log.exception("batch %s from %s failed", b.msg.client_seq, b.client)
            reply = Error(ErrorCode.INTERNAL, "internal error; this batch was not applied", {})
        out.replies.append((b.sender, with_re(reply, b.msg.id)))
        if isinstance(reply, Ack) and not reply.duplicate:
            out.entries.append(
                make_entry(reply.seq, b.client, b.msg.client_seq, b.kind, core.last_applied, reply)
            )
            if b.client not in out.by:
                out.by.append(b.client)
    return out


async def _apply_one(
    core: RoomCore, b: Batch, builder: DeltaBuilder, limits: tuple[int, int | None]
) -> Ack | Error:
    kind, client, msg = b.kind, b.client, b.msg
    prior = core.replies.get(client, msg.client_seq)
    if prior is not None:
        if isinstance(prior, Ack):
            return Ack(prior.seq, prior.client_seq, prior.rids, prior.overwritten, duplicate=True)
        return prior
    ops: tuple[Any, ...]
    try:
        if kind == "op":
            ops = msg.ops
            check_limits(ops, *limits)
        else:
            ops = core.pop_undo(client, kind)
    except OpError as e:
        err = core.clock.explain(e)
        core.replies.put(client, msg.client_seq, err)
        return err
    try:
        if kind == "op" and all(isinstance(o, SetCells) for o in ops):
            return core.apply_sets(client, msg.client_seq, msg.base_seq, ops, builder)
        core.flush()
        base = msg.base_seq if kind == "op" else core.seq
        if is_heavy(ops):
            result = await asyncio.to_thread(run_general, core.state, core.clock, client, base, ops)
        else:
            result = run_general(core.state, core.clock, client, base, ops)
        return core.commit_general(client, msg.client_seq, result, builder, kind)
    except OpError as e:
        if kind != "op":
            core.restore_undo(client, kind, ops)
        err = core.clock.explain(e)
        core.replies.put(client, msg.client_seq, err)
        return err


def op_rows(op: Any) -> int:
    """The rows an op carries: a set's or delete's rids, an insert's or restore's table rows."""
    rows = getattr(op, "rows", None)
    if rows is None:
        rows = getattr(op, "values", None) if isinstance(op, RestoreColumn) else None
    return 0 if rows is None else (rows.num_rows if hasattr(rows, "num_rows") else len(rows))


def check_limits(ops: tuple[Any, ...], limit: int, total_limit: int | None = None) -> None:
    """Refuse an op that touches more than ``limit`` rows, or ops that touch more
    than ``total_limit`` in all (PROTOCOL.md section 10).

    The connection core refuses a client's message over these limits before
    it is decoded (protocol/costs.py); this is the room's own guard.

    Raises:
        OpError: ``too_large``, naming the op (or the message) and the limit.
    """
    total = 0
    for i, op in enumerate(ops):
        n = op_rows(op)
        if n > limit:
            raise OpError(
                ErrorCode.TOO_LARGE,
                f"ops[{i}] touches {n} rows; the limit is {limit} rows per op, split it into several ops",
                op_index=i,
            )
        total += n
    if total_limit is not None and total > total_limit:
        raise OpError(
            ErrorCode.TOO_LARGE,
            f"the ops of this message touch {total} rows; the limit is {total_limit} rows per message,"
            " send them in several messages",
            limit=total_limit,
        )


def with_re(reply: Ack | Error, re: Any) -> Ack | Error:
    """``reply`` answering request id ``re``."""
    if reply.re == re:
        return reply
    if isinstance(reply, Ack):
        return Ack(reply.seq, reply.client_seq, reply.rids, reply.overwritten, reply.duplicate, re)
    return Error(reply.code, reply.message, reply.details, re)
