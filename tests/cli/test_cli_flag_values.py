"""A bad flag value is one line that names the flag and the fix (exit 2), before anything runs."""

from __future__ import annotations

import pytest

from tests.cli.helpers_user import DEMO_CONFIG, one_line_error, sample_events

pytestmark = pytest.mark.integration

KEY = {"CLOSE_API_KEY": "cli_test_key_not_real"}


def _run_args(workdir, sim, *extra: str) -> list[str]:
    events = sample_events(workdir.path / "events.jsonl", 20)
    return ["run", "--config", str(DEMO_CONFIG), "--source", "files", "--input", events.name,
            "--close-url", sim.base_url, "--quiet", *extra]


def test_a_close_url_without_a_scheme_says_to_write_it_in_full(workdir, user_sim):
    bare = user_sim.base_url.removeprefix("http://")
    for args in (["validate", "--close-url", bare], [*_run_args(workdir, user_sim)[:-3], "--close-url", bare]):
        proc = workdir.run(*args, env=KEY)
        line = one_line_error(proc, f"--close-url '{bare}' is not an http(s) URL", "write it in full", status=2)
        assert "RemoteProtocolError" not in line
    assert user_sim.stats()["requests_total"] == 0


@pytest.mark.parametrize("share", ["0", "-1", "1.5"])
def test_a_budget_share_out_of_range_names_the_flag_and_the_range(workdir, user_sim, share):
    proc = workdir.run(*_run_args(workdir, user_sim, "--budget-share", share), env=KEY)
    one_line_error(proc, f"--budget-share {float(share):g} is out of range", "above 0 and at most 1", status=2)
    export = workdir.run("export", "--out", "tables", "--close-url", user_sim.base_url, "--budget-share", share, env=KEY)
    one_line_error(export, "--budget-share", "out of range", status=2)
    assert user_sim.stats()["requests_total"] == 0
    assert not (workdir.path / "tables").exists()


def test_a_missing_api_key_file_names_the_flag_and_the_alternative(workdir, user_sim):
    for args in (
        ["validate", "--close-url", user_sim.base_url],
        _run_args(workdir, user_sim),
        ["export", "--out", "tables", "--close-url", user_sim.base_url],
    ):
        proc = workdir.run(*args, "--api-key-file", "secrets/close.key", env={"CLOSE_API_KEY": ""})
        line = one_line_error(
            proc, "--api-key-file secrets/close.key does not exist", "$CLOSE_API_KEY", status=2
        )
        assert "FileNotFoundError" not in line
    assert user_sim.stats()["requests_total"] == 0
