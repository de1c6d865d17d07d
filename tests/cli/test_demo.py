"""`make demo`'s entry point, run as a user runs it: a subprocess, the bundled events, the in-process simulator."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.demo import COMPANY_CF, EVENTS, PLAN_CF, USER_CF

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], dict, Path]:
    out = tmp_path_factory.mktemp("demo")
    snapshot = out / "state.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.demo", "--snapshot", str(snapshot), "--out", str(out / "run")],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "HOME": str(out), "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    state = json.loads(snapshot.read_text()) if snapshot.exists() else {}
    return proc, state, out / "run"


def figures(stdout: str) -> dict[str, float]:
    line = next(line for line in stdout.splitlines() if line.startswith("demo: "))
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


def test_the_demo_exits_0_and_says_the_bad_events_were_dead_lettered_on_purpose(demo):
    proc, _, _ = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "close-sync run summary" in proc.stdout
    assert "dead-lettered, as intended" in proc.stdout
    assert "Close API calls the simulator served" in proc.stdout
    assert "a few of the 120 leads" in proc.stdout
    assert "progress: " in proc.stderr  # the periodic line of a local run


def test_the_demo_figures_match_the_bundled_events(demo):
    proc, _, _ = demo
    got = figures(proc.stdout)
    assert got["events"] == len(EVENTS.read_text().splitlines())
    assert got["dead_lettered"] == 6  # pipeline.samples.BAD_LINES
    assert got["leads"] == 120
    assert got["contacts"] == 497  # 500 users; 3 of them only ever sent pages and tracks
    assert got["calls_per_event"] < 0.25  # collapsed and batched: far below one call per event
    assert got["seconds"] < 90


def test_the_simulator_ends_with_one_lead_per_company_and_one_contact_per_user(demo):
    _, state, _ = demo
    leads = state["leads"]
    companies = Counter(lead[f"custom.{COMPANY_CF}"] for lead in leads)
    assert len(companies) == 120 and set(companies.values()) == {1}
    contacts = [c for lead in leads for c in lead["contacts"]]
    users = Counter(c[f"custom.{USER_CF}"] for c in contacts)
    assert len(users) == 497 and set(users.values()) == {1}
    for lead in leads:
        # users are spread over companies by index: user i works at company i % 120
        for contact in lead["contacts"]:
            index = int(contact[f"custom.{USER_CF}"].removeprefix("user_"))
            assert lead[f"custom.{COMPANY_CF}"] == f"comp_{index % 120:05d}"
    assert all(c.get(f"custom.{PLAN_CF}") in {"free", "starter", "pro", "enterprise"} for c in contacts)
    # a second phone from a later event was appended, never replacing the first
    two_phones = [c for c in contacts if len(c.get("phones") or []) == 2]
    assert two_phones
    assert all(c["phones"][0]["phone"].startswith("+1415555") for c in two_phones)


def test_the_demo_leaves_the_dead_letters_and_the_audit_log_to_look_at(demo):
    _, _, run_dir = demo
    (letters_file,) = (run_dir / "dead").glob("dead-letters-*.jsonl")  # one file per run, named by its run id
    letters = [json.loads(line) for line in letters_file.read_text().splitlines()]
    assert len(letters) == 6
    assert {"stage", "reason", "event", "request", "error", "attempts", "event_ids"} <= set(letters[0])
    audit = (run_dir / "audit.jsonl").read_text().splitlines()
    assert len(audit) == 497
