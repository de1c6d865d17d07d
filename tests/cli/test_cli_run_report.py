"""What a run reports agrees with itself and with Close: the progress line's numbers, the summary's rows
(one meaning per label), and the dead letters by reason with the file they are in."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.cli.helpers_user import (
    DEMO_CONFIG,
    SAMPLE_EVENTS,
    SimProcess,
    Workdir,
    make_workdir,
    numbers,
    summary_rows,
)

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def full_run(sim_process: SimProcess, tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Workdir, SimProcess]:
    """The bundled sample events (bad ones included) through `close-sync run`, progress on, against the
    simulator with Close's rate limits slowed four times, so the run lasts long enough for several
    progress lines (its 120 lead creates, each with the company's people nested, take about 12 s)."""
    sim_process.fresh(rate_limits=True, time_scale=0.25)
    workdir = make_workdir(tmp_path_factory.mktemp("run"))
    proc = workdir.run(
        "run", "--config", str(DEMO_CONFIG), "--source", "files", "--input", str(SAMPLE_EVENTS),
        "--close-url", sim_process.base_url, "--dead-letter", "dead",
        env={"CLOSE_API_KEY": "cli_test_key_not_real"},
    )
    return proc, workdir, sim_process


def test_progress_lines_are_labelled_and_their_numbers_agree(full_run):
    proc, _, _ = full_run
    lines = [line for line in proc.stderr.splitlines() if line.startswith("progress: ")]
    assert len(lines) >= 2, proc.stderr[-3000:]
    for line in lines:
        assert "applied" not in line
        read, total = numbers(r"events read ([\d,]+)/([\d,]+)", line)
        assert read <= total
        done, sent = numbers(r"requests done ([\d,]+)/([\d,]+) sent", line)
        assert done <= sent
        calls, rate = re.search(r"Close API calls ([\d,]+) \(([\d.]+)/s\)", line).groups()
        assert (int(calls.replace(",", "")) > 0) == (float(rate) > 0), line
        assert re.search(r"429s [\d,]+", line)
    (last_calls,) = numbers(r"Close API calls ([\d,]+)", lines[-1])
    table_calls = dict(((s, m), n) for s, m, n in summary_rows(proc.stdout))[("Close API", "calls total (the job's)")]
    assert last_calls <= table_calls


def test_the_summary_gives_each_row_one_meaning_and_its_totals_match_close(full_run):
    proc, _, sim = full_run
    rows = summary_rows(proc.stdout)
    labels = [label for _, label, _ in rows]
    assert len(labels) == len(set(labels)), labels  # no two "skipped" rows
    values = {label: n for _, label, n in rows}
    assert values["read"] == values["ended applied"] + values["ended not sent (the 3 above, or request skipped)"] + values[
        "ended dead-lettered"
    ]
    assert "seconds paced under the limit (all calls)" in values
    assert not any(label.startswith("other") or label.startswith(("api_", "batch_")) for label in labels)
    assert "Each event read ends once" in proc.stdout
    # every call Close saw is counted: the job's in the table, the start-up check's on the line after it
    check = int(re.search(r"start-up check: (\d+) Close API call", proc.stdout).group(1))
    assert values["calls total (the job's)"] + check == sim.stats()["requests_total"]


def test_the_last_line_gives_the_dead_letters_by_reason_and_their_file(full_run):
    proc, workdir, _ = full_run
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"Error: (\d+) event\(s\) were dead-lettered \((.+)\); they are in (\S+): fix the cause, "
                         r"then close-sync replay --dead-letter FILE\.", last)
    assert match, last
    dead, reasons, where = int(match.group(1)), match.group(2), Path(workdir.path, match.group(3))
    assert where.is_file() and where.parent == workdir.path / "dead"
    letters = [line for line in where.read_text().splitlines() if line.strip()]
    assert len(letters) == dead
    said = Counter({reason: int(n) for n, reason in re.findall(r"(\d+) ([^,]+)", reasons)})
    assert sum(said.values()) == dead and "parse:unparseable_json" in said
