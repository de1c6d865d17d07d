"""`close-sync run` against the simulator: --dry-run writes nothing and prints the plan; --audit-log has the
debugger's view of every request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.demo import COMPANY_CF, CONFIG, CUSTOM_FIELDS, EVENTS, USER_CF
from tests.cli.helpers_cli import invoke

pytestmark = pytest.mark.integration

WRITE_GROUPS = ("lead_write", "contact_write")


@pytest.fixture
def events(tmp_path: Path) -> Path:
    """The first 60 bundled sample events (a dozen people, repeats, pages and tracks)."""
    path = tmp_path / "events.jsonl"
    path.write_text("".join(EVENTS.read_text().splitlines(keepends=True)[:60]))
    return path


@pytest.fixture
def seeded(sim):
    """The demo's custom fields and one existing company (comp_00000) with a contact that has no phone yet."""
    sim.seed({"custom_fields": CUSTOM_FIELDS})
    sim.seed(
        {
            "leads": [
                {
                    "name": "Acme Inc 0",
                    f"custom.{COMPANY_CF}": "comp_00000",
                    "contacts": [
                        {
                            "name": "Ada Lovelace",
                            f"custom.{USER_CF}": "user_000000",
                            "emails": [{"email": "ada.lovelace0@acme0.example.com", "type": "office"}],
                        }
                    ],
                }
            ]
        }
    )
    return sim


def _run(sim, events: Path, *extra: str):
    return invoke(
        ["run", "--config", str(CONFIG), "--source", "files", "--input", str(events), "--close-url", sim.base_url,
         "--quiet", *extra],
        env={"CLOSE_API_KEY": sim.api_key},
    )


def test_dry_run_reads_close_writes_nothing_and_prints_each_branch_and_change(seeded, events):
    before = (seeded.leads(), seeded.contacts())
    result = _run(seeded, events, "--dry-run")
    assert result.exit_code == 0, result.output
    stats = seeded.stats()
    assert not any(stats["by_group"].get(group, 0) for group in WRITE_GROUPS), stats["by_group"]
    assert stats["by_group"].get("search", 0) > 0  # it did read Close to decide
    assert (seeded.leads(), seeded.contacts()) == before
    out = result.stdout
    assert "dry run: what close-sync would do (nothing was written)" in out
    # the known person: her lead found by company id, her phone appended
    ada = next(line for line in out.splitlines() if "user:user_000000" in line)
    assert "updated" in ada and "lead_by_company_id" in ada
    assert "contact " in out and "update phones:" in out
    # a new company: one lead created with the contact nested
    assert "nothing_found" in out and "lead create custom.cf_demo_company_id: comp_00001" in out
    assert "nothing was written to Close." in out
    assert "close-sync run summary" in out


def test_audit_log_has_one_line_per_request_with_ids_branch_outcome_and_calls(seeded, events, tmp_path):
    audit = tmp_path / "audit.jsonl"
    result = _run(seeded, events, "--audit-log", str(audit), "--dead-letter", str(tmp_path / "dead"))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    people = {r["person"] for r in records}
    assert len(records) == len(people) > 5  # collapsed: one request per person in a batch run
    for record in records:
        assert record["event_ids"] and all(isinstance(e, str) for e in record["event_ids"])
        assert record["branch"]
        assert record["outcome"] in ("created", "updated", "unchanged")
        assert record["lead_ids"] and record["lead_ids"][0].startswith("lead_")
        assert record["contact_ids"] and record["contact_ids"][0].startswith("cont_")
        assert record["calls"] >= 1
    contacts = {c["id"] for c in seeded.contacts()}
    assert {cid for r in records for cid in r["contact_ids"]} == contacts


def test_the_state_location_holds_the_ledger_and_no_created_ids_keeps_none(seeded, events, tmp_path):
    ledger_root = tmp_path / "ledger"
    result = _run(seeded, events, "--dead-letter", str(tmp_path / "dead1"), "--state-location", str(ledger_root))
    assert result.exit_code == 0, result.output
    assert f"state location: {ledger_root} (created-id ledger: {ledger_root / 'created-ids'}" in result.output
    written = [p for p in ledger_root.rglob("*") if p.is_file()]
    assert written and all("created-ids" in p.parts for p in written)
    assert all(seeded.api_key not in p.read_text() for p in written)
    assert not (tmp_path / "dead1" / "created-ids").exists()

    result = _run(seeded, events, "--dead-letter", str(tmp_path / "dead2"), "--no-created-ids")
    assert result.exit_code == 0, result.output
    assert "state location: none (--no-created-ids)" in result.output
    assert not list((tmp_path / "dead2").rglob("created-ids"))
