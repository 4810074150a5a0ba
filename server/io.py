"""Import and export: read and write frames as CSV, Parquet, JSON, NDJSON and Arrow IPC.

Readers take bytes, a binary file object or a path, and raise
:class:`ReadError` with a message that says what was wrong and what to do.
They can report progress (``on_progress(done, total)``, ``total`` None when
unknown): CSV in row batches, Parquet by row group, Arrow IPC by record
batch. Writers produce bytes (HTTP) or a file written atomically (CLI).

The format of an input comes from an explicit name, a Content-Type, a file
extension, or, last, its first bytes (:func:`sniff_format`).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from protocol import CoframeError, ErrorCode
from protocol.dtypes import RID_ARROW, WIRE_COMPAT

from .settings import MAX_UPLOAD_BYTES

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

FORMATS = ("csv", "parquet", "json", "ndjson", "arrow")
DEFAULT_MAX_BYTES = MAX_UPLOAD_BYTES
CSV_BATCH_ROWS = 100_000

Progress = Callable[[int, "int | None"], None]
Source = bytes | IO[bytes] | Path

_EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".arrow": "arrow",
    ".ipc": "arrow",
    ".feather": "arrow",
    ".arrows": "arrow",
}
_CONTENT_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/jsonlines": "ndjson",
    "application/vnd.apache.arrow.file": "arrow",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/x-arrow": "arrow",
}
_OUT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "arrow": "application/vnd.apache.arrow.file",
}
_ARROW_FILE_MAGIC = b"ARROW1"
_TEXT_FORMATS = ("csv", "json", "ndjson")


class ReadError(CoframeError, ValueError):
    """Input that cannot become a frame. ``code``: ``bad_format``, ``unreadable`` or ``too_large``.

    A 400 over HTTP, or 413 for ``too_large``. Still a ValueError, as it always was.
    """

    code = ErrorCode.UNREADABLE
    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code, status=413 if code == ErrorCode.TOO_LARGE else None)


def check_format(fmt: str) -> str:
    """``fmt`` lower-cased, if it is one of :data:`FORMATS` (``ipc`` means ``arrow``).

    Raises:
        ReadError: ``bad_format``.
    """
    f = fmt.strip().lower()
    f = {"ipc": "arrow", "feather": "arrow", "jsonl": "ndjson", "pq": "parquet"}.get(f, f)
    if f not in FORMATS:
        raise ReadError(ErrorCode.BAD_FORMAT, f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return f


def format_from_name(name: str | os.PathLike[str]) -> str | None:
    """The format a file name's extension stands for, or None."""
    return _EXTENSIONS.get(Path(name).suffix.lower())


def format_from_content_type(value: str | None) -> str | None:
    """The format a Content-Type header names, or None (``octet-stream`` names none)."""
    if not value:
        return None
    return _CONTENT_TYPES.get(value.split(";", 1)[0].strip().lower())


def sniff_format(head: bytes) -> str | None:
    """Guess a format from the first bytes (Parquet, Arrow IPC, JSON, NDJSON); None for CSV or unknown."""
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(_ARROW_FILE_MAGIC) or head.startswith(b"\xff\xff\xff\xff"):
        return "arrow"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        return "ndjson"
    return None


def content_type(fmt: str) -> str:
    return _OUT_TYPES[check_format(fmt)]


def extension(fmt: str) -> str:
    return "." + check_format(fmt)


# ---------------------------------------------------------------- reading


def _head(source: Source, n: int = 4096) -> bytes:
    if isinstance(source, bytes):
        return source[:n]
    if isinstance(source, Path):
        with source.open("rb") as f:
            return f.read(n)
    pos = source.tell()
    data = source.read(n)
    source.seek(pos)
    return data


def _rewind(source: Source) -> IO[bytes] | str:
    """A readable source for the parsers: a file object at its start, or a path as ``str``."""
    if isinstance(source, bytes):
        return io.BytesIO(source)
    if isinstance(source, Path):
        return str(source)
    source.seek(0)
    return source


def _csv(source: IO[bytes] | str, on_progress: Progress | None) -> pl.DataFrame:
    lf = pl.scan_csv(source, try_parse_dates=True)  # type: ignore[arg-type]
    parts: list[pl.DataFrame] = []
    done = 0
    for batch in lf.collect_batches(chunk_size=CSV_BATCH_ROWS):
        parts.append(batch)
        done += batch.height
        if on_progress is not None:
            on_progress(done, None)
    if not parts:
        return lf.collect()
    return pl.concat(parts, rechunk=True) if len(parts) > 1 else parts[0]


