"""Arrow IPC payload codec and JSON row conversion (PROTOCOL.md "Tables")."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import math
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .errors import ErrorCode, ProtocolError

__all__ = [
    "IPC_CODECS",
    "SNAPSHOT_CODECS",
    "table_to_ipc",
    "table_from_ipc",
    "frame_to_parquet",
    "snapshot_from_bytes",
    "table_to_rows",
    "json_value",
]


IPC_CODECS = ("zstd", "lz4")
# What a client may list in hello.codecs: "parquet" (a big welcome snapshot as
# one Parquet file) or an Arrow IPC buffer compression.
SNAPSHOT_CODECS = ("parquet", *IPC_CODECS)
PARQUET_MAGIC = b"PAR1"


def table_to_ipc(table: pa.Table, compression: str | None = None) -> bytes:
    """Serialize a table as one Arrow IPC stream.

    ``compression`` (``zstd`` or ``lz4``) uses Arrow IPC buffer compression;
    only for peers that listed it in ``hello.codecs`` (PROTOCOL.md "Frames").
    """
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression) if compression else None
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_ipc(data: bytes, path: str = "table") -> pa.Table:
    """Read one Arrow IPC stream; raise ProtocolError naming ``path`` if it is not one.

    The bytes come from a peer, so the table is fully validated: the IPC reader
    checks only the framing, and a table with bad offsets or null counts would
    fault later, far from the frame that carried it.
    """
    try:
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            table = reader.read_all()
        table.validate(full=True)
        return table
    except (pa.ArrowException, OSError, ValueError) as e:  # ValueError: names not UTF-8
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"field '{path}' is not an Arrow IPC stream ({e})", field=path
        ) from None


def frame_to_parquet(df: pl.DataFrame) -> bytes:
    """``df`` as one Parquet file (lz4 pages): a welcome snapshot for a client that listed "parquet".

    A quarter of the Arrow IPC bytes, and Polars reads it straight into its
    own string layout, with no Arrow conversion and no separate validation.
    """
    buf = io.BytesIO()
    df.write_parquet(buf, compression="lz4", statistics=False)
    return buf.getvalue()


def snapshot_from_bytes(data: bytes, path: str = "snapshot") -> pa.Table | pl.DataFrame:
    """A welcome snapshot: a Parquet file (a Polars frame) or an Arrow IPC stream (a table).

    Raises:
        ProtocolError: ``bad_field`` naming ``path`` if it is neither.
    """
    if data[:4] != PARQUET_MAGIC:
        return table_from_ipc(data, path)
    try:
        return pl.read_parquet(data)
    except (pl.exceptions.PolarsError, OSError, ValueError) as e:
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"field '{path}' is not a Parquet file ({e})", field=path
        ) from None


def json_value(v: Any) -> Any:
    """Map one Arrow-derived Python value to a JSON-friendly value."""
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, float) and not math.isfinite(v):  # NaN and infinities are not JSON
        return None
    if isinstance(v, list):
        return [json_value(x) for x in v]
    if isinstance(v, dict):
        return {k: json_value(x) for k, x in v.items()}
    return v


def _column_values(column: pa.ChunkedArray) -> list[Any]:
    try:
        return column.to_pylist()
    except (OverflowError, ValueError):
        # A date or duration Python cannot hold (year 10000 and on): Arrow's own text.
        return pc.cast(column, pa.string()).to_pylist()


def table_to_rows(table: pa.Table) -> list[dict[str, Any]]:
    """A table as a list of row dicts with JSON-friendly values."""
    try:
        rows = table.to_pylist()
    except (OverflowError, ValueError):
        names = table.column_names
        rows = [dict(zip(names, r)) for r in zip(*(_column_values(c) for c in table.columns))]
    return [{k: json_value(v) for k, v in row.items()} for row in rows]
