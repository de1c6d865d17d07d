"""The SegmentEvent Avro schema and the fastavro helpers."""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
import pytest

from pipeline.avro_io import (
    event_schema,
    event_to_avro_record,
    read_avro_records,
    record_to_event,
    write_events_avro,
)

REPO = Path(__file__).resolve().parents[2]

EVENTS = [
    {
        "type": "identify",
        "messageId": "m1",
        "userId": "u1",
        "timestamp": "2024-05-01T10:00:00Z",
        "traits": {"email": "a@example.com", "company": {"id": "c1", "name": "Acme"}},
        "context": {"ip": "1.2.3.4"},
        "integrations": {"Close": True},
    },
    {
        "type": "track",
        "messageId": "m2",
        "anonymousId": "anon",
        "event": "Signed Up",
        "properties": {"plan": "pro"},
    },
    {"type": "group", "messageId": "m3", "userId": "u1", "groupId": "c1", "traits": {"name": "Acme"}},
]


def test_packaged_schema_equals_canonical_schema() -> None:
    canonical = json.loads((REPO / "schemas" / "event.avsc").read_text())
    packaged = json.loads((REPO / "pipeline" / "schemas" / "event.avsc").read_text())
    assert packaged == canonical


def test_schema_has_required_type_and_nullable_string_fields() -> None:
    fields = {
        f["name"]: f["type"] for f in json.loads((REPO / "schemas" / "event.avsc").read_text())["fields"]
    }
    assert fields.pop("type") == "string"
    assert set(fields) == {
        "messageId", "userId", "anonymousId", "groupId", "previousId", "event", "name", "timestamp", "receivedAt",
        "traits", "context", "properties", "integrations",
    }  # fmt: skip
    assert all(t == ["null", "string"] for t in fields.values())


def test_events_round_trip_through_an_avro_file(tmp_path: Path) -> None:
    path = tmp_path / "events.avro"
    assert write_events_avro(path, iter(EVENTS)) == len(EVENTS)
    records = list(read_avro_records(path))
    assert isinstance(records[0]["traits"], str)  # objects travel as JSON text
    assert [record_to_event(r) for r in records] == EVENTS


def test_file_is_readable_by_any_avro_reader_with_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "events.avro"
    write_events_avro(path, EVENTS)
    with open(path, "rb") as stream:
        reader = fastavro.reader(stream, reader_schema=event_schema())
        assert [r["messageId"] for r in reader] == ["m1", "m2", "m3"]


def test_non_string_scalars_become_strings_and_unknown_keys_are_dropped() -> None:
    record = event_to_avro_record({"type": "identify", "userId": 42, "sentAt": "x", "traits": {"n": 1}})
    assert record["userId"] == "42"
    assert record["traits"] == '{"n":1}'
    assert "sentAt" not in record


def test_event_without_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="type"):
        event_to_avro_record({"userId": "u1"})


def test_record_with_json_field_that_is_not_json_keeps_the_text_for_the_parser() -> None:
    assert record_to_event({"type": "identify", "traits": "{broken", "userId": None}) == {
        "type": "identify",
        "traits": "{broken",
    }


def test_an_alias_event_keeps_its_previous_id_through_an_avro_file(tmp_path: Path) -> None:
    event = {"type": "alias", "messageId": "m4", "userId": "u1", "previousId": "anon-7"}
    path = tmp_path / "alias.avro"
    write_events_avro(path, [event])
    assert [record_to_event(r) for r in read_avro_records(path)] == [event]
