"""The demo, run as a user runs it (`close-sync demo`), counts the same calls in every total, leaves no
temporary directory behind, and gives the figures the README quotes."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.cli.helpers_user import REPO, Workdir, make_workdir, summary_rows

pytestmark = pytest.mark.integration

README = REPO / "README.md"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Workdir]:
    workdir = make_workdir(tmp_path_factory.mktemp("demo"))
    proc = workdir.run("demo", "--quiet", env={"COLUMNS": "120"})
    return proc, workdir


def last_line(text: str) -> dict[str, float]:
    line = next(line for line in text.splitlines()[::-1] if line.startswith("demo: "))
    return {key: float(value) for key, value in re.findall(r"(\w+)=([\d.]+)", line)}


def calls_table(stdout: str) -> dict[str, int]:
    """The rows of the demo's "Close API calls the simulator served" table: name → calls."""
    table = stdout.split("Close API calls the simulator served", 1)[1]
    rows = re.findall(r"^│ (\S[^│]*?)\s*│\s*([\d,]+) │", table, re.MULTILINE)
    return {name: int(n.replace(",", "")) for name, n in rows}


def test_every_total_counts_the_same_calls_and_no_temp_dir_is_left(demo):
    proc, workdir = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = last_line(proc.stdout)
    table = calls_table(proc.stdout)
    summary = {label: n for _, label, n in summary_rows(proc.stdout)}
    assert summary["calls total (the job's)"] == table["the job, total"] == figures["api_calls"]
    assert table["start-up check"] == figures["check_calls"] > 0
    assert table["served in all"] == figures["api_calls"] + figures["check_calls"]
    assert sum(n for name, n in table.items() if name not in ("the job, total", "start-up check", "served in all")) == (
        figures["api_calls"]
    )
    assert table["search"] == figures["searches"]
    said = " ".join(proc.stdout.split())
    assert "were in a temporary directory, now removed; give --out DIR to keep them" in said
    assert workdir.temp_left() == []
    assert workdir.left_behind() == []


def _readme() -> str:
    return " ".join(README.read_text(encoding="utf-8").split())


def test_the_readme_quotes_the_figures_of_a_fresh_run(demo):
    proc, _ = demo
    run = last_line(proc.stdout)
    table = calls_table(proc.stdout)
    text = _readme()
    quoted = re.search(
        r"the job makes \*\*([\d,]+) API calls, ([\d.]+) per event\*\*: ([\d,]+) contact and lead writes, "
        r"(\d+) searches and (\d+) reads?, after a start-up check of (\d+) calls",
        text,
    )
    assert quoted, "README: the sentence with the demo's calls"
    calls, per_event, writes, searches, reads, check = (float(g.replace(",", "")) for g in quoted.groups())
    # Batching depends a little on timing, so calls and searches are checked within a range; what the
    # data decides (writes, the check) is checked exactly.
    assert abs(calls - run["api_calls"]) <= 0.03 * run["api_calls"], (calls, run)
    assert abs(per_event - run["calls_per_event"]) <= 0.005, (per_event, run)
    assert writes == table.get("contact_write", 0) + table["lead_write"]  # a new company's people: nested
    assert abs(searches - run["searches"]) <= 5, (searches, run)
    assert abs(reads - table.get("read", 0)) <= 3, (reads, table)
    assert check == run["check_calls"]

    example = re.search(r"```\s*(demo: [^`]*?)\s*```", README.read_text(encoding="utf-8"))
    assert example, "README: the demo's last line"
    shown = last_line(example.group(1))
    assert set(shown) == set(run), "README: the demo's last line has other keys than the demo prints"
    for key in ("events", "leads", "contacts", "check_calls", "responses_429", "dead_lettered"):
        assert shown[key] == run[key], key
    assert abs(shown["api_calls"] - run["api_calls"]) <= 0.03 * run["api_calls"]
    assert abs(shown["searches"] - run["searches"]) <= 5

    (seconds,) = map(float, re.search(r"The run itself takes about (\d+) s", text).groups())
    # Not more than twice this run's time; a busy machine (2 cores shared by the tests) slows this run,
    # so the quoted time may be up to 4 times less than it.
    for quoted_seconds in (seconds, shown["seconds"]):
        assert run["seconds"] / 4 <= quoted_seconds <= run["seconds"] * 2, (quoted_seconds, run["seconds"])
