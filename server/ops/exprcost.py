"""What a user expression may cost (PROTOCOL.md §4 "Expressions", §10).

The sandbox (:mod:`.sandbox`) limits which functions an expression may call;
this module bounds what it costs, in two steps:

1. **Statically**, before anything is evaluated: a literal that sets an
   output size (the target length of ``lpad``/``rpad``, the only Polars SQL
   functions that take one) must be at most ``max_literal``; a length that
   is not a literal (a column, a computed value) is allowed only when the
   evaluator bounds memory and time. Over → ``too_expensive``.
2. **At run time**, by the evaluator an :class:`ExprCost` carries. The pure
   default evaluates in process; the rooms layer plugs in worker processes
   with a memory and a time limit (``server/rooms/exprpool.py``), which call
   :func:`evaluate_ipc` on the columns the expression reads.

An evaluator returns one value per row: a scalar result (an aggregate such as
``string_agg``) is broadcast to every row where it is evaluated, so its cost
is paid there and not in the room.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from protocol import ErrorCode

from .sandbox import EXPR_FAILURES, compile_expr
from .state import RID, OpError, State

__all__ = [
    "DEFAULT_MAX_LITERAL",
    "Evaluate",
    "ExprCost",
    "IN_PROCESS",
    "TRUSTED",
    "check_cost",
    "evaluate_expr",
    "evaluate_in_process",
    "evaluate_ipc",
    "frame_to_ipc",
    "series_from_ipc",
]

DEFAULT_MAX_LITERAL = 100_000  # server.settings.Settings.expr_max_literal

Evaluate = Callable[[pl.DataFrame, str], pl.Series]
"""``evaluate(frame, text)``: ``text`` over ``frame`` (the columns it reads), one value per row.

Raises ``OpError``: ``bad_expr`` if the expression fails on the data,
``too_expensive`` if it is over the evaluator's memory or time limit."""

_PADS = {"PadStart": "lpad", "PadEnd": "rpad"}


def evaluate_in_process(frame: pl.DataFrame, text: str) -> pl.Series:
    """``text`` over ``frame`` in this process, one value per row (a scalar is broadcast).

    Raises:
        OpError: ``bad_expr`` (it does not compile, or fails on this data).
    """
    expr = compile_expr(text, frame.columns)
    try:
        out = frame.select(expr.alias("value")).to_series()
    except EXPR_FAILURES as e:  # the user's expression failed on this data
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OpError(ErrorCode.BAD_EXPR, f"could not evaluate {text[:200]!r}: {first[:300]}") from None
    n = frame.height
    if len(out) == 1 and n != 1:
        out = out.gather(np.zeros(n, dtype=np.int64))
    return out


@dataclass(frozen=True, slots=True)
class ExprCost:
    """How expressions are evaluated, and the static limit checked before.

    ``max_literal`` None checks nothing (WAL replay: the op passed the limits
    when it was accepted, and a lowered limit must not stop a room loading).
    ``bounded`` says that ``evaluate`` bounds memory and time itself.
    """

    evaluate: Evaluate = evaluate_in_process
    max_literal: int | None = DEFAULT_MAX_LITERAL
    bounded: bool = False


IN_PROCESS = ExprCost()
TRUSTED = ExprCost(max_literal=None)


def _too_expensive(message: str, **details: Any) -> OpError:
    return OpError(ErrorCode.TOO_EXPENSIVE, message, **details)


def check_cost(expr: pl.Expr, cost: ExprCost) -> None:
    """The static check: every ``lpad``/``rpad`` length is a literal within ``cost.max_literal``.

    Raises:
        OpError: ``too_expensive``, naming the function, the length and the limit.
    """
    limit = cost.max_literal
    if limit is None:
        return
    for name, length in _pad_lengths(expr):
        value = None if length is None else _literal(length)
        if value is None or math.isnan(value):
            if cost.bounded:
                continue  # the worker's memory and time limits bound it
            raise _too_expensive(
                f"the length of {name}() must be a number here (at most {limit:,}), not a value"
                " computed from the data: this server cannot bound what such an expression costs;"
                " write the length as a number",
                function=name,
                limit=limit,
            )
        if value > limit:
            raise _too_expensive(
                f"{name}() to {value:,.0f} characters is over the limit of {limit:,} characters"
                f" per value (expr_max_literal); pad to at most {limit:,}, or build such values"
                " on the client and insert them",
                function=name,
                length=value if math.isinf(value) else int(value),
                limit=limit,
            )


def _pad_lengths(expr: pl.Expr) -> Iterator[tuple[str, Any]]:
    """(``lpad``/``rpad``, the length argument's serialized tree, or None if unknown) for each pad."""
    try:
        tree = json.loads(expr.meta.serialize(format="json"))
    except EXPR_FAILURES:  # unserializable: every pad's length is unknown
        text = str(expr)
        for fn, name in (("pad_start", "lpad"), ("pad_end", "rpad")):
            if f".{fn}(" in text:
                yield name, None
        return
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        fn = node.get("Function")
        if isinstance(fn, dict):
            kind = fn.get("function")
            string_fn = kind.get("StringExpr") if isinstance(kind, dict) else None
            inputs = fn.get("input")
            if isinstance(string_fn, dict) and isinstance(inputs, list):
                for key, name in _PADS.items():
                    if key in string_fn:
                        yield name, inputs[1] if len(inputs) > 1 else None
        stack.extend(node.values())


