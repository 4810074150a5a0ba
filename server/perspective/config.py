"""View configs against a room's columns: name checks, refused expressions, schema-change rewrites.

:func:`protocol.check_view_config` has already checked the shape. Here the
column names are checked against the room (so the error names the key and
the column), expressions too long to parse are refused
(:func:`check_expressions`), defaults are filled in, and after a rename or a
drop a live view's config is rewritten (or found impossible to keep).
"""

from __future__ import annotations

from typing import Any

from protocol import CoframeError, ErrorCode

__all__ = [
    "ViewConfigError",
    "check_columns",
    "check_expression",
    "check_expressions",
    "MAX_EXPRESSION_CHARS",
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


#: An expression longer than this is refused (``bad_view``) before Perspective parses it.
MAX_EXPRESSION_CHARS = 10_000


def check_expressions(config: dict[str, Any]) -> None:
    """Refuse (``bad_view``) a config with an expression too long to parse (:func:`check_expression`).

    Raises:
        ViewConfigError: ``bad_view``, naming the expression.
    """
    for name, text in config.get("expressions", {}).items():
        check_expression(name, text)


def check_expression(name: str, text: str) -> None:
    """Refuse (``bad_view``) expression ``text`` (named ``name``) over :data:`MAX_EXPRESSION_CHARS`.

    Vectors and loops are allowed: Perspective runs in the views process,
    where every request has a time budget (``views_timeout``) and the
    process a memory budget (``views_memory_bytes``). A view whose
    expression runs over either is closed with the reason and the process
    restarted (docs/architecture.md "Live views"). Only the text's length
    is checked here, so that parsing it is bounded too.

    Raises:
        ViewConfigError: ``bad_view``, naming the expression and the limit.
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ViewConfigError(
            ErrorCode.BAD_VIEW,
            f"view expression '{name}' is {len(text):,} characters long, over the limit of"
            f" {MAX_EXPRESSION_CHARS:,}; shorten it, or compute the column with an add_column op",
            field="config.expressions",
            expression=name,
            limit=MAX_EXPRESSION_CHARS,
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
