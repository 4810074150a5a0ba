"""``coframe serve`` with a worker that gets stuck: every ``diff`` query blocks its thread forever.

For the shutdown and health tests (tests/test_hostile_node.py): run it as
``python -m tests.stuck_server serve ...`` (tests/procs.py ``start_server(module=...)``).
Everything else is the real CLI and server.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from server.cli import main
from server.rooms import queries

__all__ = ["STUCK"]

STUCK = threading.Event()  # never set: a diff query's worker waits on it for ever


def _stuck_diff(a: Any, b: Any) -> Any:
    print("a diff worker is stuck", flush=True)
    STUCK.wait()
    raise RuntimeError("unreachable")


queries.diff_states = _stuck_diff  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main())
