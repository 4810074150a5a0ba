"""The ``coframe`` command line: ``coframe serve``."""

from __future__ import annotations

import argparse
import logging
import sys

from .settings import Settings

__all__ = ["main"]


def _dataset(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=path.csv|.parquet, got {value!r}")
    return name, path


def main(argv: list[str] | None = None) -> int:
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
        help="serve a CSV or Parquet file as dataset NAME (repeatable)",
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
    serve.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(
        host=args.host, port=args.port, datasets=tuple(args.dataset), demo=args.demo, demo_rows=args.demo_rows
    )
    from .app import build_registry, create_app
    from .serve import Server, uvicorn_config

    try:
        registry = build_registry(settings)
    except Exception as e:  # bad file, bad name: say so and exit non-zero
        print(f"coframe: {e}", file=sys.stderr)
        return 2
    app = create_app(settings, registry)
    print(
        f"coframe serving {', '.join(registry.datasets) or 'no datasets'} on http://{args.host}:{args.port}"
    )
    Server(uvicorn_config(app, settings, log_level=args.log_level)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
