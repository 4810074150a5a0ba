"""Sandboxed user expressions: ``add_column(expr=...)`` and ``delete(where=...)``.

Expressions are Polars SQL (``pl.sql_expr``) over the room's own columns and
nothing else (PROTOCOL.md "Expressions"). Three layers keep them there:

1. a tokenizer that respects quoted strings and identifiers rejects comments,
   semicolons, statement keywords (SELECT, FROM, ...), file and table
   functions (``read_*``, ``scan_*`` and a denylist) and non-deterministic
   functions (a WAL replay must compute the same column);
2. Polars compiles what is left, and any error becomes ``bad_expr``;
3. the compiled expression must not hold a subplan, must produce one column,
   and may only read the given columns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import polars as pl

from protocol import ErrorCode

from .state import OpError

__all__ = ["compile_expr", "MAX_EXPR_LEN", "BANNED_KEYWORDS", "BANNED_FUNCTIONS", "EXPR_FAILURES"]

# What compiling or evaluating a user expression may raise. A Rust panic
# surfaces as PanicException, which is a BaseException, not an Exception.
EXPR_FAILURES: tuple[type[BaseException], ...] = (Exception, pl.exceptions.PanicException)

MAX_EXPR_LEN = 2000

BANNED_KEYWORDS = frozenset(
    {
        "select", "from", "join", "union", "with", "into", "insert", "update", "delete",
        "create", "drop", "copy", "attach", "detach", "alter", "truncate", "explain",
        "pragma", "except", "intersect", "table",
    }
)  # fmt: skip
# Functions that touch files, tables or the outside world, whatever their name.
_IO_FUNCTIONS = frozenset(
    {
        "sql", "load", "glob", "file", "open", "url", "install", "import", "export",
        "pg_read_file", "pg_ls_dir", "lo_import", "system", "exec", "execute", "shell",
        "getenv", "env", "unnest", "generate_series", "range",
    }
)  # fmt: skip
# Functions whose value changes between runs; a replayed op must give the same column.
_NONDETERMINISTIC = frozenset(
    {
        "now", "current_date", "current_time", "current_timestamp", "localtime",
        "localtimestamp", "random", "rand", "uuid", "gen_random_uuid", "today",
    }
)  # fmt: skip
BANNED_FUNCTIONS = _IO_FUNCTIONS | _NONDETERMINISTIC

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<str>'(?:[^']|'')*')
    | (?P<qid>"(?:[^"]|"")*")
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<op>::|<=|>=|<>|!=|\|\||[-+*/%<>=(),.\[\]:|&^~!])
    """,
    re.VERBOSE,
)


def _bad(message: str, **details: Any) -> OpError:
    return OpError(ErrorCode.BAD_EXPR, message, **details)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, offset) for each token, whitespace dropped.

    Raises:
        OpError: ``bad_expr`` for a comment, a semicolon, an unterminated
            quote or any character outside the expression grammar.
    """
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        two = text[pos : pos + 2]
        if two in ("--", "/*"):
            raise _bad(f"comments ('{two}') are not allowed in an expression (at offset {pos})")
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            if ch == ";":
                raise _bad(f"';' at offset {pos} is not allowed: send a single expression, not statements")
            if ch in "'\"":
                raise _bad(f"unterminated {'string' if ch == chr(39) else 'quoted name'} at offset {pos}")
            raise _bad(f"character {ch!r} at offset {pos} is not allowed in an expression")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group(), pos))
        pos = m.end()
    return out


def _check_tokens(tokens: list[tuple[str, str, int]]) -> None:
    for i, (kind, word, pos) in enumerate(tokens):
        if kind != "word":
            continue
        low = word.lower()
        called = i + 1 < len(tokens) and tokens[i + 1][1] == "("
        if low in BANNED_KEYWORDS:
            raise _bad(
                f"'{word}' (offset {pos}) is not allowed: an expression is a formula over this"
                " table's columns, with no queries, subqueries or statements"
                f' (write "{word}" in double quotes if it is a column name)',
                token=word,
            )
        if low.startswith(("read_", "scan_")) or (called and low in _IO_FUNCTIONS):
            raise _bad(
                f"function '{word}' is not allowed: expressions cannot read files or other tables",
                token=word,
            )
        if low in _NONDETERMINISTIC and (called or low.startswith(("current_", "local"))):
            raise _bad(
                f"function '{word}' is not allowed: its value changes from run to run, and an"
                " op must give the same result when it is replayed; compute it on the client",
                token=word,
            )


def _has_subplan(expr: pl.Expr) -> bool:
    """True if the compiled expression embeds a query plan (a subquery)."""
    try:
        tree = json.loads(expr.meta.serialize(format="json"))
    except EXPR_FAILURES:  # unserializable: fall back to the printed plan
        return ".subplan(" in str(expr)
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("SubPlan", "DataFrameScan", "Scan") or k.endswith("Scan"):
                    return True
                stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)
    return False


def compile_expr(text: str, columns: Sequence[str]) -> pl.Expr:
    """Compile a sandboxed Polars SQL expression that may read only ``columns``.

    Raises:
        OpError: ``bad_expr`` saying what is not allowed (or what did not
            parse); ``no_such_column`` naming a column not in ``columns``.
    """
    if not isinstance(text, str) or not text.strip():
        raise _bad("the expression is empty; send a Polars SQL expression such as 'price * qty'")
    if len(text) > MAX_EXPR_LEN:
        raise _bad(f"the expression is {len(text)} characters long; the limit is {MAX_EXPR_LEN}")
    _check_tokens(_tokens(text))
    try:
        expr = pl.sql_expr(text)
    except EXPR_FAILURES as e:  # any Polars failure is the user's expression
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _bad(f"could not compile the expression: {first[:300]}", expr=text[:200]) from None
    if not isinstance(expr, pl.Expr):
        raise _bad("send exactly one expression")
    if _has_subplan(expr):
        raise _bad("subqueries are not allowed: an expression may only use this table's columns")
    try:
        multiple = expr.meta.has_multiple_outputs() or expr.meta.is_regex_projection()
        roots = expr.meta.root_names()
    except EXPR_FAILURES as e:
        raise _bad(f"could not inspect the expression: {str(e).splitlines()[0][:300]}") from None
    if multiple:
        raise _bad("the expression must give one column; COLUMNS(...) and wildcards are not allowed")
    known = set(columns)
    for name in roots:
        if name not in known:
            raise OpError(
                ErrorCode.NO_SUCH_COLUMN,
                f"the expression uses column '{name}', which does not exist;"
                f" columns are {', '.join(columns) or '(none)'}",
                column=name,
            )
    return expr
