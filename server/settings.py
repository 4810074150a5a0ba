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
    # Bounded cost per request (issue 10; PROTOCOL.md §10). Each limit has its code.
    max_rows_per_message: int = 1_000_000  # rows across all ops of one message → too_large
    max_decompressed_bytes: int = 64 * 1024 * 1024  # a table's bytes after decompression → too_large
    max_presence_bytes: int = 64 * 1024  # one presence state, encoded → too_large
    max_meta_bytes: int = 64 * 1024  # one meta update → too_large
    max_meta_doc_bytes: int = 1024 * 1024  # the metadata doc; over it, compacted and resynced
    max_views_per_connection: int = 16  # open views → too_many
    max_queries_per_connection: int = 4  # queries in flight → too_many
    expr_max_literal: int = 100_000  # lpad/rpad target lengths in an expression → too_expensive
    # An expression worker's address space may grow this much past its size after
    # start-up (Polars and its threads, several hundred MB) → too_expensive.
    expr_memory_bytes: int = 1024 * 1024 * 1024
    expr_timeout: float = 30.0  # seconds an expression may run in its worker → too_expensive
    # The views process (Perspective, one per node; docs/architecture.md "Live views").
    views_timeout: float = 10.0  # seconds one view request may take; over it the view is closed
    views_build_timeout: float = 120.0  # seconds building one table may take
    views_memory_bytes: int = 8 * 1024 * 1024 * 1024  # its address space past start-up; over it, restarted
    views_table_ttl: float = 30.0  # a table nobody uses is dropped this many seconds later
    # Node-wide caps (→ overloaded, close 1013).
    max_connections: int = 10_000
    max_unhelloed: int = 1_000  # sockets that have not said hello yet
    max_connections_per_address: int = 256
    max_queued_bytes_total: int = 2 * 1024 * 1024 * 1024  # bytes queued for sending, all sessions
    # Health (/healthz, /readyz) and shutdown.
    health_max_lag: float = 1.0  # event-loop lag over this → /healthz 503
    worker_stuck_after: float = 60.0  # a worker busy longer than this is stuck → /healthz 503
    shutdown_timeout: float = 15.0  # SIGTERM: autocommit, then exit within this many seconds
    # Storage self-repair.
    chunk_gc_grace: float = 3600.0  # unreferenced chunks younger than this are kept
    # Identity (docs/security.md): "token" requires a signed token on every entry point;
    # "none" is the explicit opt-out (the CLI refuses it unless the server binds to loopback).
    auth: str = "token"
    auth_poll: float = 0.5  # seconds between checks for revocations and grant changes
    secret: str | None = None  # COFRAME_SECRET: one more signing key, never stored
    signin: bool = False  # issue a sign-in token for the first admin at start (coframe serve)
    # An external identity provider (server.auth.jwks): its JWKS file, the claim naming the
    # coframe user, and the audience and issuer its tokens must carry (None: not checked).
    auth_jwks: str | None = None
    auth_jwks_claim: str = "sub"
    auth_jwks_audience: str | None = None
    auth_jwks_issuer: str | None = None
    # Per-user limits on this node (server.auth.limits): not under auth="none".
    max_connections_per_user: int = 64  # over it: too_many, close 1013
    user_ops_per_second: float = 5_000.0  # op/undo/redo messages across all of a user's connections
    user_ops_burst: int = 10_000
    # HTTP body bytes received from one user (uploads, JSON), a bucket refilled at this rate with
    # the same burst; over it: 429 rate_limited with Retry-After.
    user_upload_bytes_per_hour: int = 10 * 1024**3
    # One expression a user sends (op expr/where, view and dashboard expressions, a grant's rows);
    # over it: too_large. The default is server.ops.sandbox.MAX_EXPR_LEN.
    user_max_expression_chars: int = 2_000
    extra: dict[str, str] = field(default_factory=dict)
