"""Row predicates and hidden columns: what an audience may see of a room, and may write.

Pure functions over :class:`~server.ops.state.State` and protocol messages,
used by the outbound choke point (:mod:`.outbound`), the tick (writes), the
queries and the HTTP API (docs/security.md "Row and column policies").

An :class:`~.outbound.Audience` hides columns by **id** (a rename keeps
them hidden) and may carry a row predicate: Polars SQL over the room's
columns, compiled in the expression sandbox, with ``current_user()``
already bound to the user's name (:func:`bind_user`). A row is visible when
the predicate is true (null counts as false). A predicate that no longer
compiles (an admin renamed or dropped a column it names) hides every row
and raises :class:`PolicyBroken`, so its sessions are closed rather than
shown more than the grant says.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from protocol import CoframeError, Delete, ErrorCode, Insert, Op, RestoreRows, SetCells
from protocol.dtypes import RID

from ..ops.cells import missing_rows
from ..ops.sandbox import compile_expr
from ..ops.state import Catalog, OpError, State
from .deltas import row_positions

__all__ = [
    "Audience",
    "EVERYONE",
    "PolicyBroken",
    "bind_user",
    "check_rows",
    "hidden_names",
    "visible_names",
    "row_filter",
    "compiled_rows",
    "rows_at",
    "visible_rids",
    "narrow_state",
    "visible_count",
    "narrow_schema",
    "check_ops",
    "check_kept",
    "ROW_OPS",
]

_CURRENT_USER = re.compile(r"\bcurrent_user\s*\(\s*\)", re.IGNORECASE)
_EMPTY = np.empty(0, dtype=np.uint64)

#: The ops a user with a row predicate or hidden columns may run: they address rows by rid.
ROW_OPS = ("set", "insert", "delete by rows")


@dataclass(frozen=True, slots=True)
class Audience:
    """What a subscriber may see: its hidden columns and an optional row predicate.

    ``hide`` holds column ids (a rename keeps a column hidden); ``columns``
    (names), when set, also limits the visible columns (tests and the views
    process's own tables use it). ``rows`` is Polars SQL over the room's
    columns with ``current_user()`` already bound, or None for every row.
    Equal audiences share one rendering and one encoding of each payload.
    """

    columns: frozenset[str] | None = None
    rows: str | None = None
    hide: frozenset[int] = frozenset()
    # The hash, worked out once: the outbound groups every subscriber by audience on every delta.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.columns, self.rows, self.hide)))

    def __hash__(self) -> int:
        return self._hash


EVERYONE = Audience()


class PolicyBroken(CoframeError):
    """The audience's row predicate no longer compiles against the room's columns."""

    code = ErrorCode.FORBIDDEN
    status = 403


def bind_user(rows: str, user: str) -> str:
    """``rows`` with every ``current_user()`` replaced by ``user`` as an SQL string literal."""
    literal = "'" + user.replace("'", "''") + "'"
    return _CURRENT_USER.sub(lambda _m: literal, rows)


def check_rows(rows: str, columns: Sequence[str] | None) -> None:
    """Check a grant's row predicate against a dataset's columns (as ``coframe grant`` does);
    ``columns=None`` (a grant on ``*``) checks it alone (each dataset checks it on join).

    Raises:
        OpError: ``bad_expr``, saying what is wrong.
    """
    text = bind_user(rows, "someone")
    if columns is None:
        try:
            columns = pl.sql_expr(text).meta.root_names()
        except Exception:
            columns = []  # compile_expr says what is wrong
    compile_expr(text, list(columns))


def hidden_names(catalog: Catalog, audience: Audience) -> set[str]:
    """The names of the columns ``audience`` may not see, in ``catalog``."""
    out = {c.name for c in catalog.columns if c.id in audience.hide}
    if audience.columns is not None:
        out |= {c.name for c in catalog.columns if c.name not in audience.columns}
    return out


def visible_names(catalog: Catalog, audience: Audience) -> list[str]:
    """The names of the columns ``audience`` may see, in the catalog's order (no ``_rid``)."""
    hidden = hidden_names(catalog, audience) if audience != EVERYONE else set()
    return [c.name for c in catalog.columns if c.name not in hidden]


@functools.lru_cache(maxsize=256)
def _compiled(rows: str, names: tuple[str, ...]) -> tuple[pl.Expr, frozenset[str]] | OpError:
    """``rows`` compiled over ``names`` and the columns it reads (or why it does not compile).

    Cached per (predicate, column names): a delta is rendered for each audience on every tick.
    """
    try:
        expr = compile_expr(rows, list(names))
    except OpError as e:
        return e
    return expr.fill_null(False), frozenset(expr.meta.root_names())


def compiled_rows(state: State, audience: Audience) -> tuple[pl.Expr, frozenset[str]] | None:
    if audience.rows is None:
        return None
    got = _compiled(audience.rows, tuple(state.catalog.names()))
    if isinstance(got, OpError):
        raise PolicyBroken(
            "your row policy no longer matches this dataset's columns; ask an admin to fix your grant",
            code=ErrorCode.FORBIDDEN,
            details={"reason": got.code},
        )
    return got


def row_filter(state: State, audience: Audience) -> pl.Expr | None:
    """The audience's row predicate compiled for ``state`` (None: every row is visible).

    Raises:
        PolicyBroken: it names a column the room no longer has, or does not compile.
    """
    got = compiled_rows(state, audience)
    return None if got is None else got[0]


def rows_at(state: State, rids: np.ndarray, names: list[str] | None = None) -> pl.DataFrame:
    """The rows of ``state`` with these rids (those it has), in rid order; ``names`` only."""
    frame = state.frame if names is None else state.frame.select(names)
    _, pos = row_positions(state, rids)
    return frame[pl.Series(pos, dtype=pl.Int64)] if len(pos) else frame.clear()


def visible_rids(state: State, audience: Audience, rids: Iterable[int] | np.ndarray) -> np.ndarray:
    """The rids of ``rids`` (ascending, unique) that exist in ``state`` and ``audience`` may see."""
    req = np.unique(np.asarray(list(rids) if not isinstance(rids, np.ndarray) else rids, dtype=np.uint64))
    if not len(req):
        return _EMPTY
    got = compiled_rows(state, audience)
    if got is None:
        return rows_at(state, req, [RID]).get_column(RID).to_numpy().astype(np.uint64)
    pred, reads = got
    rows = rows_at(state, req, [RID, *(n for n in state.catalog.names() if n in reads)])
    return rows.filter(pred).get_column(RID).to_numpy().astype(np.uint64)


def visible_count(state: State, audience: Audience) -> int:
    """How many rows of ``state`` ``audience`` sees.

    Raises:
        PolicyBroken: its row predicate no longer compiles.
    """
    pred = row_filter(state, audience)
    return state.frame.height if pred is None else int(state.frame.select(pred.sum()).item() or 0)


def narrow_state(state: State, audience: Audience) -> State:
    """``state`` as ``audience`` sees it: its rows, and a catalog of its visible columns."""
    if audience == EVERYONE:
        return state
    visible = set(visible_names(state.catalog, audience))
    catalog = Catalog(tuple(c for c in state.catalog.columns if c.name in visible), state.catalog.next_id)
    frame = state.frame
    pred = row_filter(state, audience)
    if pred is not None:
        frame = frame.filter(pred)
    return State(frame.select([RID, *catalog.names()]), catalog, state.next_rid)


def narrow_schema(schema: Sequence[dict[str, Any]], audience: Audience) -> tuple[dict[str, Any], ...]:
    """A wire schema without the columns ``audience`` may not see."""
    if audience == EVERYONE:
        return tuple(schema)
    return tuple(
        c
        for c in schema
        if c["id"] not in audience.hide and (audience.columns is None or c["name"] in audience.columns)
    )


# ---------------------------------------------------------------- writes


def _no_column(catalog: Catalog, audience: Audience, ref: Any) -> OpError:
    what = f"id {ref}" if isinstance(ref, int) else f"'{ref}'"
    names = visible_names(catalog, audience)
    return OpError(
        ErrorCode.NO_SUCH_COLUMN, f"no column {what}; columns are {', '.join(names) or '(none)'}", column=ref
    )


def _check_column(catalog: Catalog, audience: Audience, ref: Any) -> None:
    hidden = hidden_names(catalog, audience)
    for c in catalog.columns:
        if (c.id == ref) if isinstance(ref, int) else (c.name == ref):
            if c.name in hidden:
                raise _no_column(catalog, audience, ref)
            return
    raise _no_column(catalog, audience, ref)


def _check_visible(state: State, audience: Audience, rows: Sequence[int]) -> None:
    try:
        req = np.asarray(rows, dtype=np.uint64)
    except (OverflowError, ValueError, TypeError):
        return  # not rids at all: the op's own check says so
    seen = visible_rids(state, audience, req)
    missing = np.setdiff1d(np.unique(req), seen, assume_unique=True)
    if len(missing):
        raise missing_rows(missing)  # exactly what a missing row gets


def check_ops(state: State, audience: Audience, ops: Sequence[Op], *, undo: bool = False) -> None:
    """Refuse what ``audience`` may not do with ``ops`` against ``state`` (before applying them).

    Only ops that address rows by rid; only visible columns; only visible
    rows (a hidden row is ``no_such_row``, exactly as a missing one). An
    undo or redo (``undo=True``) may also restore the rows it deleted.

    Raises:
        OpError: ``forbidden``, ``no_such_column`` or ``no_such_row``, with ``op_index``.
    """
    for i, op in enumerate(ops):
        try:
            if isinstance(op, SetCells):
                _check_column(state.catalog, audience, op.col)
                _check_visible(state, audience, op.rows)
            elif isinstance(op, Delete) and op.rows is not None and op.where is None:
                _check_visible(state, audience, op.rows)
            elif isinstance(op, RestoreRows) and undo:
                pass  # the user's own deleted rows; check_kept sees that they come back visible
            elif isinstance(op, Insert):
                if RID in op.rows.column_names:  # a chosen rid could probe for hidden rows
                    raise OpError(
                        ErrorCode.FORBIDDEN,
                        "an insert under a row or column policy may not give '_rid': the server assigns it",
                        op="insert",
                    )
                for name in op.rows.column_names:
                    _check_column(state.catalog, audience, name)
            else:
                raise OpError(
                    ErrorCode.FORBIDDEN,
                    f"'{op.op}' is not allowed under a row or column policy: only set, insert and"
                    " delete by rows (ops that address rows by rid); ask an admin",
                    op=op.op,
                    allowed=list(ROW_OPS),
                )
        except OpError as e:
            e.details.setdefault("op_index", i)
            raise


def check_kept(state: State, audience: Audience, rids: Iterable[int]) -> None:
    """Refuse a write that leaves a row it set, inserted or restored outside ``audience`` (``WITH CHECK``).

    Raises:
        OpError: ``forbidden``, naming up to 5 rids.
    """
    req = np.unique(np.asarray(list(rids), dtype=np.uint64))
    if audience.rows is None or not len(req):
        return
    present, _ = row_positions(state, req)
    req = req[present]  # rows the batch deleted afterwards are not kept anywhere
    out = np.setdiff1d(req, visible_rids(state, audience, req), assume_unique=True)
    if len(out):
        shown = ", ".join(str(int(r)) for r in out[:5])
        raise OpError(
            ErrorCode.FORBIDDEN,
            f"this write would move row {shown} out of the rows you may see; it was not applied",
            rids=[int(r) for r in out[:5]],
        )
