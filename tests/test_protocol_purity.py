"""protocol/ is sans-I/O and shared.

It must not pull in an event loop, a web framework, or either side of the
connection. Checked twice: at run time in a fresh interpreter, and in the source.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = REPO / "protocol"
FORBIDDEN = ("asyncio", "starlette", "uvicorn", "websockets", "server", "client")

# Run in a fresh interpreter: this test process has long since imported asyncio
# (pytest plugins) and perhaps server/ (other tests).
PROBE = """
import importlib, json, pkgutil, sys
sys.path.insert(0, {repo!r})
forbidden = {forbidden!r}

def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in forbidden)

before = loaded()
import protocol
names = ["protocol"]
for info in pkgutil.walk_packages(protocol.__path__, "protocol."):
    importlib.import_module(info.name)
    names.append(info.name)
print(json.dumps({{"before": before, "after": loaded(), "file": protocol.__file__, "modules": names}}))
"""


def test_importing_protocol_loads_no_io_framework_or_peer() -> None:
    code = PROBE.format(repo=str(REPO), forbidden=FORBIDDEN)
    # -I: ignore PYTHON* variables and the user site, so nothing else is imported first.
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().parent == PROTOCOL
    assert result["before"] == [], f"the bare interpreter already imports {result['before']}"
    assert result["after"] == [], f"importing protocol imports {result['after']}"
    expected = {"protocol"} | {f"protocol.{p.stem}" for p in PROTOCOL.glob("*.py") if p.stem != "__init__"}
    assert expected <= set(result["modules"])


def _imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """Top-level module names a file imports, including importlib and __import__ by string."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.append((node.lineno, node.module))
            elif node.level > 1:  # from .. import server: reaches out of protocol/
                found += [(node.lineno, alias.name) for alias in node.names]
                if node.module:
                    found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def test_protocol_sources_import_no_io_framework_or_peer() -> None:
    files = sorted(PROTOCOL.rglob("*.py"))
    assert files, f"no sources under {PROTOCOL}"
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in _imported_names(tree):
            if name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert offenders == []


def test_source_check_catches_forbidden_imports() -> None:
    # The checker itself: each spelling of a forbidden import is seen.
    samples = {
        "import asyncio": "asyncio",
        "import starlette.websockets as ws": "starlette.websockets",
        "from uvicorn import Server": "uvicorn",
        "from websockets.sync import client": "websockets.sync",
        "from server.rooms import Room": "server.rooms",
        "from .. import client": "client",
        "import importlib\nimportlib.import_module('server.app')": "server.app",
        "__import__('asyncio')": "asyncio",
    }
    for source, name in samples.items():
        assert name in [n for _, n in _imported_names(ast.parse(source))], source
    assert _imported_names(ast.parse("from . import errors\nfrom .ops import Op")) == []
