"""The op catalog (PROTOCOL.md "Ops"): typed, frozen op classes.

Every op has ``from_wire`` (a decoded map in, validated, naming the bad
field) and ``to_wire`` (a map out; tables stay ``pyarrow.Table`` and the
envelope turns them into Arrow IPC or row dicts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from . import _fields as f
from .dtypes import RID
from .errors import ErrorCode, ProtocolError

__all__ = [
    "SetCells",
    "Insert",
    "Delete",
    "AddColumn",
    "DropColumn",
    "RenameColumn",
    "CastColumn",
    "FillNull",
    "RestoreRows",
    "RestoreColumn",
    "Op",
    "OP_TYPES",
    "CLIENT_OPS",
    "FILL_STRATEGIES",
    "op_from_wire",
    "ColRef",
]

ColRef = int | str

FILL_STRATEGIES = ("forward", "backward", "mean", "median", "min", "max", "zero", "mode")


@dataclass(frozen=True, slots=True)
class SetCells:
    """Set ``col`` of each row in ``rows`` to the matching entry of ``values``."""

    rows: tuple[int, ...]
    col: ColRef
    values: tuple[Any, ...]
    if_unchanged: bool = False
    op: ClassVar[str] = "set"

    @classmethod
    def from_wire(cls, d: dict[str, Any], path: str) -> SetCells:
        rows = f.int_list(f.req(d, "rows", f"{path}.rows"), f"{path}.rows")
        col = f.col_ref(f.req(d, "col", f"{path}.col"), f"{path}.col")
        raw = f.req(d, "values", f"{path}.values")
        if isinstance(raw, (list, tuple)):
            if len(raw) != len(rows):
                raise ProtocolError(
                    ErrorCode.BAD_FIELD,
                    f"field '{path}.values' has {len(raw)} values for {len(rows)} rows;"
                    " send one value per row, or a single scalar",
                    field=f"{path}.values",
                )
            values = f.scalar_list(raw, f"{path}.values")
        else:
            values = (f.scalar(raw, f"{path}.values"),) * len(rows)
        return cls(rows, col, values, f.opt_bool(d, "if_unchanged", f"{path}.if_unchanged"))

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op, "rows": list(self.rows), "col": self.col}
        d["values"] = list(self.values)
        if self.if_unchanged:
            d["if_unchanged"] = True
        return d


@dataclass(frozen=True, slots=True)
class Insert:
    """Insert rows; the server assigns their rids and returns them in the ack."""

    rows: pa.Table
    op: ClassVar[str] = "insert"

    @classmethod
    def from_wire(cls, d: dict[str, Any], path: str) -> Insert:
        table = f.table_field(f.req(d, "rows", f"{path}.rows"), f"{path}.rows")
        if RID in table.column_names:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"field '{path}.rows' has a '{RID}' column; the server assigns rids, drop it",
                field=f"{path}.rows",
            )
        return cls(table)

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, "rows": self.rows}


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete rows by rid, or every row matching a Polars SQL predicate."""

    rows: tuple[int, ...] | None = None
    where: str | None = None
    op: ClassVar[str] = "delete"

    @classmethod
    def from_wire(cls, d: dict[str, Any], path: str) -> Delete:
        rows = d.get("rows")
        where = f.opt_str(d, "where", f"{path}.where")
        if (rows is None) == (where is None):
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"op at '{path}' needs exactly one of 'rows' or 'where'",
                field=path,
            )
        return cls(f.int_list(rows, f"{path}.rows") if rows is not None else None, where)

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op}
        if self.rows is not None:
            d["rows"] = list(self.rows)
        else:
            d["where"] = self.where
        return d


@dataclass(frozen=True, slots=True)
class AddColumn:
    """Add a column filled with ``default`` (or null), or computed by ``expr``."""

    name: str
    dtype: str | None = None  # None: inferred from the expr's result or the default's type
    default: Any = None
    expr: str | None = None
    op: ClassVar[str] = "add_column"

    @classmethod
    def from_wire(cls, d: dict[str, Any], path: str) -> AddColumn:
        expr = f.opt_str(d, "expr", f"{path}.expr")
        default = f.scalar(d.get("default"), f"{path}.default")
        if expr is not None and default is not None:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"op at '{path}' has both 'default' and 'expr'; send one",
                field=path,
            )
        dtype = f.opt_str(d, "dtype", f"{path}.dtype")
        if dtype is None and expr is None and default is None:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"field '{path}.dtype' is required unless an 'expr' or a 'default' gives it",
                field=f"{path}.dtype",
            )
        return cls(f.req_str(d, "name", f"{path}.name"), dtype, default, expr)

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op, "name": self.name}
        if self.dtype is not None:
            d["dtype"] = self.dtype
        if self.expr is not None:
            d["expr"] = self.expr
        if self.default is not None:
            d["default"] = self.default
        return d


