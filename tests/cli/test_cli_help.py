"""Every subcommand's --help shows its defaults and a runnable example."""

from __future__ import annotations

import pytest

from pipeline.cli import main
from tests.cli.helpers_cli import invoke


def test_the_group_help_lists_the_subcommands_and_an_example():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for name in ("run", "validate", "replay", "sim", "demo"):
        assert name in result.output
    assert "Example" in result.output


@pytest.mark.parametrize("command", sorted(main.commands))
def test_each_subcommand_help_has_an_example_of_itself(command):
    result = invoke([command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert f"close-sync {command}" in result.output or (command == "demo" and "pipeline.demo" in result.output)


@pytest.mark.parametrize(
    ("command", "default"),
    [
        ("run", "[default: https://api.close.com/api/v1/]"),
        ("validate", "[default: https://api.close.com/api/v1/]"),
        ("replay", "[default: https://api.close.com/api/v1/]"),
        ("sim", "[default: 8765]"),
        ("demo", "[default: 5]"),
    ],
)
def test_help_shows_defaults(command, default):
    assert default in " ".join(invoke([command, "--help"]).output.split())


def test_run_help_documents_dry_run_audit_log_and_quiet():
    text = invoke(["run", "--help"]).output
    for flag in ("--dry-run", "--audit-log", "--quiet", "--dead-letter"):
        assert flag in text
