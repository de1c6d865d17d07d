"""End to end on the DirectRunner: files in, the simulator's state out."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.avro_io import write_events_avro
from tests.pipeline.helpers import letter_files, letters_in, read_lines, run_files, sim_config, write_jsonl

pytestmark = pytest.mark.integration


def identify(user: int, company: int, n: int, at: datetime, **traits) -> dict:
    body = {
        "name": f"User {user}",
        "email": f"user{user}@c{company}.example.com",
        "company": {"id": f"comp_{company}", "name": f"Company {company}"},
    }
    body.update(traits)
    return {
        "type": "identify",
        "messageId": f"m_{user}_{n}",
        "userId": f"u_{user}",
        "timestamp": (at + timedelta(seconds=n)).isoformat(),
        "traits": body,
    }


def events_200() -> list[dict]:
    """200 identify events of 20 users across 3 new companies (10 repeats each)."""
    at = datetime(2026, 11, 1, tzinfo=UTC)
    return [identify(u, u % 3, n, at) for n in range(10) for u in range(20)]


def custom(record: dict, cf: str):
    return record.get(f"custom.{cf}")


def test_200_events_of_20_users_across_3_new_companies_give_3_leads_and_20_contacts(sim, tmp_path, monkeypatch):
    config, cf = sim_config(sim, tmp_path)
    path = write_jsonl(tmp_path / "events.jsonl", events_200())
    dead = run_files(sim, config, str(path), tmp_path, monkeypatch)
    assert dead == 0
    leads = sim.leads()
    assert sorted(custom(lead, cf["company"]) for lead in leads) == ["comp_0", "comp_1", "comp_2"]
    contacts = sim.contacts()
    assert len(contacts) == 20
    assert len({custom(c, cf["user"]) for c in contacts}) == 20
    by_lead = Counter(c["lead_id"] for c in contacts)
    assert sorted(by_lead.values()) == [6, 7, 7]
    # collapsing: far fewer writes than events
    stats = sim.stats()
    writes = stats["by_group"].get("lead_write", 0) + stats["by_group"].get("contact_write", 0)
    assert writes <= 23


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "avro", "parquet"])
def test_each_file_format_syncs_the_same_end_state(sim, tmp_path, monkeypatch, fmt):
    config, cf = sim_config(sim, tmp_path)
    events = events_200()[:60]
    if fmt.startswith("jsonl"):
        path = write_jsonl(tmp_path / f"events.{fmt}", events, gz=fmt.endswith("gz"))
    elif fmt == "avro":
        path = tmp_path / "events.avro"
        write_events_avro(str(path), events)
    else:
        path = tmp_path / "events.parquet"
        rows = [{**e, "traits": json.dumps(e["traits"])} for e in events]
        pq.write_table(pa.Table.from_pylist(rows), path)
    assert run_files(sim, config, str(path), tmp_path, monkeypatch) == 0
    assert len(sim.leads()) == 3
    assert len(sim.contacts()) == 20


def test_every_bad_input_becomes_a_dead_letter_or_a_dropped_field_and_every_event_is_accounted_for(
    sim, tmp_path, monkeypatch
):
    config, cf = sim_config(sim, tmp_path, {"pipeline": {"batch_size": 50, "max_event_bytes": 2048}})
    at = datetime(2026, 11, 1, tzinfo=UTC)
    good = [identify(u, 0, 0, at) for u in range(5)]
    redelivered = [good[0], good[1]]
    opted_out = {**identify(90, 0, 0, at), "integrations": {"Close": False}}
    page = {"type": "page", "messageId": "p1", "userId": "u_1", "timestamp": at.isoformat()}
    bad = [
        "{this is not json",
        '["an", "array"]',
        json.dumps({"type": "identify", "messageId": "no_ids", "traits": {"email": "x@example.com"}}),
        json.dumps({"type": "identify", "messageId": "bad_traits", "userId": "u_x", "traits": "nope"}),
        json.dumps({"type": "identify", "messageId": "big", "userId": "u_z", "traits": {"bio": "x" * 5000}}),
        json.dumps({"type": "warp", "messageId": "bad_type", "userId": "u_w"}),
    ]
    # bad optional values: left out and recorded, the rest of the event applied
    bad_values = [
        {"type": "identify", "messageId": "bad_email", "userId": "u_y", "traits": {"email": "nope", "title": "CTO"}},
        identify(91, 0, 0, at, name={"first": "a dict"}),
    ]
    path = write_jsonl(tmp_path / "events.jsonl", [*good, *redelivered, opted_out, page, *bad, *bad_values])
    audit = tmp_path / "audit.jsonl"
    dead = run_files(sim, config, str(path), tmp_path, monkeypatch, audit_log=str(audit))
    read = len(good) + len(redelivered) + 2 + len(bad) + len(bad_values)
    letters = letters_in(tmp_path / "dead")
    reasons = Counter(letter["reason"] for letter in letters)
    assert dead == len(bad) == len(letters)
    assert reasons == {
        "unparseable_json": 1,
        "not_an_object": 1,
        "missing_id": 1,
        "wrong_type:traits": 1,
        "too_large": 1,
        "unknown_type": 1,
    }
    assert all(letter["stage"] == "parse" for letter in letters)
    contacts = {custom(c, cf["user"]): c for c in sim.contacts()}
    assert set(contacts) == {*(f"u_{u}" for u in range(5)), "u_y", "u_91"}
    assert contacts["u_y"]["title"] == "CTO" and not contacts["u_y"]["emails"]
    assert not contacts["u_91"]["name"] and contacts["u_91"]["emails"][0]["email"] == "user91@c0.example.com"
    # accounting: applied + skipped + dead-lettered = read
    audit_lines = read_lines(audit)
    applied_events = {e for line in audit_lines for e in line["event_ids"]}
    skipped = len(redelivered) + 2  # duplicates, the opted-out event, the page no mapping matches
    assert len(applied_events) + skipped + dead == read
    dropped = {tuple(line["event_ids"]): line["dropped"] for line in audit_lines if line["dropped"]}
    assert dropped == {
        ("bad_email",): [{"field": "contact_email", "reason": "invalid_email", "mapping": "Identify to Close"}],
        ("m_91_0",): [{"field": "contact_name", "reason": "wrong_type:contact_name", "mapping": "Identify to Close"}],
    }


def test_upsert_failures_are_dead_lettered_with_event_request_error_and_attempts(sim, tmp_path, monkeypatch):
    config, cf = sim_config(
        sim,
        tmp_path,
        {"mappings": [{"name": "with status", "trigger": 'type = "identify"', "fields": {"lead_status_id": "stat_nope"}}]},
    )
    at = datetime(2026, 11, 1, tzinfo=UTC)
    path = write_jsonl(tmp_path / "events.jsonl", [identify(1, 1, 0, at)])
    dead = run_files(sim, config, str(path), tmp_path, monkeypatch)
    assert dead == 1
    (letter,) = letters_in(tmp_path / "dead")
    assert letter["stage"] == "upsert"
    assert letter["event"]["messageId"] == "m_1_0"
    assert letter["request"]["lead_status_id"] == "stat_nope"
    assert letter["error"]["http_status"] == 400
    assert letter["attempts"] >= 1
    assert sim.api_key not in json.dumps(letter)


def test_replay_resends_dead_letters_once_the_cause_is_fixed(sim, tmp_path, monkeypatch):
    from closecrm.wiring import EngineSpec, KeySource
    from pipeline.replay import replay_file

    config, cf = sim_config(
        sim,
        tmp_path,
        {"mappings": [{"name": "plan", "trigger": 'type = "identify"', "fields": {"lead_custom_fields": {"cf_plan_later": "$.traits.plan"}}}]},
    )
    at = datetime(2026, 11, 1, tzinfo=UTC)
    path = write_jsonl(tmp_path / "events.jsonl", [identify(u, 1, 0, at, plan="pro") for u in range(3)])
    assert run_files(sim, config, str(path), tmp_path, monkeypatch) == 3
    (letters,) = letter_files(tmp_path / "dead")
    assert {letter["stage"] for letter in read_lines(letters)} == {"upsert"}
    assert sim.contacts() == []
    # the fix: the custom field the mapping names now exists
    sim.seed({"custom_fields": {"lead": [{"id": "cf_plan_later", "name": "Plan", "type": "text"}]}})
    spec = EngineSpec(sim.base_url, KeySource(), config.settings_model())
    report = replay_file(config, spec, str(letters), str(tmp_path / "still.jsonl"))
    assert report.failed == 0
    assert report.outcomes["created"] + report.outcomes["updated"] == 3
    assert len(sim.contacts()) == 3
    assert {lead["custom.cf_plan_later"] for lead in sim.leads()} == {"pro"}
