"""File formats for import and export: their names, how an input's format is told, and ``ReadError``.

The format of an input comes from an explicit name (:func:`check_format`), a
Content-Type (:func:`format_from_content_type`), a file extension
(:func:`format_from_name`), or, last, its first bytes (:func:`sniff_format`).
Readers are in :mod:`server.io_read`, writers in :mod:`server.io`, which
re-exports all of this.
"""

from __future__ import annotations

import os
from pathlib import Path

from protocol import CoframeError, ErrorCode

from .settings import MAX_UPLOAD_BYTES

__all__ = [
    "FORMATS",
    "DEFAULT_MAX_BYTES",
    "TEXT_FORMATS",
    "ARROW_FILE_MAGIC",
    "ReadError",
    "check_format",
    "format_from_name",
    "format_from_content_type",
    "sniff_format",
    "content_type",
    "extension",
]

FORMATS = ("csv", "parquet", "json", "ndjson", "arrow")
DEFAULT_MAX_BYTES = MAX_UPLOAD_BYTES

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
ARROW_FILE_MAGIC = b"ARROW1"
TEXT_FORMATS = ("csv", "json", "ndjson")  # text formats: a NUL byte in them means a binary file


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
    if head.startswith(ARROW_FILE_MAGIC) or head.startswith(b"\xff\xff\xff\xff"):
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
