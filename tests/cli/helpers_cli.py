"""Shared bits of the CLI tests: invoke `close-sync` in-process and check the one-line error contract."""

from __future__ import annotations

from click.testing import CliRunner, Result

from pipeline.cli import main

WIDE = {"COLUMNS": "200"}  # rich wraps tables at the terminal width; keep rows on one line


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env={**WIDE, **(env or {})}, catch_exceptions=False)


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Non-zero exit, exactly one error line on stderr (the state location's start line aside), no
    traceback, and the words that say what to fix."""
    assert result.exit_code != 0, result.output
    lines = [
        line for line in result.stderr.splitlines() if line.strip() and not line.startswith("state location: ")
    ]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