def _parquet(source: IO[bytes] | str, on_progress: Progress | None) -> pl.DataFrame:
    f = pq.ParquetFile(source)  # type: ignore[arg-type]
    total = f.metadata.num_rows
    batches: list[pa.RecordBatch] = []
    done = 0
    for i in range(f.num_row_groups):
        table = f.read_row_group(i)
        batches.extend(table.to_batches())
        done += table.num_rows
        if on_progress is not None:
            on_progress(done, total)
    return _from_arrow(pa.Table.from_batches(batches, schema=f.schema_arrow))


def _arrow(source: IO[bytes] | str, on_progress: Progress | None) -> pl.DataFrame:
    if isinstance(source, str):
        with open(source, "rb") as f:
            is_file = f.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC
    else:
        is_file = source.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC
        source.seek(0)
    src = source
    batches: list[pa.RecordBatch] = []
    done = 0
    if is_file:
        reader = ipc.open_file(src)  # type: ignore[arg-type]
        n = reader.num_record_batches
        schema = reader.schema
        for i in range(n):
            batches.append(reader.get_batch(i))
            done += 1
            if on_progress is not None:
                on_progress(done, n)
    else:
        stream = ipc.open_stream(src)  # type: ignore[arg-type]
        schema = stream.schema
        for batch in stream:
            batches.append(batch)
            done += batch.num_rows
            if on_progress is not None:
                on_progress(done, None)
    return _from_arrow(pa.Table.from_batches(batches, schema=schema))


def _from_arrow(table: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(table, rechunk=True)
    assert isinstance(df, pl.DataFrame)
    return df


def read_frame(
    source: Source, fmt: str | None = None, *, name: str = "input", on_progress: Progress | None = None
) -> pl.DataFrame:
    """Parse ``source`` as ``fmt`` (sniffed from the first bytes when None).

    JSON is an array of objects; NDJSON one object per line; Arrow IPC a
    file or a stream. ``name`` names the input in error messages.

    Raises:
        ReadError: ``bad_format`` (unknown format), ``unreadable`` (empty, binary
            where text was expected, or not valid for the format).
    """
    head = _head(source)
    if not head:
        raise ReadError(
            ErrorCode.UNREADABLE, f"{name} is empty; send a file with a header row or some records"
        )
    if fmt is None:
        fmt = sniff_format(head)
        if fmt is None:
            raise ReadError(
                ErrorCode.BAD_FORMAT,
                f"cannot tell the format of {name}; name it ({', '.join(FORMATS)}) or use a known extension",
            )
    fmt = check_format(fmt)
    if fmt in _TEXT_FORMATS and b"\x00" in head:
        raise ReadError(
            ErrorCode.UNREADABLE, f"{name} looks binary, not {fmt.upper()}; check the file and its format"
        )
    try:
        src = _rewind(source)
        if fmt == "csv":
            df = _csv(src, on_progress)
        elif fmt == "parquet":
            df = _parquet(src, on_progress)
        elif fmt == "arrow":
            df = _arrow(src, on_progress)
        elif fmt == "json":
            df = pl.read_json(src)  # type: ignore[arg-type]
        else:
            df = pl.read_ndjson(src)  # type: ignore[arg-type]
    except ReadError:
        raise
    except Exception as e:  # every parser has its own error types
        detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ReadError(ErrorCode.UNREADABLE, f"cannot read {name} as {fmt.upper()}: {detail}") from None
    if fmt in ("json", "ndjson") and on_progress is not None:
        on_progress(df.height, df.height)
    return df


def load_file(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    max_bytes: int | None = None,
    on_progress: Progress | None = None,
) -> pl.DataFrame:
    """Read a CSV, Parquet, JSON, NDJSON or Arrow IPC file (format from ``fmt``, the extension, or sniffed).

    Raises:
        ReadError (a ValueError): no such file, over ``max_bytes``, or unreadable.
    """
    p = Path(path)
    if not p.is_file():
        raise ReadError(ErrorCode.UNREADABLE, f"no such file: {path}")
    size = p.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ReadError(
            ErrorCode.TOO_LARGE,
            f"{path} is {size} bytes, over the {max_bytes}-byte limit; raise the limit or split the file",
        )
    if fmt is None:
        fmt = format_from_name(p)
    return read_frame(p, fmt, name=str(path), on_progress=on_progress)


# ---------------------------------------------------------------- writing


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
