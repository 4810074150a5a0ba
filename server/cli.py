"""The ``coframe`` command line.

``coframe serve`` runs the server. The data commands work directly on
storage (``--data-dir``, env ``COFRAME_DATA``; ``--catalog``, env
``COFRAME_CATALOG``): ``import``, ``export``, ``log``, ``diff``, ``refs``,
``branch`` and ``tag``, and the upkeep commands ``delete``, ``fsck`` and
``gc``. A failing command prints one line to stderr, exits with code 2 and
leaves nothing half-written: :func:`fail` maps every error to its exit code
and message, in one place. ``fsck`` exits with 1 when it finds something
broken.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from typing import TYPE_CHECKING

from protocol import CoframeError

from .settings import MAX_UPLOAD_BYTES, Settings
from .workers import busy_workers

if TYPE_CHECKING:
    from .serve import Server

__all__ = ["main", "build_parser", "fail", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2  # a user error: bad input, a name that does not exist, ...
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


def _dataset(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=path (.csv, .parquet, .json, ...), got {value!r}")
    return name, path


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = float("nan")
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"expected a share of the time in (0, 1], like 0.1, got {value!r}")
    return share


def build_parser() -> argparse.ArgumentParser:
    """The ``coframe`` argument parser: ``serve`` and the data commands."""
    from .cli_data import add_data_commands

    parser = argparse.ArgumentParser(prog="coframe", description="Real-time collaborative tabular datasets")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--dataset",
        action="append",
        type=_dataset,
        default=[],
        metavar="NAME=PATH",
        help="serve a CSV, Parquet, JSON, NDJSON or Arrow file as dataset NAME (repeatable)",
    )
    serve.add_argument(
        "--demo",
        dest="demo",
        action="store_true",
        default=True,
        help="add the demo 'sales' dataset (default)",
    )
    serve.add_argument("--no-demo", dest="demo", action="store_false", help="do not add the demo dataset")
    serve.add_argument("--demo-rows", type=int, default=100_000)
    serve.add_argument(
        "--data-dir", default=os.environ.get("COFRAME_DATA", "data"),
        help="where commits (chunks) and the SQLite catalog live (default ./data, env COFRAME_DATA)",
    )  # fmt: skip
    serve.add_argument(
        "--catalog", default=os.environ.get("COFRAME_CATALOG"),
        help="postgresql://... to keep the catalog and WAL in PostgreSQL (env COFRAME_CATALOG)",
    )  # fmt: skip
    serve.add_argument(
        "--memory", action="store_true",
        help="keep everything in memory: commits, branches, tags and history last until the server stops",
    )  # fmt: skip
    serve.add_argument("--autocommit-ops", type=int, default=10_000)
    serve.add_argument("--autocommit-seconds", type=float, default=60.0)
    serve.add_argument(
        "--autocommit-share", type=_share, default=0.1,
        help="at most this share of the time (0 to 1] goes to writing autocommits: after a commit"
        " that took t seconds, the next autocommit waits at least t * (1/share - 1) (default 0.1)",
    )  # fmt: skip
    serve.add_argument(
        "--max-upload-bytes", type=int, default=MAX_UPLOAD_BYTES,
        help="largest dataset upload over HTTP, in bytes (default 512 MiB)",
    )  # fmt: skip
    for flag, kind, what in _NODE_OPTIONS:
        serve.add_argument(flag, type=kind, default=None, help=f"{what} (default {_default(flag)})")
    serve.add_argument(
        "--chunk-gc-grace", type=float, default=Settings().chunk_gc_grace, metavar="SECONDS",
        help="the chunk GC keeps unreferenced chunks younger than this, and runs this often"
        " (at least every minute; default %(default)s)",
    )  # fmt: skip
    serve.add_argument(
        "--auth", choices=("token", "none"), default="token",
        help="token (the default): every entry point needs a signed token; none: no identity, every"
        " client is admin (refused unless --host is a loopback address)",
    )  # fmt: skip
    serve.add_argument(
        "--auth-jwks", default=None, metavar="FILE",
        help="also accept RS256/ES256 tokens of an external identity provider whose JSON Web Key Set"
        " (the document at its jwks_uri) is FILE; never fetched over the network",
    )  # fmt: skip
    serve.add_argument(
        "--auth-jwks-claim", default="sub", metavar="NAME",
        help="the provider token's claim that names the coframe user (default sub); the user must"
        " exist (coframe user add)",
    )  # fmt: skip
    for what, metavar in (("audience", "AUD"), ("issuer", "ISS")):
        serve.add_argument(
            f"--auth-jwks-{what}", default=None, metavar=metavar,
            help=f"provider tokens must name this {what} ({metavar.lower()} claim); unchecked without it",
        )  # fmt: skip
    serve.add_argument("--ssl-certfile", default=None, help="serve HTTPS and WSS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", default=None, help="the certificate's private key (PEM)")
    serve.add_argument("--log-level", default="info")
    add_data_commands(sub)
    return parser


# Node-wide caps, per-client send queues, health, shutdown and the views process (PROTOCOL.md §10);
# each flag sets the Settings field of the same name.
_NODE_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("--max-connections", int, "WebSocket connections, whole server; over it: overloaded, close 1013"),
    ("--max-unhelloed", int, "sockets that have not said hello yet; over it: overloaded, close 1013"),
    ("--max-connections-per-address", int, "connections from one address; over it: overloaded, close 1013"),
    ("--max-queued-bytes-total", int, "bytes held for sending to all clients; over it: resync or close 1013"),
    ("--send-queue-messages", int, "messages queued per client before it is resynced"),
    ("--send-queue-bytes", int, "bytes queued per client before it is resynced"),
    ("--health-max-lag", float, "event-loop lag in seconds over which /healthz answers 503"),
    ("--worker-stuck-after", float, "seconds after which a busy worker thread is stuck (/healthz 503)"),
    ("--shutdown-timeout", float, "seconds SIGTERM may take: autocommit, close, exit"),
    ("--views-timeout", float, "seconds one view request may take; over it: the view is closed"),
    ("--views-build-timeout", float, "seconds building one Perspective table may take"),
    ("--views-memory-bytes", int, "views process address space past start-up; over it: restarted"),
    ("--views-table-ttl", float, "seconds an unused Perspective table is kept"),
    ("--max-connections-per-user", int, "one user's connections; over it: too_many, close 1013"),
    ("--user-ops-per-second", float, "op messages per second across one user's connections"),
    ("--user-upload-bytes-per-hour", int, "bytes one user may upload per hour (burst the same); then 429"),
    ("--user-max-expression-chars", int, "characters in one expression a user sends; over it: too_large"),
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (nothing else can reach it)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _field(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _default(flag: str) -> object:
    return Settings.__dataclass_fields__[_field(flag)].default


def fail(e: BaseException) -> int:
    """Report a failed command on stderr (one line) and return its exit code.

    A :class:`~protocol.CoframeError` is a user error: its message says what to
    do. ``ValueError`` and ``OSError`` (a bad path, a full disk) are reported the
    same way. Anything else is a bug and is raised again, with its traceback.
    """
    if isinstance(e, KeyboardInterrupt):
        print("coframe: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(e, CoframeError):
        print(f"coframe: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(e, (ValueError, OSError)):
        print(f"coframe: {e}", file=sys.stderr)
        return EXIT_USAGE
    raise e


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "serve":
            from .cli_data import run_data_command

            return run_data_command(args)
        server = _server(args)
    except (Exception, KeyboardInterrupt) as e:
        return fail(e)
    try:
        server.run()
    finally:
        if busy_workers():  # a stuck worker thread would hold the interpreter's exit forever
            logging.shutdown()
            os._exit(0)
    return 0


def _server(args: argparse.Namespace) -> Server:
    """The server ``coframe serve`` runs; bad files and names fail here, before it starts."""
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(
        host=args.host,
        port=args.port,
        datasets=tuple(args.dataset),
        demo=args.demo,
        demo_rows=args.demo_rows,
        data_dir=None if args.memory else args.data_dir,
        catalog=args.catalog,
        autocommit_ops=args.autocommit_ops,
        autocommit_seconds=args.autocommit_seconds,
        autocommit_share=args.autocommit_share,
        max_upload_bytes=args.max_upload_bytes,
        **{_field(f): v for f, _, _ in _NODE_OPTIONS if (v := getattr(args, _field(f))) is not None},
        chunk_gc_grace=args.chunk_gc_grace,
        auth=args.auth,
        secret=os.environ.get("COFRAME_SECRET") or None,
        signin=args.auth == "token",
        auth_jwks=args.auth_jwks,
        auth_jwks_claim=args.auth_jwks_claim,
        auth_jwks_audience=args.auth_jwks_audience,
        auth_jwks_issuer=args.auth_jwks_issuer,
    )
    if args.auth_jwks and args.auth == "none":
        raise ValueError("--auth-jwks needs --auth token: under --auth none nobody signs in")
    if args.auth == "none":
        if not is_loopback(args.host):
            raise ValueError(
                f"--auth none is refused on {args.host}: anyone who reaches the port would be admin;"
                " bind to 127.0.0.1 or use tokens"
            )
        print("coframe: WARNING: --auth none: no identity; every client is admin of everything", flush=True)
    from .app import create_app, load_file
    from .rooms.registry import check_name
    from .serve import Server

    for name, path in settings.datasets:
        check_name(name)
        load_file(path)
    app = create_app(settings)
    where = "memory" if settings.data_dir is None else (settings.catalog or settings.data_dir)
    print(f"coframe starting (storage: {where})", flush=True)
    tls: dict[str, object] = {}
    if args.ssl_certfile or args.ssl_keyfile:
        if not (args.ssl_certfile and args.ssl_keyfile):
            raise ValueError("give both --ssl-certfile and --ssl-keyfile (or neither)")
        for path in (args.ssl_certfile, args.ssl_keyfile):
            if not os.path.isfile(path):
                raise ValueError(f"no such file: {path}")
        tls = {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}
    return Server.for_app(app, settings, announce=True, log_level=args.log_level, **tls)


if __name__ == "__main__":
    sys.exit(main())
