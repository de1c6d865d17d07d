"""Each failure a user can cause prints one line that says what and how to fix, and exits non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.helpers_cli import assert_one_line_error, invoke

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "http://127.0.0.1:9/api/v1/"  # discard port: nothing listens there


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "identify", "messageId": "m1", "userId": "u1", "traits": {"email": "a@b.example"}}\n')
    return path


def test_a_config_with_problems_names_each_path_on_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("settings:\n  lead_custom_field_id_for_company_id: abc\n  colour: blue\n")
    result = invoke(["validate", "--config", str(bad)], env={"CLOSE_API_KEY": "k"})
    assert_one_line_error(
        result, "invalid config", "settings.lead_custom_field_id_for_company_id", "settings.colour: unknown key"
    )


def test_invalid_yaml_gives_the_line_and_column(tmp_path, events):
    bad = tmp_path / "bad.yaml"
    bad.write_text("settings: [unclosed\n")
    result = invoke(["run", "--config", str(bad), "--source", "files", "--input", str(events)])
    assert_one_line_error(result, "invalid YAML at line")


def test_a_missing_config_file_says_to_check_the_path(tmp_path):
    result = invoke(["validate", "--config", str(tmp_path / "nope.yaml")])
    assert_one_line_error(result, "nope.yaml", "check the --config path")


def test_a_missing_api_key_says_where_it_looked(monkeypatch):
    monkeypatch.delenv("CLOSE_API_KEY", raising=False)
    result = invoke(["validate", "--close-url", UNREACHABLE])
    assert_one_line_error(result, "$CLOSE_API_KEY", "--api-key-file")


def test_an_unreachable_close_says_so_and_names_the_url():
    result = invoke(["validate", "--close-url", UNREACHABLE], env={"CLOSE_API_KEY": "k"})
    assert_one_line_error(result, "cannot reach Close at " + UNREACHABLE, "check --close-url")


@pytest.mark.integration
def test_a_rejected_key_says_how_to_get_a_valid_one(sim, events):
    result = invoke(
        ["run", "--source", "files", "--input", str(events), "--close-url", sim.base_url],
        env={"CLOSE_API_KEY": "not_the_key"},
    )
    assert_one_line_error(result, "API key", "401", "CLOSE_API_KEY")
    assert sim.stats()["by_group"].get("contact_write", 0) == 0


@pytest.mark.integration
def test_a_missing_custom_field_names_the_setting_and_the_fix(sim, tmp_path, events):
    config = tmp_path / "close.yaml"
    config.write_text("settings:\n  contact_custom_field_id_for_user_id: cf_not_there\n")
    for command in (["validate"], ["run", "--source", "files", "--input", str(events)]):
        result = invoke(
            [*command, "--config", str(config), "--close-url", sim.base_url], env={"CLOSE_API_KEY": sim.api_key}
        )
        assert_one_line_error(result, "contact_custom_field_id_for_user_id", "cf_not_there", "Fix:")
    assert sim.contacts() == []


@pytest.mark.integration
def test_a_url_that_is_not_the_api_root_is_called_out(sim):
    result = invoke(["validate", "--close-url", sim.root_url], env={"CLOSE_API_KEY": sim.api_key})
    assert_one_line_error(result, "404", "/api/v1/")


@pytest.mark.integration
def test_validate_succeeds_on_one_line_when_the_fields_exist(sim, tmp_path):
    company = sim.create_custom_field("lead", "Company ID")
    config = tmp_path / "close.yaml"
    config.write_text(f"settings:\n  lead_custom_field_id_for_company_id: {company}\n")
    result = invoke(
        ["validate", "--config", str(config), "--close-url", sim.base_url], env={"CLOSE_API_KEY": sim.api_key}
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: config valid")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_installed_command_prints_no_traceback_unless_verbose():
    env = {"PATH": "/usr/bin:/bin", "CLOSE_API_KEY": "k", "HOME": str(REPO)}
    quiet = _cli("validate", "--close-url", UNREACHABLE, env=env)
    assert quiet.returncode == 1
    assert quiet.stderr.strip().count("\n") == 0 and "Traceback" not in quiet.stderr
    assert quiet.stderr.startswith("Error: cannot reach Close")
    verbose = _cli("--verbose", "validate", "--close-url", UNREACHABLE, env=env)
    assert verbose.returncode != 0
    assert "Traceback" in verbose.stderr
