"""A secret given as a command-line flag stops the command before anything runs, and is never echoed."""

from __future__ import annotations

import pytest

from pipeline.cli_options import secret_flag
from tests.cli.helpers_cli import invoke

SECRET = "api_0123456789abcdefSECRETVALUE"


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--source", "files", "--input", "x.jsonl", "--api-key", SECRET],
        ["run", "--source", "files", "--input", "x.jsonl", f"--api_key={SECRET}"],
        ["run", "--source", "files", "--input", "x.jsonl", f"--close-api-key={SECRET}"],
        ["run", "--source", "files", "--input", "x.jsonl", "--token", SECRET],
        ["run", "--source", "files", "--input", "x.jsonl", SECRET],
        ["validate", f"--api_key={SECRET}"],
        ["snapshot-sync", "--input", "x", "--state", "s", "--password", SECRET],
        ["--verbose", "export", "--out", "o", f"--API-KEY={SECRET}"],
    ],
)
def test_a_key_on_the_command_line_is_refused_without_echoing_it(args, tmp_path):
    # No $CLOSE_API_KEY and an input that does not exist: any later check would fail differently,
    # so the refusal is the first thing that happened.
    result = invoke(args, env={"CLOSE_API_KEY": ""})
    assert result.exit_code == 2, result.output
    assert "secret" in result.output or "Close API key" in result.output
    assert SECRET not in result.output
    assert "SECRETVALUE" not in result.output


def test_the_simulator_keeps_its_own_test_key_flag():
    result = invoke(["sim", "--help"])
    assert result.exit_code == 0
    assert "--api-key" in result.output


@pytest.mark.parametrize(
    ("arg", "flag"),
    [
        ("--api-key", "--api-key"),
        ("--api_key=x", "--api_key"),
        ("--s3_secret_access_key=x", "--s3_secret_access_key"),
        ("--db-password", "--db-password"),
        ("--api-key-file", None),
        ("--api_key_env=X", None),
        ("--dataflow_kms_key=projects/p/keys/k", None),
        ("--s3_access_key_id=AKIA", None),
        ("--runner", None),
        ("--input", None),
        ("keyboard.jsonl", None),
        ("--", None),
    ],
)
def test_which_flags_count_as_carrying_a_secret(arg, flag):
    assert secret_flag(arg) == flag


def test_beam_options_that_name_no_secret_pass_the_check(tmp_path):
    # --dataflow_kms_key names a key in Cloud KMS, it holds none: the run gets past the check and
    # stops at the missing API key instead.
    events = tmp_path / "e.jsonl"
    events.write_text('{"type":"identify","userId":"u1","traits":{"email":"a@b.example"}}\n')
    result = invoke(
        ["run", "--source", "files", "--input", str(events), "--dataflow_kms_key=projects/p/k"],
        env={"CLOSE_API_KEY": ""},
    )
    assert result.exit_code != 0
    assert "no Close API key" in result.output
