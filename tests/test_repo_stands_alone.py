"""The repository stands on its own: code, tests and docs cite docs/DESIGN.md, never documents outside it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".py", ".json", ".yaml", ".yml", ".md")
# Pieces joined at run time, so this file does not match itself.
EXTERNAL = re.compile(
    "|".join(
        [
            "SPEC" + r"\s*§",
            "SPEC" + r"\.md",
            r"\(" + "SPEC" + r"[:)]",
            "HARD" + "-PARTS",
            "STYLE" + r"\.md",
            "shared" + "/docs",
        ]
    )
)
def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode("utf-8", "surrogateescape")
    return sorted(
        path
        for path in out.split("\0")
        if path.endswith(SUFFIXES) and not path.startswith(("docs/", ".venv/"))
    )


def citations(paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        file = ROOT / path
        if not file.is_file():  # deleted in the working tree, not yet in the index
            continue
        for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if EXTERNAL.search(line):
                found.append(f"{path}:{number}: {line.strip()}")
    return found


def test_no_tracked_file_outside_docs_cites_an_outside_document() -> None:
    assert citations(tracked_files()) == []
