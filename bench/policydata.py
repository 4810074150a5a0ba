"""The policy group's users, grants and tokens, made with the operator CLI on a fresh data directory.

:func:`prepared` starts ``coframe serve --auth token`` once on a temporary
``--data-dir`` (it creates the demo ``sales`` dataset and the ``admin`` user),
stops it, then runs ``coframe user add``, ``coframe grant`` and ``coframe
token create`` for every user (the token is the last line the command
prints), and copies the directory once per server, so both servers start
from the same catalog (same users, grants, signing keys and tokens) and the
only difference between the two sides is which users their readers sign in as.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import BENCH_DIR, coframe_argv, coframe_cmd, free_port, running

__all__ = ["Policy", "POLICIES", "NO_POLICY_USERS", "WRITER", "prepared", "serve_argv"]


@dataclass(frozen=True, slots=True)
class Policy:
    """One reader user's grant: viewer, a row predicate over ``column``, hidden columns.

    ``admits`` is the predicate in Python, applied by the checks to the
    values of ``column`` (which the policy leaves visible).
    """

    user: str
    rows: str
    column: str
    admits: Callable[[Any], bool]
    hide: tuple[str, ...]


def _in(*values: str) -> Callable[[Any], bool]:
    allowed = frozenset(values)
    return lambda v: v in allowed


def _at_least(x: float) -> Callable[[Any], bool]:
    return lambda v: v is not None and v >= x


def _above(x: float) -> Callable[[Any], bool]:
    return lambda v: v is not None and v > x


# Five distinct (rows, hide) combinations over the demo's columns (server/demo.py). Each
# admits 40-75 % of the rows, and the predicates cut across each other, so a random rid is
# visible to some audiences and not to others. One hides ``price``, the column the writer edits.
POLICIES: tuple[Policy, ...] = (
    Policy("pol-eu-us", "region IN ('EU', 'US')", "region", _in("EU", "US"), ("note",)),
    Policy(
        "pol-rest", "region IN ('APAC', 'LATAM', 'MEA')", "region", _in("APAC", "LATAM", "MEA"), ("discount",)
    ),
    Policy(
        "pol-products",
        "product IN ('widget', 'gadget', 'gizmo', 'doohickey')",
        "product",
        _in("widget", "gadget", "gizmo", "doohickey"),
        ("price",),
    ),
    Policy("pol-bulk", "qty >= 25", "qty", _at_least(25), ("updated_at",)),
    Policy("pol-discounted", "discount > 0", "discount", _above(0), ("qty", "date")),
)
NO_POLICY_USERS: tuple[str, ...] = tuple(f"plain-{i}" for i in range(len(POLICIES)))
WRITER = "writer"  # an editor without a policy, on both sides


def serve_argv(port: int, rows: int, data_dir: Path) -> list[str]:
    """``coframe serve`` in the default durable configuration, with tokens required."""
    return [*coframe_argv(port, rows, auth="token"), "--data-dir", str(data_dir)]


def _cli(*args: str) -> str:
    """Run one ``coframe`` operator command; return its output.

    Raises:
        RuntimeError: the command failed (with its output).
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(BENCH_DIR.parent), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    done = subprocess.run(
        [*coframe_cmd(), *args],
        cwd=BENCH_DIR.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"coframe {' '.join(args[:3])} failed ({done.returncode}): {done.stderr or done.stdout}"
        )
    return done.stdout


def _prepare(data: Path, rows: int, log: Callable[[str], None]) -> dict[str, str]:
    """Users, grants and tokens in ``data``; return each user's token."""
    port = free_port()
    with running("policy-prepare", serve_argv(port, rows, data), port):
        pass  # the first start creates the demo dataset and the admin user
    d = ("--data-dir", str(data))
    grants: list[tuple[str, str, list[str]]] = [(WRITER, "editor", [])]
    for p in POLICIES:
        grants.append((p.user, "viewer", ["--rows", p.rows, "--hide", ",".join(p.hide)]))
    grants += [(u, "viewer", []) for u in NO_POLICY_USERS]
    tokens: dict[str, str] = {}
    for user, role, extra in grants:
        _cli("user", "add", user, *d)
        _cli("grant", "sales", user, role, *extra, *d)
        out = _cli("token", "create", user, "--expires", "2h", *d)
        tokens[user] = out.strip().splitlines()[-1].strip()
    log(f"policy: {len(tokens)} users, grants and tokens made with the CLI")
    return tokens


@contextlib.contextmanager
def prepared(
    copies: tuple[str, ...], rows: int, log: Callable[[str], None]
) -> Iterator[tuple[dict[str, Path], dict[str, str]]]:
    """A data directory per name in ``copies`` (identical), and the users' tokens; all removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    try:
        base = root / "base"
        base.mkdir()
        tokens = _prepare(base, rows, log)
        dirs = {}
        for name in copies:
            dirs[name] = root / name
            shutil.copytree(base, dirs[name])
        yield dirs, tokens
    finally:
        shutil.rmtree(root, ignore_errors=True)
