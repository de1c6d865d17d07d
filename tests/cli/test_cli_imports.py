"""The CLI starts without Beam: help, and the commands that only talk to Close, do not pay for loading it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs a command in a fresh interpreter and prints the Beam modules it loaded, however it ended.
PROBE = """
import sys
from pipeline.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("BEAM:" + ",".join(sorted(m for m in sys.modules if m.split(".")[0] == "apache_beam")))
"""
UNREACHABLE = "http://127.0.0.1:9/api/v1/"


def beam_modules_loaded(*args: str) -> list[str]:
    env = {**os.environ, "CLOSE_API_KEY": "test_key_not_real"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("BEAM:")]
    assert lines, result.stderr
    return [m for m in lines[-1][len("BEAM:") :].split(",") if m]


@pytest.mark.parametrize(
    "args",
    [("--help",), ("validate", "--help"), ("replay", "--help"), ("export", "--help"), ("run", "--help"),
     ("snapshot-sync", "--help")],
)
def test_help_does_not_import_beam(args: tuple[str, ...]) -> None:
    assert beam_modules_loaded(*args) == []


def test_validate_and_replay_run_without_beam(tmp_path: Path) -> None:
    assert beam_modules_loaded("validate", "--close-url", UNREACHABLE) == []  # fails: nothing listens there
    letters = tmp_path / "dead-letters.jsonl"
    letters.write_text('{"stage": "upsert", "reason": "http_500", "event": null}\n')
    assert beam_modules_loaded("replay", "--dead-letter", str(letters), "--close-url", UNREACHABLE) == []


def test_the_cli_modules_import_without_beam() -> None:
    code = (
        "import sys, pipeline.cli, pipeline.cli_common, pipeline.cli_options, closecrm.wiring; "
        "print(any(m.split('.')[0] == 'apache_beam' for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_export_and_snapshot_commands_do_not_import_the_cli_module() -> None:
    code = (
        "import sys, pipeline.cli_export, pipeline.cli_snapshot; "
        "print('pipeline.cli' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
