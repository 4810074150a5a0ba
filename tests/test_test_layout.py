"""The test suite's own layout: no test module imports another.

A test module that imports another runs (and collects) that module's tests
again in a second namespace, and ties two suites together by accident. What
two suites share lives in a helper module (tests/helpers.py, tests/wire.py,
tests/storage_server.py). Pure: reads the sources with ``ast``, imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    """Every module name that ``path`` imports, absolute (``tests.x``) or relative (``.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            # ``from tests import test_x`` and ``from . import test_x`` import a module by its alias.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _is_test_module(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith("test_")


def test_no_test_module_imports_another() -> None:
    offenders = {
        path.name: sorted(n for n in _imported_modules(path) if _is_test_module(n))
        for path in sorted(TESTS.glob("test_*.py"))
    }
    offenders = {name: mods for name, mods in offenders.items() if mods}
    assert not offenders, f"test modules import test modules (move shared code to a helper): {offenders}"


def test_the_checker_sees_every_form_of_import(tmp_path: Path) -> None:
    """The check above would pass vacuously if it missed a form of import."""
    forms = [
        "from tests.test_a import f",
        "import tests.test_a",
        "from tests import test_a",
        "from .test_a import f",
        "from . import test_a",
        "import test_a",
    ]
    for i, line in enumerate(forms):
        src = tmp_path / f"test_form{i}.py"
        src.write_text(line + "\n", encoding="utf-8")
        assert any(_is_test_module(n) for n in _imported_modules(src)), line
    clean = tmp_path / "test_clean.py"
    clean.write_text("from tests.helpers import frame\nimport pytest\n", encoding="utf-8")
    assert not any(_is_test_module(n) for n in _imported_modules(clean))
