"""The ``coframe`` command line.

``coframe serve`` runs the server. The data commands work directly on
storage (``--data-dir``, env ``COFRAME_DATA``; ``--catalog``, env
``COFRAME_CATALOG``): ``import``, ``export``, ``log``, ``diff``, ``branch`` and
``tag``. A failing command prints one line to stderr, exits with code 2 and
leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .settings import MAX_UPLOAD_BYTES, Settings

__all__ = ["main", "build_parser"]


def _dataset(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=path (.csv, .parquet, .json, ...), got {value!r}")
    return name, path


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
        "--max-upload-bytes", type=int, default=MAX_UPLOAD_BYTES,
        help="largest dataset upload over HTTP, in bytes (default 512 MiB)",
    )  # fmt: skip
    serve.add_argument("--log-level", default="info")
    add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        from .cli_data import run_data_command

        return run_data_command(args)

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
        max_upload_bytes=args.max_upload_bytes,
    )
    from .app import create_app, load_file
    from .rooms.registry import check_name
    from .serve import Server, uvicorn_config

    try:  # bad files and names fail here, before the server starts
        for name, path in settings.datasets:
            check_name(name)
            load_file(path)
    except Exception as e:
        print(f"coframe: {e}", file=sys.stderr)
        return 2
    app = create_app(settings)
    where = "memory" if settings.data_dir is None else (settings.catalog or settings.data_dir)
    print(f"coframe starting (storage: {where})", flush=True)
    Server(uvicorn_config(app, settings, log_level=args.log_level), announce=True).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
