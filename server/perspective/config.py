"""View configs against a room's columns: name checks, refused expressions, schema-change rewrites.

:func:`protocol.check_view_config` has already checked the shape. Here the
column names are checked against the room (so the error names the key and
the column), expressions that could run without bound are refused
(:func:`check_expressions`), defaults are filled in, and after a rename or a
drop a live view's config is rewritten (or found impossible to keep).
"""

from __future__ import annotations

import re
from typing import Any

from protocol import CoframeError, ErrorCode

__all__ = [
    "ViewConfigError",
    "check_columns",
    "check_expression",
    "check_expressions",
    "referenced",
    "remap",
    "for_perspective",
]


class ViewConfigError(CoframeError):
    """A config that names a column the room does not have (``no_such_column``), or that
    Perspective rejects (``bad_view``)."""

    code = ErrorCode.BAD_VIEW
    status = 400

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message, code=code, details=details)


def referenced(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (config key, column name) the config refers to."""
    out: list[tuple[str, str]] = []
    for key in ("columns", "group_by", "split_by"):
        out += [(key, c) for c in config.get(key, ())]
    out += [("aggregates", c) for c in config.get("aggregates", {})]
    out += [("filter", clause[0]) for clause in config.get("filter", ())]
    out += [("sort", clause[0]) for clause in config.get("sort", ())]
    return out


def check_columns(config: dict[str, Any], columns: list[str]) -> None:
    """Raise :class:`ViewConfigError` (``no_such_column``) naming the first unknown column.

    Expression names count as columns.
    """
    known = set(columns) | set(config.get("expressions", {}))
    for key, name in referenced(config):
        if name not in known:
            listed = ", ".join(c for c in columns if c != "_rid")
            raise ViewConfigError(
                ErrorCode.NO_SUCH_COLUMN,
                f"view config '{key}' names column '{name}', which is not in the table; columns: {listed}",
                field=f"config.{key}",
                column=name,
            )


# ExprTK's loops, as whole words in any case (its keywords are case-insensitive).
_LOOP = re.compile(r"\b(for|while|repeat)\b", re.IGNORECASE | re.ASCII)
# A vector: declared as ``var v[n]`` (or ``var v[] := {...}``) and indexed as ``v[i]``.
# Perspective's expressions have no other use of brackets, so any bracket outside
# a string or a column name is refused (a comment between ``var`` and ``v[`` too).
_VECTOR = re.compile(r"[\[\]]")
_QUOTES = "'\""  # ExprTK string literals ('...') and Perspective column names ("...")


def _code(text: str, *, escapes: bool) -> str:
    """``text`` with the inside of every string literal and column name blanked out.

    With ``escapes``, a backslash escapes the next character inside quotes;
    without, it is an ordinary character. :func:`check_expression` reads
    both, so a quote that one reading ends and the other does not cannot hide
    code from it. An unclosed quote runs to the end.
    """
    out: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote is None:
            out.append(c)
            if c in _QUOTES:
                quote = c
        elif escapes and c == "\\":
            out.append("  ")
            i += 1
        elif c == quote:
            out.append(c)
            quote = None
        else:
            out.append(" ")
        i += 1
    return "".join(out)


def check_expressions(config: dict[str, Any]) -> None:
    """Refuse (``bad_view``) a config with an expression that declares a vector or loops.

    See :func:`check_expression`.

    Raises:
        ViewConfigError: ``bad_view``, naming the expression and what it uses.
    """
    for name, text in config.get("expressions", {}).items():
        check_expression(name, text)


def check_expression(name: str, text: str) -> None:
    """Refuse (``bad_view``) the expression ``text`` (named ``name``) if it declares a vector or loops.

    Perspective evaluates expressions (ExprTK) inside the Perspective engine
    every view shares, per row, with no bound on a vector's size, and its
    loop limit does not hold for vector work (``var v[10000000] := {0}``
    ran for minutes per row). So ``var x[...]`` (any ``[`` or ``]``),
    ``for``, ``while`` and ``repeat`` (whole words, any case) outside string
    literals and column names are refused before Perspective sees them. A
    comment naming them is refused too.

    Raises:
        ViewConfigError: ``bad_view``, naming the expression and what it uses.
    """
    for code in (_code(text, escapes=True), _code(text, escapes=False)):
        loop = _LOOP.search(code)
        what = f"a '{loop.group(1).lower()}' loop" if loop else None
        if what is None and _VECTOR.search(code):
            what = "a vector ('[' or ']')"
        if what is not None:
            raise ViewConfigError(
                ErrorCode.BAD_VIEW,
                f"view expression '{name}' uses {what}, which coframe does not run: vectors and loops"
                " can take unbounded time and memory in the Perspective engine every view shares."
                ' Write it as one formula per row (e.g. "price" * "qty", or if ... else ...),'
                " or compute the column with an add_column op",
                field="config.expressions",
                expression=name,
            )


def for_perspective(config: dict[str, Any]) -> dict[str, Any]:
    """The config handed to ``table.view``: grouped views default to ``group_rollup_mode="flat"``
    (the groups only, no total row), so the result is one row per group."""
    out = dict(config)
    if out.get("group_by") and "group_rollup_mode" not in out:
        out["group_rollup_mode"] = "flat"
    return out


def remap(
    config: dict[str, Any], renamed: dict[str, str], dropped: set[str]
) -> tuple[dict[str, Any], str | None]:
    """``config`` after columns were renamed (old -> new) and dropped.

    A dropped column is simply left out of ``columns``; anywhere else
    (group_by, split_by, aggregates, filter, sort) the view cannot be kept,
    and the second item says why.
    """
    for key, name in referenced(config):
        if name in dropped and key != "columns":
            return config, f"column '{name}' (in '{key}') was dropped"

    def ren(name: str) -> str:
        return renamed.get(name, name)

    out = dict(config)
    for key in ("group_by", "split_by"):
        if key in out:
            out[key] = [ren(c) for c in out[key]]
    if "columns" in out:
        out["columns"] = [ren(c) for c in out["columns"] if c not in dropped]
    if "aggregates" in out:
        out["aggregates"] = {ren(c): a for c, a in out["aggregates"].items()}
    for key in ("filter", "sort"):
        if key in out:
            out[key] = [[ren(clause[0]), *clause[1:]] for clause in out[key]]
    if "expressions" in out:
        # Expressions quote column names: "price" * 2.
        exprs = {}
        for name, text in out["expressions"].items():
            for old, new in renamed.items():
                text = text.replace(f'"{old}"', f'"{new}"')
            exprs[name] = text
        out["expressions"] = exprs
    return out, None
