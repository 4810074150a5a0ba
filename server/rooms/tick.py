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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol import Ack, Error, ErrorCode, RestoreColumn, RestoreRows, SetCells
from protocol.dtypes import RID

from ..ops import IN_PROCESS, ExprCost
from ..ops.state import OpError, State
from ..storage.types import WalEntry
from .core import RoomCore, is_heavy, run_general
from .deltas import DeltaBuilder
from .policy import EVERYONE, Audience, check_kept, check_ops
from .setgroup import GroupItem, apply_group, groupable
from .wal import make_entry

__all__ = ["Batch", "TickResult", "apply_batches", "check_limits", "op_rows", "with_re"]

log = logging.getLogger("coframe.room")


#: Checks the batch an ``undo`` or ``redo`` pops before it applies: an error refuses it.
Gate = Callable[[tuple[Any, ...]], Error | None]


@dataclass(frozen=True, slots=True)
class Batch:
    """One queued ``op``, ``undo`` or ``redo`` message and who sent it.

    ``gate`` (from the endpoint, which knows the sender's role) checks the
    batch an undo or redo pops: the inverse of an admin's ``add_column`` is a
    ``drop_column`` even after the sender became an editor.
    """

    kind: str  # op | undo | redo
    client: str
    msg: Any
    sender: Any  # the session to answer
    gate: Gate | None = None


@dataclass(slots=True)
class TickResult:
    before: State
    seq_from: int
    builder: DeltaBuilder = field(default_factory=DeltaBuilder)
    replies: list[tuple[Any, Ack | Error]] = field(default_factory=list)
    by: list[str] = field(default_factory=list)
    entries: list[WalEntry] = field(default_factory=list)


async def apply_batches(
    core: RoomCore,
    batches: list[Batch],
    *,
    max_rows: int,
    max_total: int | None = None,
    exprs: ExprCost = IN_PROCESS,
) -> TickResult:
    """Apply ``batches`` in order; never raises (a bug in one batch fails only that batch).

    Runs of one-``set`` messages go through :func:`.setgroup.apply_group`,
    which gives what applying them one by one gives, with one lookup,
    coercion and clock check per column for the run. ``exprs`` evaluates
    expressions (the registry's worker processes). ``max_rows`` bounds the
    rows of each op, ``max_total`` (when given) the rows of all ops of one
    ``op`` message (PROTOCOL.md section 10).
    """
    out = TickResult(core.state, core.seq + 1)
    limits = (max_rows, max_total)
    one_op = max_rows if max_total is None else min(max_rows, max_total)
    i = 0
    while i < len(batches):
        window = _group_window(core, batches, i, one_op)
        if len(window) >= 2:
            try:
                done = apply_group(core, [_item(b) for b in window], out.builder)
            except Exception:  # a bug in the group path: the messages go one by one
                log.exception("group of %d messages failed; applying them one by one", len(window))
                done = []
            for b, (ack, applied) in zip(window, done, strict=False):
                _accepted(out, b, ack, applied)
            if done:
                i += len(done)
                continue
        for b in window or batches[i : i + 1]:  # one by one: exact errors, bounded retries
            try:
                reply = await _apply_one(core, b, out.builder, limits, exprs)
            except Exception:
                log.exception("batch %s from %s failed", b.msg.client_seq, b.client)
                reply = Error(ErrorCode.INTERNAL, "internal error; this batch was not applied", {})
            if isinstance(reply, Ack) and not reply.duplicate:
                _accepted(out, b, reply, core.last_applied)
            else:
                out.replies.append((b.sender, with_re(reply, b.msg.id)))
        i += len(window) or 1
    return out


GROUP_CELLS = 1024  # cells per group attempt (bounds the work a failed or cut attempt wastes)
GROUP_MESSAGES = 512


def _group_window(core: RoomCore, batches: list[Batch], i: int, max_rows: int) -> list[Batch]:
    """The groupable messages from ``batches[i]`` on, bounded in cells and messages."""
    window: list[Batch] = []
    seen: set[tuple[str, int]] = set()
    cells = 0
    for b in batches[i : i + GROUP_MESSAGES]:
        if b.kind != "op" or not groupable(b.msg.ops, max_rows) or _audience(b) != EVERYONE:
            break
        key = (b.client, b.msg.client_seq)
        if key in seen or core.replies.get(*key) is not None:
            break  # a duplicate: answered from the reply cache, one by one
        seen.add(key)
        cells += len(b.msg.ops[0].rows)
        if window and cells > GROUP_CELLS:
            break
        window.append(b)
    return window


def _audience(b: Batch) -> Audience:
    return getattr(b.sender, "audience", EVERYONE)


def _item(b: Batch) -> GroupItem:
    return (b.client, b.msg.client_seq, b.msg.base_seq, b.msg.ops[0])


def _accepted(out: TickResult, b: Batch, ack: Ack, applied: tuple[Any, ...]) -> None:
    out.replies.append((b.sender, with_re(ack, b.msg.id)))
    out.entries.append(make_entry(ack.seq, b.client, b.msg.client_seq, b.kind, applied, ack))
    if b.client not in out.by:
        out.by.append(b.client)


async def _apply_one(
    core: RoomCore, b: Batch, builder: DeltaBuilder, limits: tuple[int, int | None], exprs: ExprCost
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
    audience = _audience(b)
    if kind != "op" and b.gate is not None and (refusal := b.gate(ops)) is not None:
        core.restore_undo(client, kind, ops)  # not cached: the same client_seq may pass after a grant
        return refusal
    try:
        if kind == "op" and audience == EVERYONE and all(isinstance(o, SetCells) for o in ops):
            return core.apply_sets(client, msg.client_seq, msg.base_seq, ops, builder)
        core.flush()
        if audience != EVERYONE:  # a row or column policy: checked against the exact state
            check_ops(core.state, audience, ops, undo=kind != "op")
        base = msg.base_seq if kind == "op" else core.seq
        if is_heavy(ops):
            result = await asyncio.to_thread(run_general, core.state, core.clock, client, base, ops, exprs)
        else:
            result = run_general(core.state, core.clock, client, base, ops, exprs)
        if audience != EVERYONE:
            check_kept(result.state, audience, _written_rids(ops, result.rids))
        return core.commit_general(client, msg.client_seq, result, builder, kind)
    except OpError as e:
        if kind != "op":
            core.restore_undo(client, kind, ops)
        err = core.clock.explain(e)
        core.replies.put(client, msg.client_seq, err)
        return err


def _written_rids(ops: tuple[Any, ...], inserted: list[int]) -> list[int]:
    """The rows ``ops`` set, inserted or restored (those a policy's ``WITH CHECK`` looks at)."""
    out = list(inserted)
    for op in ops:
        if isinstance(op, SetCells):
            out += op.rows
        elif isinstance(op, RestoreRows) and RID in op.rows.column_names:
            out += op.rows.column(RID).to_pylist()
    return out


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
