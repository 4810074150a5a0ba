"""Import and export: read and write frames as CSV, Parquet, JSON, NDJSON and Arrow IPC.

The public face of file I/O. Format names, format detection and
:class:`ReadError` live in :mod:`server.io_formats`; readers (with progress)
in :mod:`server.io_read`; both are re-exported here. Writing lives here:
writers produce bytes (HTTP) or a file written atomically (CLI), and
:func:`diff_table` lays a diff out as one table for export.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import polars as pl
import pyarrow as pa

from protocol import ErrorCode
from protocol.dtypes import RID_ARROW, WIRE_COMPAT

from .io_formats import (
    DEFAULT_MAX_BYTES,
    FORMATS,
    ReadError,
    check_format,
    content_type,
    extension,
    format_from_content_type,
    format_from_name,
    sniff_format,
)
from .io_read import Progress, Source, load_file, read_frame

__all__ = [
    "FORMATS",
    "DEFAULT_MAX_BYTES",
    "ReadError",
    "Progress",
    "Source",
    "check_format",
    "format_from_name",
    "format_from_content_type",
    "sniff_format",
    "content_type",
    "extension",
    "read_frame",
    "load_file",
    "write_frame",
    "write_file",
    "diff_table",
]


def _write(df: pl.DataFrame, fmt: str, out: IO[bytes]) -> None:
    if fmt == "csv":
        df.write_csv(out)
    elif fmt == "parquet":
        df.write_parquet(out)
    elif fmt == "arrow":  # the wire's compat level: large_string, readable by any Arrow tool
        df.write_ipc(out, compat_level=WIRE_COMPAT)
    elif fmt == "json":
        df.write_json(out)
    else:
        df.write_ndjson(out)


def _umask() -> int:
    """The process umask, read without changing it (Linux), else the common 022."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_frame(df: pl.DataFrame, fmt: str) -> bytes:
    """``df`` encoded as ``fmt`` (JSON: an array of objects)."""
    buf = io.BytesIO()
    _write(df, check_format(fmt), buf)
    return buf.getvalue()


def write_file(df: pl.DataFrame, path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """Write ``df`` to ``path`` atomically (a temp file in the same directory, then a rename).

    Returns the format used. Raises ReadError ``bad_format`` if none is given or implied by the extension.
    """
    p = Path(path)
    fmt = check_format(fmt) if fmt else format_from_name(p)
    if fmt is None:
        raise ReadError(
            ErrorCode.BAD_FORMAT,
            f"cannot tell the format of {path}; use .parquet, .csv, .arrow, .json or .ndjson",
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as out:
            _write(df, fmt, out)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return fmt


def diff_table(diff: Any) -> pa.Table:
    """One table for a :class:`~server.storage.diff.Diff`, as Parquet carries it.

    Columns ``kind`` (``added`` | ``deleted`` | ``changed``), ``rid``, then
    ``column_id``, ``column``, ``old``, ``new`` (null for added and deleted
    rows). The schema changes and the summary go in the key-value metadata as
    JSON under ``coframe.schema`` and ``coframe.summary``.
    """
    tables = diff.to_arrow()
    changed = tables["changed"]
    parts = []
    for kind in ("added", "deleted"):
        rids = tables[kind].column("rid")
        n = len(rids)
        parts.append(
            pa.table(
                {
                    "kind": pa.array([kind] * n, pa.string()),
                    "rid": rids.cast(RID_ARROW),
                    "column_id": pa.nulls(n, pa.int64()),
                    "column": pa.nulls(n, pa.string()),
                    "old": pa.nulls(n, pa.string()),
                    "new": pa.nulls(n, pa.string()),
                }
            )
        )
    n = changed.num_rows
    parts.append(
        pa.table(
            {
                "kind": pa.array(["changed"] * n, pa.string()),
                "rid": changed.column("rid").cast(RID_ARROW),
                "column_id": changed.column("column_id").cast(pa.int64()),
                "column": changed.column("column").cast(pa.string()),
                "old": changed.column("old").cast(pa.string()),
                "new": changed.column("new").cast(pa.string()),
            }
        )
    )
    table = pa.concat_tables(parts)
    meta = {
        b"coframe.schema": json.dumps([dict(c) for c in diff.schema]).encode(),
        b"coframe.summary": json.dumps(diff.summary()).encode(),
    }
    return table.replace_schema_metadata(meta)
