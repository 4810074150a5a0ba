"""The docs stand on their own: numbered in order, citing only files in the repository."""

from __future__ import annotations

import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tracked() -> list[pathlib.Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout
    return [ROOT / p for p in out.split("\0") if p]


def test_protocol_sections_are_numbered_in_order() -> None:
    text = (ROOT / "protocol" / "PROTOCOL.md").read_text()
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.M)]
    assert numbers == list(range(1, len(numbers) + 1))


def test_section_references_point_at_existing_sections() -> None:
    text = (ROOT / "protocol" / "PROTOCOL.md").read_text()
    count = len(re.findall(r"^## \d+\. ", text, flags=re.M))
    for path in _tracked():
        if path.suffix not in {".py", ".md"} or "bench/results" in str(path):
            continue
        for n in re.findall(r"PROTOCOL\.md §(\d+)", path.read_text(errors="replace")):
            assert 1 <= int(n) <= count, f"{path.relative_to(ROOT)} cites PROTOCOL.md §{n}"


def test_nothing_cites_a_file_outside_the_repository() -> None:
    outside = re.compile(r"DESIGN\.md|STYLE\.md|\.\./shared/")
    offenders = []
    for path in _tracked():
        if path.suffix not in {".py", ".md", ".toml", ".html", ".js", ".sh", ".yml", ".cfg", ""}:
            continue
        if path.name == "test_docs.py" or not path.is_file():
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if outside.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:80]}")
    assert offenders == []


def test_architecture_doc_exists_and_names_only_real_modules() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for name in re.findall(r"`((?:protocol|server|client)/[\w/]+\.py)`", doc):
        assert (ROOT / name).exists(), f"docs/architecture.md names {name}, which does not exist"
