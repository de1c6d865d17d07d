"""Replay parses a letter's event with the config's pipeline.max_event_bytes, as the run that wrote it did,
and reads a stored request back as strictly as a fresh one is made, with the config's flags."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from closecrm.events.mapping import ALIAS_PRESET, DEFAULT_MAPPING, flags_for_stored, request_from_stored
from closecrm.events.parse import BadEvent
from closecrm.model import Flags
from closecrm.wiring import EngineSpec, KeySource
from pipeline.config import parse_config
from pipeline.replay import replay_file


def _letter_file(tmp_path: Path, padding: int) -> str:
    event = {
        "type": "identify",
        "messageId": "m1",
        "userId": "u1",
        "timestamp": "2026-11-01T00:00:00Z",
        "traits": {"email": "u1@example.com", "note": "x" * padding},
    }
    path = tmp_path / "dead-letters.jsonl"
    path.write_text(json.dumps({"stage": "upsert", "reason": "http_500", "event": event}) + "\n")
    return str(path)


def test_an_event_above_the_configured_limit_fails_replay_as_too_large(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLOSE_API_KEY", "test_key_not_real")
    config = parse_config({"pipeline": {"max_event_bytes": 2048}})
    spec = EngineSpec("http://127.0.0.1:9/api/v1/", KeySource(), config.settings_model(), created_ids=None)
    out = tmp_path / "still.jsonl"
    report = replay_file(config, spec, _letter_file(tmp_path, padding=4000), str(out))
    assert (report.letters, report.requests, report.failed) == (1, 0, 1)
    (letter,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert letter["reason"] == "too_large"


# A stored request (a letter without its events) is read back as strictly as a fresh one is made, and
# sent with the flags of the config given: never the flags it stored.

@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ({"contact_emails": "ten@x.com"}, "wrong_type:contact_emails"),  # a text, not a list
        ({"contact_emails": ["ok@x.com", "not an email"]}, "invalid_email"),
        ({"contact_phones": ["12"]}, "invalid_phone"),
        ({"contact_urls": ["javascript:alert(1)"]}, "invalid_url"),
        ({"contact_user_id": True}, "wrong_type:contact_user_id"),
        ({"contact_custom_fields": {"cf_x": {"nested": 1}}}, "wrong_type:contact_custom_fields"),
        ({"lead_custom_fields": {"plan": "pro"}}, "wrong_type:lead_custom_fields"),  # no cf_ prefix
        ({"alias_previous_id": "u_old"}, "missing_contact_user_id"),
        ({"contact_email": "a@x.com"}, "unknown_field"),
        ({"event_ids": "m1"}, "wrong_type:event_ids"),
        (["not", "an", "object"], "wrong_type:request"),
    ],
)
def test_a_stored_request_that_a_fresh_one_could_not_be_is_refused(stored, reason) -> None:
    with pytest.raises(BadEvent) as refused:
        request_from_stored(stored, Flags())
    assert refused.value.reason == reason


def test_a_stored_request_keeps_its_content_and_takes_the_flags_it_is_given() -> None:
    given = Flags(allow_creating_new_leads=False)
    stored = {
        "contact_user_id": "u1",
        "contact_emails": ["a@x.com", "b@x.com"],
        "contact_custom_fields": {"cf_plan": "pro"},
        "event_ids": ["m1"],
        "flags": {"allow_merging": True, "allow_everything": True},  # never read
    }
    request = request_from_stored(stored, given)
    assert request.contact_emails == ("a@x.com", "b@x.com") and request.contact_custom_fields == {"cf_plan": "pro"}
    assert request.event_ids == ("m1",) and request.flags == given


def test_the_flags_of_a_stored_request_come_from_the_mappings_it_names_else_what_every_mapping_allows() -> None:
    merging = replace(ALIAS_PRESET, flags=Flags(allow_merging=True))
    no_new_leads = replace(DEFAULT_MAPPING, flags=Flags(allow_creating_new_leads=False))
    specs = (no_new_leads, merging)
    assert flags_for_stored([ALIAS_PRESET.name], specs) == Flags(allow_merging=True)
    strictest = Flags(allow_creating_new_leads=False, allow_merging=False)
    assert flags_for_stored(["A mapping since removed"], specs) == strictest
    assert flags_for_stored([], specs) == strictest
    assert flags_for_stored([ALIAS_PRESET.name, "A mapping since removed"], specs) == strictest
    assert flags_for_stored([], ()) == Flags()  # no mapping: the defaults, which never merge