@dataclass(frozen=True, slots=True)
class DropColumn:
    col: ColRef
    op: ClassVar[str] = "drop_column"

    @classmethod
    def from_wire(cls, d: dict[str, Any], path: str) -> DropColumn:
        return cls(f.col_ref(f.req(d, "col", f"{path}.col"), f"{path}.col"))

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, "col": self.col}


@dataclass(frozen=True, slots=True)
class RenameColumn:
    col: ColRef
    name: str
    op: ClassVar[str] = "rename_column"

    @classmethod
    def from_wire(cls, d: dict[str, Any], path: str) -> RenameColumn:
        return cls(
            f.col_ref(f.req(d, "col", f"{path}.col"), f"{path}.col"),
            f.req_str(d, "name", f"{path}.name"),
        )

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, "col": self.col, "name": self.name}


@dataclass(frozen=True, slots=True)
class CastColumn:
    col: ColRef
    dtype: str
    strict: bool = True
    op: ClassVar[str] = "cast_column"

    @classmethod
    def from_wire(cls, d: dict[str, Any], path: str) -> CastColumn:
        return cls(
            f.col_ref(f.req(d, "col", f"{path}.col"), f"{path}.col"),
            f.req_str(d, "dtype", f"{path}.dtype"),
            f.opt_bool(d, "strict", f"{path}.strict", default=True),
        )

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, "col": self.col, "dtype": self.dtype, "strict": self.strict}


@dataclass(frozen=True, slots=True)
class FillNull:
    """Fill nulls of ``col`` with ``value``, or by ``strategy`` (FILL_STRATEGIES)."""

    col: ColRef
    value: Any = None
    strategy: str | None = None
    op: ClassVar[str] = "fill_null"

    @classmethod
    def from_wire(cls, d: dict[str, Any], path: str) -> FillNull:
        value = f.scalar(d.get("value"), f"{path}.value")
        strategy = f.opt_str(d, "strategy", f"{path}.strategy")
        if (value is None) == (strategy is None):
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"op at '{path}' needs exactly one of 'value' (not null) or 'strategy'",
                field=path,
            )
        if strategy is not None and strategy not in FILL_STRATEGIES:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"field '{path}.strategy' is {strategy!r}; use one of {', '.join(FILL_STRATEGIES)}",
                field=f"{path}.strategy",
            )
        return cls(f.col_ref(f.req(d, "col", f"{path}.col"), f"{path}.col"), value, strategy)

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op, "col": self.col}
        if self.strategy is not None:
            d["strategy"] = self.strategy
        else:
            d["value"] = self.value
        return d


@dataclass(frozen=True, slots=True)
class RestoreRows:
    """Server-internal (undo of delete): put rows back with their original rids."""

    rows: pa.Table  # includes _rid
    op: ClassVar[str] = "restore_rows"

    @classmethod
    def from_wire(cls, d: dict[str, Any], path: str) -> RestoreRows:
        return cls(f.table_field(f.req(d, "rows", f"{path}.rows"), f"{path}.rows"))

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, "rows": self.rows}


@dataclass(frozen=True, slots=True)
class RestoreColumn:
    """Server-internal (undo of drop or cast): put a column back as it was."""

    id: int
    name: str
    dtype: str
    position: int
    values: pa.Table  # _rid, value
    op: ClassVar[str] = "restore_column"

    @classmethod
    def from_wire(cls, d: dict[str, Any], path: str) -> RestoreColumn:
        return cls(
            f.req_int(d, "id", f"{path}.id"),
            f.req_str(d, "name", f"{path}.name"),
            f.req_str(d, "dtype", f"{path}.dtype"),
            f.req_int(d, "position", f"{path}.position"),
            f.table_field(f.req(d, "values", f"{path}.values"), f"{path}.values"),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "id": self.id,
            "name": self.name,
            "dtype": self.dtype,
            "position": self.position,
            "values": self.values,
        }


Op = (
    SetCells
    | Insert
    | Delete
    | AddColumn
    | DropColumn
    | RenameColumn
    | CastColumn
    | FillNull
    | RestoreRows
    | RestoreColumn
)

OP_TYPES: dict[str, Any] = {
    c.op: c
    for c in (
        SetCells,
        Insert,
        Delete,
        AddColumn,
        DropColumn,
        RenameColumn,
        CastColumn,
        FillNull,
        RestoreRows,
        RestoreColumn,
    )
}
# Ops a client may send; restore_* exist for undo and the WAL only.
CLIENT_OPS = frozenset(k for k in OP_TYPES if not k.startswith("restore_"))


def op_from_wire(d: Any, path: str, *, internal: bool = False) -> Op:
    """Decode one op map. ``internal`` admits the server-only restore ops."""
    if not isinstance(d, dict):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"field '{path}' must be an op object", field=path)
    name = d.get("op")
    if not isinstance(name, str) or name not in (OP_TYPES if internal else CLIENT_OPS):
        raise ProtocolError(
            ErrorCode.BAD_OP,
            f"field '{path}.op' is {name!r}; use one of {', '.join(sorted(CLIENT_OPS))}",
            field=f"{path}.op",
        )
    op: Op = OP_TYPES[name].from_wire(d, path)
    return op
