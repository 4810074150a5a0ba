"""README.md, CHANGELOG.md and pyproject.toml agree: one version, files that exist, examples in order.

Pure: reads the files. (That the commands themselves work is tested in
tests/test_cli.py; this checks what a new user copies from the README.)
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def test_pyproject_changelog_and_readme_name_the_same_version() -> None:
    version = _version()
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(\.dev\d+)?", version)
    assert m, f"pyproject.toml version {version!r} is not X.Y.Z or X.Y.Z.devN"
    release = ".".join(m.group(1, 2, 3))
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    top = re.search(r"^## \[([^\]]+)\] - (.+)$", changelog, re.M)
    assert top, "CHANGELOG.md has no '## [X.Y.Z] - date' section"
    assert top.group(1) == release, f"CHANGELOG.md is at {top.group(1)}, pyproject.toml at {version}"
    unreleased = top.group(2).strip().lower() == "unreleased"
    assert unreleased == bool(m.group(4)), (
        "a .devN version goes with an unreleased CHANGELOG section, a release with a dated one"
    )
    status = re.search(r"^## Status and limits \(v(\d+\.\d+)(, unreleased)?\)$", README, re.M)
    assert status, "README.md has no '## Status and limits (vX.Y[, unreleased])' heading"
    assert status.group(1) == f"{m.group(1)}.{m.group(2)}"
    assert bool(status.group(2)) == unreleased


def _shell_lines() -> list[list[str]]:
    """The ``coframe`` commands of the README's shell blocks, split into words, in order."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith(".venv/bin/coframe "):
                out.append(shlex.split(line)[1:])
    return out


def test_every_file_the_readme_reads_ships_with_coframe() -> None:
    inputs = []
    for words in _shell_lines():
        if words[0] == "import":
            inputs.append(words[1])
        inputs += [w.split("=", 1)[1] for w in words if re.fullmatch(r"\w+=\S+\.(csv|parquet|json|arrow)", w)]
    assert inputs, "the README shows no file import"
    for path in inputs:
        assert (ROOT / path).is_file(), f"README.md uses {path}, which is not in the repository"


def test_the_readme_creates_each_version_before_using_it() -> None:
    """On a fresh start only ``main`` exists: a tag or branch is made before any line names it."""
    known = {"main", "live"}
    used_any = False
    for words in _shell_lines():
        command = words[0]
        refs = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--at", "--from")]
        if command == "diff":
            refs += words[2:4]
        for ref in refs:
            used_any = True
            assert ref in known, f"'coframe {' '.join(words)}' names {ref!r} before the README creates it"
        if command in ("tag", "branch"):
            known.add(words[2])
    assert used_any
