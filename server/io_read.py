"""Reading frames from CSV, Parquet, JSON, NDJSON and Arrow IPC input.

Readers take bytes, a binary file object or a path, and raise
:class:`~server.io_formats.ReadError` with a message that says what was
wrong and what to do. They can report progress (``on_progress(done,
total)``, ``total`` None when unknown): CSV in row batches, Parquet by row
group, Arrow IPC by record batch. :mod:`server.io` re-exports
:func:`read_frame`, :func:`load_file` and the ``Progress`` and ``Source`` types.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from protocol import ErrorCode

from .io_formats import (
    ARROW_FILE_MAGIC,
    FORMATS,
    TEXT_FORMATS,
    ReadError,
    check_format,
    format_from_name,
    sniff_format,
)

__all__ = ["Progress", "Source", "read_frame", "load_file"]

CSV_BATCH_ROWS = 100_000

Progress = Callable[[int, "int | None"], None]
Source = bytes | IO[bytes] | Path


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
            is_file = f.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC
    else:
        is_file = source.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC
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
    if fmt in TEXT_FORMATS and b"\x00" in head:
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
