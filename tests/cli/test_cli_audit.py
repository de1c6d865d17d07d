"""The audit log as a new user reads it after `close-sync run` (a subprocess against `close-sync sim`): each
line says when, which run and which mapping, and a change Close refused is marked as not applied."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.cli.helpers_user import DEMO_CONFIG, SIM_KEY, identify, one_line_error

pytestmark = pytest.mark.integration


def test_each_audit_line_has_its_time_run_and_mapping_and_failed_changes_are_not_applied(user_sim, workdir):
    user_sim._admin("POST", "seed", {"custom_fields": {"contact": [{"id": "cf_seats", "name": "Seats", "type": "number"}]}})
    config = workdir.path / "close.yaml"
    config.write_text(
        DEMO_CONFIG.read_text().replace(
            "\npipeline:",
            "\n  - name: Seats\n"
            "    trigger: 'type = \"identify\" and traits.seats exists'\n"
            "    fields: {contact_custom_fields: {cf_seats: $.traits.seats}}\n"
            "\npipeline:",
        )
    )
    rows = [identify(1, plan="pro"), identify(2, seats="many")]  # Close refuses 'many' for a number field
    (workdir.path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    started = datetime.now(UTC)

    proc = workdir.run(
        "run", "--config", str(config), "--source", "files", "--input", "events.jsonl",
        "--close-url", user_sim.base_url, "--quiet", "--dead-letter", "dead", "--audit-log", "audit.jsonl",
        env={"CLOSE_API_KEY": SIM_KEY},
    )

    assert proc.returncode == 1
    one_line_error(proc, "1 event(s) were dead-lettered", "upsert:http_400")
    (letters,) = (workdir.path / "dead").glob("dead-letters-*.jsonl")
    run_id = letters.name.removeprefix("dead-letters-").removesuffix(".jsonl")
    lines = [json.loads(line) for line in (workdir.path / "audit.jsonl").read_text().splitlines()]
    assert {line["run_id"] for line in lines} == {run_id}
    for line in lines:
        moment = datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        assert started - timedelta(seconds=1) <= moment <= datetime.now(UTC)
    by_person = {line["person"]: line for line in lines}
    assert set(by_person) == {"user:u1", "user:u2"}

    created = by_person["user:u1"]
    assert created["mappings"] == ["Identify to Close"]
    assert created["outcome"] == "created" and created["changes"]
    assert all(change["applied"] is True for change in created["changes"])

    # u2's event matched both mappings; their requests merged into one, which Close refused
    failed = by_person["user:u2"]
    assert failed["mappings"] == ["Identify to Close", "Seats"]
    assert failed["outcome"] == "failed:http_400" and failed["http_status"] == 400
    assert {(c["object"], c["action"]) for c in failed["changes"]} == {("lead", "create"), ("contact", "create")}
    assert all(change["applied"] is False for change in failed["changes"])  # what was attempted, not done
    leads = user_sim.state()["leads"]
    assert [lead["custom.cf_demo_company_id"] for lead in leads] == ["c1"]  # nothing of u2 was created
