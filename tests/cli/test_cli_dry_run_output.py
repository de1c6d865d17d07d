"""A dry run at 80 columns: the plan keeps every id and email whole, the summary says what would happen
(not "created"), nothing is written to Close, and no temporary directory is left behind."""

from __future__ import annotations

import json

import pytest

from closecrm.events.parse import EVENT_TYPES
from tests.cli.helpers_user import DEMO_CONFIG, SAMPLE_EVENTS, summary_rows

pytestmark = pytest.mark.integration


def _good(line: str) -> bool:
    """A sample event that is not one of the bad ones put there on purpose."""
    try:
        event = json.loads(line)
    except ValueError:
        return False
    traits = event.get("traits", {}) if isinstance(event, dict) else None
    return (
        isinstance(traits, dict)
        and event.get("type") in EVENT_TYPES
        and bool(event.get("messageId"))
        and "@" in str(traits.get("email", "@"))
    )


def test_a_dry_run_at_80_columns_cuts_nothing_writes_nothing_and_leaves_no_temp_dir(workdir, user_sim):
    lines = [line for line in SAMPLE_EVENTS.read_text().splitlines() if _good(line)][:150]
    (workdir.path / "events.jsonl").write_text("\n".join(lines) + "\n")
    proc = workdir.run(
        "run", "--config", str(DEMO_CONFIG), "--source", "files", "--input", "events.jsonl",
        "--close-url", user_sim.base_url, "--dry-run", "--quiet",
        env={"CLOSE_API_KEY": "cli_test_key_not_real", "COLUMNS": "80"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    emails = {json.loads(line)["traits"]["email"] for line in lines if json.loads(line).get("traits", {}).get("email")}
    assert emails
    missing = [email for email in emails if email not in out]
    assert not missing, missing[:5]
    for cf in ("custom.cf_demo_company_id: comp_", "custom.cf_demo_user_id: user_", "custom.cf_demo_plan: "):
        assert cf in out
    assert "…" not in out.split("dry run: writes it would make")[0]  # the plan cut nothing
    # the summary says what would happen, never that it happened
    rows = {label: n for _, label, n in summary_rows(out)}
    assert rows["would create"] > 0 and rows["planned (dry run, not sent)"] > 0 and rows["ended planned (nothing written)"]
    assert "created" not in rows and "ended applied" not in rows and "sent to Close" not in rows
    assert "dry run: nothing was written to Close" in out
    assert user_sim.writes() == 0
    assert workdir.temp_left() == []
    assert workdir.left_behind() == ["events.jsonl"]
