"""Server settings: one frozen dataclass, filled by the CLI or by tests."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Settings", "MAX_UPLOAD_BYTES"]

MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # default size limit of a dataset import (HTTP and CLI)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    datasets: tuple[tuple[str, str], ...] = ()  # (name, path to .csv or .parquet)
    demo: bool = True
    demo_rows: int = 100_000
    # Storage: None keeps everything (commits, branches, tags, the WAL) in
    # memory for the life of the process (``--memory``, tests); a directory
    # holds the chunk store and, unless ``catalog`` is a postgresql:// URL,
    # the SQLite catalog.
    data_dir: str | None = None
    catalog: str | None = None
    autocommit_ops: int = 10_000
    autocommit_seconds: float = 60.0
    autocommit_share: float = 0.1  # at most this share of the time goes to writing commits
    # Limits (PROTOCOL.md "Limits").
    max_message_bytes: int = 8 * 1024 * 1024  # soft: bigger → error too_large, socket stays up
    transport_max_bytes: int = 32 * 1024 * 1024  # hard: bigger → close 1009
    max_rows_per_op: int = 1_000_000
    ops_per_second: float = 5_000.0  # per client, op/undo/redo messages
    ops_burst: int = 10_000
    send_queue_messages: int = 1024
    send_queue_bytes: int = 64 * 1024 * 1024
    stall_timeout: float = 30.0
    hello_timeout: float = 10.0
    idle_unload: float = 300.0
    max_upload_bytes: int = MAX_UPLOAD_BYTES  # HTTP dataset upload body; bigger → 413
    extra: dict[str, str] = field(default_factory=dict)
