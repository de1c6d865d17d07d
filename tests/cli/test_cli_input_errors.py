"""`run --input` that gives the job nothing to read is one line and a non-zero exit, before Close is
called: a glob that matches nothing, a file of no format close-sync reads, a file that is not there."""

from __future__ import annotations

import pytest

from tests.cli.helpers_user import DEMO_CONFIG, one_line_error

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("given", "needles"),
    [
        ("nothing/*.jsonl", ["--input nothing/*.jsonl matches no file", "check the directory and the pattern"]),
        ("small.txt", ["--input small.txt matches no file close-sync reads (", "small.txt", ".jsonl", ".parquet"]),
        ("missing.jsonl", ["--input missing.jsonl: no such file", "check the path"]),
    ],
)
def test_an_input_with_nothing_to_read_stops_the_run(workdir, user_sim, given, needles):
    (workdir.path / "small.txt").write_text('{"type": "identify", "userId": "u1"}\n')
    proc = workdir.run(
        "run", "--config", str(DEMO_CONFIG), "--source", "files", "--input", given,
        "--close-url", user_sim.base_url, "--quiet",
        env={"CLOSE_API_KEY": "cli_test_key_not_real"},
    )
    one_line_error(proc, *needles, status=1)
    assert "summary" not in proc.stdout  # no all-zero table
    assert user_sim.stats()["requests_total"] == 0
    assert workdir.left_behind() == ["small.txt"]
