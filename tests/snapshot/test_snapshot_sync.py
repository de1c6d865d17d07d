"""snapshot-sync end to end against the simulator: only new and changed rows reach Close, state commits at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from closecrm.engine import SettingsError
from closecrm.reverse_etl.snapshot import SchemaDrift
from pipeline.snapshot_state import SnapshotState
from transforms import metrics as m

from .helpers import ARROW_SCHEMA, calls, rows, snapshot_config, sync, write_avro, write_parquet, writes

pytestmark = pytest.mark.integration


def _contacts_by_user(sim) -> dict[str, dict]:
    return {c["name"]: c for c in sim.contacts()}


def test_first_run_creates_every_row_and_commits_the_state(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    export = write_parquet(tmp_path / "v1" / "part-0.parquet", rows(40))
    report = sync(sim, config, export, tmp_path / "state", monkeypatch)

    assert report.count("snapshot_new") == 40
    assert report.failed == 0
    assert len(sim.leads()) == 20 and len(sim.contacts()) == 40
    current = SnapshotState(str(tmp_path / "state")).current()
    assert current is not None and current.name == report.generation
    assert report.count("snapshot_state_rows") == 40


def test_second_run_sends_only_the_changed_rows(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    table = rows(100)
    sync(sim, config, write_parquet(tmp_path / "v1.parquet", table), tmp_path / "state", monkeypatch)
    table[3]["full_name"] = "Renamed Three"
    table[70]["title"] = "CTO"
    before, writes_before = calls(sim), writes(sim)
    report = sync(sim, config, write_parquet(tmp_path / "v2.parquet", table), tmp_path / "state", monkeypatch)

    assert report.count("snapshot_changed") == 2 and report.count("snapshot_unchanged") == 98
    assert report.count(m.REQUESTS_SENT) == 2
    assert report.count(m.OUTCOME_PREFIX + "updated") == 2
    assert writes(sim) - writes_before == 2
    # Start-up validation (3), then per writer batch one custom-field listing and two lookups.
    assert calls(sim) - before <= 3 + 2 * 3 + 2
    assert "Renamed Three" in _contacts_by_user(sim)


def test_a_failing_row_keeps_its_old_fingerprint_and_is_retried(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(
        sim,
        tmp_path,
        fields={"contact_user_id": "user_id", "contact_email": "email", "lead_status_id": "status"},
    )
    table = rows(10)
    state = tmp_path / "state"
    sync(sim, config, write_parquet(tmp_path / "v1.parquet", table), state, monkeypatch)
    table[4]["status"] = "stat_doesnotexist"
    export = write_parquet(tmp_path / "v2.parquet", table)

    second = sync(sim, config, export, state, monkeypatch, dead_letter_dir=str(tmp_path / "dead"))
    assert second.count("snapshot_changed") == 1 and second.count(m.OUTCOME_PREFIX + "failed") == 1
    (letters_file,) = (tmp_path / "dead").glob("dead-letters-*.jsonl")  # one file per run
    letters = [json.loads(line) for line in letters_file.read_text().splitlines()]
    assert [letter["event"]["primary_key"] for letter in letters] == ["u00004"]

    third = sync(sim, config, export, state, monkeypatch)
    assert third.count("snapshot_changed") == 1  # still differs from what was last applied
    assert third.count("snapshot_unchanged") == 9

    table[4]["status"] = sim.statuses()[1]["id"]
    fixed = sync(sim, config, write_parquet(tmp_path / "v3.parquet", table), state, monkeypatch)
    assert fixed.count(m.OUTCOME_PREFIX + "updated") == 1 and fixed.failed == 0
    again = sync(sim, config, write_parquet(tmp_path / "v3.parquet", table), state, monkeypatch)
    assert again.count("snapshot_unchanged") == 10 and again.count(m.REQUESTS_SENT) == 0


def test_rows_that_disappear_are_reported_and_not_deleted(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    sync(sim, config, write_parquet(tmp_path / "v1.parquet", rows(10)), state, monkeypatch)
    report = sync(sim, config, write_parquet(tmp_path / "v2.parquet", rows(7)), state, monkeypatch)

    assert report.count("snapshot_gone") == 3
    assert sorted(report.gone_sample) == ["u00007", "u00008", "u00009"]
    assert len(sim.contacts()) == 10
    # A row that comes back later is new again (its fingerprint left the state).
    back = sync(sim, config, write_parquet(tmp_path / "v3.parquet", rows(10)), state, monkeypatch)
    assert back.count("snapshot_new") == 3 and back.count("snapshot_unchanged") == 7


def test_full_resends_every_row(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    export = write_parquet(tmp_path / "v1.parquet", rows(12))
    sync(sim, config, export, tmp_path / "state", monkeypatch)
    report = sync(sim, config, export, tmp_path / "state", monkeypatch, full=True)

    assert report.count("snapshot_resync") == 12 and report.count(m.REQUESTS_SENT) == 12
    assert report.count(m.OUTCOME_PREFIX + "unchanged") == 12
    assert len(sim.contacts()) == 12


def test_dry_run_lists_changes_and_writes_nothing(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    table = rows(10)
    sync(sim, config, write_parquet(tmp_path / "v1.parquet", table), state, monkeypatch)
    pointer = (state / "CURRENT").read_text()
    generations = sorted(p.name for p in state.iterdir())
    table[1]["full_name"] = "Someone Else"
    writes_before, contacts_before = writes(sim), sim.contacts()

    plan = tmp_path / "plan"
    report = sync(
        sim,
        config,
        write_parquet(tmp_path / "v2.parquet", table + rows(1, start=50)),
        state,
        monkeypatch,
        dry_run=True,
        plan_dir=str(plan),
    )
    assert report.count("snapshot_changed") == 1 and report.count("snapshot_new") == 1
    planned = [json.loads(line) for f in plan.glob("changes*.jsonl") for line in f.read_text().splitlines()]
    assert sorted((p["primary_key"], p["change"]) for p in planned) == [
        ("u00001", "changed"),
        ("u00050", "new"),
    ]
    assert writes(sim) == writes_before and sim.contacts() == contacts_before
    assert (state / "CURRENT").read_text() == pointer and sorted(
        p.name for p in state.iterdir()
    ) == generations


def test_schema_drift_fails_before_any_write(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    missing = pa.schema([f for f in ARROW_SCHEMA if f.name != "email"])
    export = write_parquet(
        tmp_path / "a" / "v1.parquet",
        [{k: v for k, v in r.items() if k != "email"} for r in rows(3)],
        missing,
    )
    with pytest.raises(SchemaDrift, match="'email' .* is missing"):
        sync(sim, config, export, tmp_path / "state", monkeypatch)

    wrong = pa.schema([pa.field("email", pa.bool_()) if f.name == "email" else f for f in ARROW_SCHEMA])
    export = write_parquet(tmp_path / "b" / "v1.parquet", rows(3, email=True), wrong)
    with pytest.raises(SchemaDrift, match="'email' is boolean, which cannot become contact_email"):
        sync(sim, config, export, tmp_path / "state", monkeypatch)
    assert calls(sim) == 0
    assert not (tmp_path / "state").exists()


def test_null_cells_are_no_value_not_a_clear(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    sync(sim, config, write_parquet(tmp_path / "v1.parquet", rows(2)), state, monkeypatch)
    table = rows(2)
    table[0].update(full_name=None, title="Founder")
    report = sync(sim, config, write_parquet(tmp_path / "v2.parquet", table), state, monkeypatch)

    assert report.count("snapshot_changed") == 1
    contact = next(c for c in sim.contacts() if c["title"] == "Founder")
    assert contact["name"] == "User 0"


def test_avro_exports_sync_like_parquet(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    table = rows(6)
    write_avro(tmp_path / "v1" / "part-0.avro", table[:3])
    write_avro(tmp_path / "v1" / "part-1.avro", table[3:])
    first = sync(sim, config, str(tmp_path / "v1" / "*.avro"), state, monkeypatch)
    assert first.count("snapshot_new") == 6 and len(sim.contacts()) == 6
    # The same rows as Parquet later: nothing to send.
    second = sync(sim, config, write_parquet(tmp_path / "v2.parquet", table), state, monkeypatch)
    assert second.count("snapshot_unchanged") == 6 and second.count(m.REQUESTS_SENT) == 0


def test_created_leads_get_the_default_status_which_is_validated_at_start(
    sim, tmp_path: Path, monkeypatch
) -> None:
    status = sim.statuses()[-1]["id"]
    config = snapshot_config(sim, tmp_path, settings={"default_lead_status_id": status})
    sync(sim, config, write_parquet(tmp_path / "v1.parquet", rows(4)), tmp_path / "state", monkeypatch)
    assert {lead["status_id"] for lead in sim.leads()} == {status}

    bogus = config.model_copy(
        update={"settings": config.settings.model_copy(update={"default_lead_status_id": "stat_nope"})}
    )
    with pytest.raises(SettingsError, match="default_lead_status_id"):
        sync(
            sim,
            bogus,
            write_parquet(tmp_path / "v2.parquet", rows(4, start=10)),
            tmp_path / "state2",
            monkeypatch,
        )
    assert len(sim.leads()) == 2