_BINARY = {
    "Plus": lambda a, b: a + b,
    "Minus": lambda a, b: a - b,
    "Multiply": lambda a, b: a * b,
    "Mul": lambda a, b: a * b,
    "Divide": lambda a, b: a / b,
    "TrueDivide": lambda a, b: a / b,
    "Div": lambda a, b: a / b,
    "FloorDivide": lambda a, b: a // b,
    "Modulus": lambda a, b: a % b,
    "Rem": lambda a, b: a % b,
}


def _literal(node: Any) -> float | None:
    """The number a constant length argument stands for, or None if it is not a plain constant.

    Understands numeric and numeric-text literals, casts, ``+ - * / %``,
    ``power`` and ``abs``; anything else (a column, any other function) is
    not a literal. Arithmetic is done in floats, so it cannot blow up.
    """
    if not isinstance(node, dict) or len(node) != 1:
        return None
    ((kind, body),) = node.items()
    try:
        if kind == "Literal":
            return _literal_value(body)
        if kind == "Cast" and isinstance(body, dict):
            return _literal(body.get("expr"))
        if kind == "BinaryExpr" and isinstance(body, dict):
            a, b = _literal(body.get("left")), _literal(body.get("right"))
            op = _BINARY.get(body.get("op", ""))
            return None if a is None or b is None or op is None else float(op(a, b))
        if kind == "Function" and isinstance(body, dict):
            args = [_literal(x) for x in body.get("input") or []]
            if any(a is None for a in args):
                return None
            fn = body.get("function")
            if fn == {"Sql": "ToFloat"} and len(args) == 1:
                return args[0]
            if isinstance(fn, dict) and "Sql" in fn and isinstance(fn["Sql"], dict) and len(args) == 2:
                op = _BINARY.get(fn["Sql"].get("Binary", ""))
                return None if op is None else float(op(args[0], args[1]))  # type: ignore[arg-type]
            if isinstance(fn, dict) and "Pow" in fn and len(args) == 2:
                return float(args[0]) ** float(args[1])  # type: ignore[arg-type]
            if fn == "Abs" and len(args) == 1:
                return abs(args[0])  # type: ignore[arg-type]
    except OverflowError:
        return math.inf
    except (ArithmeticError, TypeError, ValueError):
        return None
    return None


def _literal_value(body: Any) -> float | None:
    if not isinstance(body, dict) or len(body) != 1:
        return None
    ((kind, inner),) = body.items()
    if not isinstance(inner, dict) or len(inner) != 1:
        return None
    ((tag, value),) = inner.items()
    if tag == "Null":
        return 0.0  # a null length gives null values
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if tag == "String" and isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    if tag == "Decimal" and isinstance(value, list) and len(value) == 3:
        return float(value[0]) / 10.0 ** int(value[2])
    return None


def frame_to_ipc(frame: pl.DataFrame) -> bytes:
    """``frame`` as an Arrow IPC stream (what a worker receives)."""
    buf = io.BytesIO()
    frame.write_ipc_stream(buf)
    return buf.getvalue()


def series_from_ipc(data: bytes | memoryview) -> pl.Series:
    """The one column of an Arrow IPC stream (what a worker answers)."""
    return pl.read_ipc_stream(io.BytesIO(data)).to_series()


def evaluate_ipc(text: str, data: bytes | memoryview) -> bytes:
    """A worker's job: ``text`` over the IPC frame ``data``; the values as an IPC stream.

    The values are written without Arrow string views, so every value is
    materialised here: a scalar broadcast to every row costs its full size in
    the worker, not later in the room.

    Raises:
        OpError: ``bad_expr``. MemoryError: over the worker's memory.
    """
    frame = pl.read_ipc_stream(io.BytesIO(data))
    out = evaluate_in_process(frame, text)
    buf = io.BytesIO()
    pl.DataFrame([out]).write_ipc_stream(buf, compat_level=pl.CompatLevel.oldest())
    return buf.getvalue()


def evaluate_expr(state: State, text: str, cost: ExprCost = IN_PROCESS) -> pl.Series:
    """A sandboxed expression's values over ``state``, one per row, within ``cost``.

    Compiles ``text`` (the sandbox), checks its literals (:func:`check_cost`),
    then hands ``cost.evaluate`` only the columns it reads, plus ``_rid``
    (which keeps the row count and is cheap).

    Raises:
        OpError: ``bad_expr``; ``no_such_column``; ``too_expensive``.
    """
    expr = compile_expr(text, [RID, *state.catalog.names()])
    check_cost(expr, cost)
    roots = [r for r in dict.fromkeys(expr.meta.root_names()) if r != RID]
    out = cost.evaluate(state.frame.select(RID, *roots), text)
    n = state.frame.height
    if len(out) != n:
        raise OpError(ErrorCode.BAD_EXPR, f"{text[:200]!r} gives {len(out)} values for {n} rows")
    return out
