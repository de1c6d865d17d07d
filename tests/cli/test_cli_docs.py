"""What a new user reads and types first: every --help example whole at 80 columns and written as
`close-sync …`, a ./close-sync that works from a fresh clone, --verbose that shows debug logs, and a
lead with no company name shown as Close shows it."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from pipeline.cli import main
from tests.cli.helpers_user import DEMO_CONFIG, REPO, SIM_KEY

README = REPO / "README.md"


def _help(workdir, *command: str) -> str:
    proc = workdir.run(*command, "--help", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("command", sorted(main.commands))
def test_each_help_example_is_whole_at_80_columns_and_uses_the_console_script(workdir, command):
    text = _help(workdir, command)
    block = text.split("Example", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert block, text
    for previous, line in zip(["\\"] + block, block, strict=False):
        stripped = line.strip()
        # a command line, or the continuation of one that ended in a backslash: never a flag cut in two
        assert stripped.startswith(("close-sync ", "CLOSE_API_KEY=", "PGPASSWORD=")) or (
            previous.rstrip().endswith("\\") and stripped.startswith("--")
        ), f"{command} --help: {line!r}"
    assert "python -m" not in text
    assert f"close-sync {command}" in text


def test_export_help_keeps_its_example_on_one_line(workdir):
    text = _help(workdir, "export")
    assert "CLOSE_API_KEY=... close-sync export --out warehouse/ --updated-since 2024-06-01\n" in text


def test_the_shim_runs_the_console_script_from_anywhere(workdir):
    proc = subprocess.run(
        [str(REPO / "close-sync"), "--help"], cwd=workdir.path, env=workdir.env(), capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: close-sync")


def test_the_readme_says_where_close_sync_is_and_how_to_get_it_on_the_path():
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert ".venv/bin/close-sync" in text
    assert "./close-sync" in text and "source .venv/bin/activate" in text


@pytest.mark.integration
def test_verbose_shows_the_jobs_debug_logs_and_never_the_key(workdir, user_sim):
    proc = workdir.run(
        "--verbose", "validate", "--config", str(DEMO_CONFIG), "--close-url", user_sim.base_url,
        env={"CLOSE_API_KEY": SIM_KEY},
    )
    assert proc.returncode == 0, proc.stderr
    debug = [line for line in proc.stderr.splitlines() if line.startswith("DEBUG ")]
    assert any(line.startswith("DEBUG pipeline.cli: Close at ") and "key accepted" in line for line in debug), proc.stderr
    assert SIM_KEY not in proc.stderr + proc.stdout
    quiet = workdir.run("validate", "--config", str(DEMO_CONFIG), "--close-url", user_sim.base_url,
                        env={"CLOSE_API_KEY": SIM_KEY})
    assert "DEBUG" not in quiet.stderr


@pytest.mark.integration
def test_a_lead_without_a_company_name_is_shown_by_its_first_contacts_name(workdir, user_sim):
    events = workdir.path / "events.jsonl"
    events.write_text(
        json.dumps({"type": "identify", "messageId": "m1", "userId": "user_1", "timestamp": "2026-11-01T00:00:00Z",
                    "traits": {"name": "Ada Lovelace", "email": "ada@example.com", "company": {"id": "comp_1"}}})
        + "\n"
    )
    proc = workdir.run(
        "run", "--config", str(DEMO_CONFIG), "--source", "files", "--input", "events.jsonl",
        "--close-url", user_sim.base_url, "--dead-letter", "dead", "--quiet", env={"CLOSE_API_KEY": SIM_KEY},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (lead,) = user_sim.state()["leads"]
    assert lead["name"] is None  # close-sync writes no name it was not given
    assert lead["display_name"] == "Ada Lovelace"  # what Close shows
    assert re.search(r"Close shows it under its first contact's name \(`display_name`\)", " ".join(
        README.read_text(encoding="utf-8").split()))
