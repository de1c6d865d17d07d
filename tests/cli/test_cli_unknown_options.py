"""An option that neither close-sync nor Beam knows stops `run` before anything runs, with the closest
name; Beam's own options still pass through to Beam."""

from __future__ import annotations

import pytest

from tests.cli.helpers_user import DEMO_CONFIG, one_line_error, sample_events

pytestmark = pytest.mark.integration


def _run(workdir, sim, *extra):
    events = sample_events(workdir.path / "events.jsonl", 40)
    return workdir.run(
        "run", "--config", str(DEMO_CONFIG), "--source", "files", "--input", events.name,
        "--close-url", sim.base_url, "--quiet", *extra,
        env={"CLOSE_API_KEY": "cli_test_key_not_real"},
    )


def test_a_misspelled_option_is_refused_with_a_suggestion_before_close_is_called(workdir, user_sim):
    proc = _run(workdir, user_sim, "--dead-leter", "out")
    one_line_error(proc, "unknown option --dead-leter", "did you mean --dead-letter?", status=2)
    assert user_sim.stats()["requests_total"] == 0  # not even the start-up check
    assert workdir.left_behind() == ["events.jsonl"]  # no dead-letter folder, no run folder, no ledger


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--temp-location", "/tmp/x"], ["unknown option --temp-location", "did you mean --temp_location?"]),
        (["--dry-runn"], ["did you mean --dry-run?"]),
        (["more-events.jsonl"], ["unexpected argument 'more-events.jsonl'", "quote the glob"]),
        (["--direct_num_workers", "two"], ["--direct_num_workers", "invalid int value"]),
    ],
)
def test_beam_spellings_stray_files_and_bad_beam_values_are_one_line_too(workdir, user_sim, extra, needles):
    proc = _run(workdir, user_sim, *extra)
    one_line_error(proc, *needles, status=2)
    assert user_sim.stats()["requests_total"] == 0


def test_real_beam_options_still_reach_beam_and_the_job_runs(workdir, user_sim):
    proc = _run(
        workdir, user_sim, "--runner", "DirectRunner", "--direct_num_workers", "1", "--project", "demo-project",
        "--temp_location", str(workdir.tmp), "--dead-letter", "dead",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unknown option" not in proc.stderr
    assert user_sim.writes() > 0
    assert user_sim.state()["leads"]
