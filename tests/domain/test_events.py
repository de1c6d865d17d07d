"""closecrm.events.parse: every rejected input names its reason; accepted ones are normalised."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closecrm.events import parse
from closecrm.events.parse import MISSING, BadEvent, Event, opted_out, parse_event, resolve_path
from closecrm.model import Origin, Received

BASE = {"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": "2024-05-01T10:00:00Z"}


def event(**changes: object) -> dict:
    out = {**BASE, **changes}
    return {k: v for k, v in out.items() if v is not ...}


def reason(raw: object, **kwargs: object) -> str:
    with pytest.raises(BadEvent) as caught:
        parse_event(raw, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "unparseable_json"),
        ("", "unparseable_json"),
        (b"\xff\xfe{}", "unparseable_json"),
        ('{"type": "identify", "userId": NaN}', "unparseable_json"),
        ("[1, 2]", "not_an_object"),
        ('"identify"', "not_an_object"),
        (42, "not_an_object"),
        (event(type=...), "missing_type"),
        (event(type=""), "missing_type"),
        (event(type=7), "wrong_type:type"),
        (event(type="purchase"), "unknown_type"),
        (event(userId=...), "missing_id"),
        (event(userId="", anonymousId=None), "missing_id"),
        (event(userId={"id": 1}), "wrong_type:userId"),
        (event(anonymousId=True), "wrong_type:anonymousId"),
        (event(traits=["a"]), "wrong_type:traits"),
        (event(traits="not json"), "wrong_type:traits"),
        (event(traits="[1]"), "wrong_type:traits"),
        (event(context=5), "wrong_type:context"),
        (event(context={"traits": "x"}), "wrong_type:context.traits"),
        (event(properties=[1]), "wrong_type:properties"),
        (event(integrations="nope"), "wrong_type:integrations"),
        (event(type="group"), "missing_group_id"),
        (event(type="track"), "missing_event"),
        (event(type="track", event=["x"]), "wrong_type:event"),
        (event(timestamp="yesterday"), "invalid_timestamp"),
        (event(messageId=12), "wrong_type:messageId"),
        (event(traits={"x": float("inf")}), "wrong_type:traits"),
        (event(traits={"x": object()}), "wrong_type:traits"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(raw: object, expected: str) -> None:
    assert reason(raw) == expected


def test_too_large_is_rejected_before_and_after_decoding() -> None:
    big = {**BASE, "traits": {"blob": "x" * 2000}}
    assert reason(json.dumps(big).encode(), max_bytes=1024) == "too_large"
    assert reason(json.dumps(big), max_bytes=1024) == "too_large"
    assert reason(big, max_bytes=1024) == "too_large"
    assert parse_event(big, max_bytes=4096).user_id == "u1"


def test_bad_event_carries_a_reason_and_a_readable_message() -> None:
    with pytest.raises(BadEvent) as caught:
        parse_event(event(type="purchase"))
    assert caught.value.reason == "unknown_type"
    assert "purchase" in str(caught.value)


def test_valid_identify_fills_every_field() -> None:
    parsed = parse_event(json.dumps(event(anonymousId="a1", traits={"email": "x@y.com"})))
    assert isinstance(parsed, Event)
    assert (parsed.type, parsed.message_id, parsed.user_id, parsed.anonymous_id) == (
        "identify",
        "m1",
        "u1",
        "a1",
    )
    assert parsed.timestamp == "2024-05-01T10:00:00.000000Z"
    assert parsed.raw["traits"] == {"email": "x@y.com"}
    assert parsed.person_key == "u1"


def test_person_key_of_an_anonymous_event_is_prefixed() -> None:
    assert parse_event(event(userId=..., anonymousId="a9")).person_key == "anon:a9"


def test_type_is_case_insensitive_and_normalised_in_raw() -> None:
    parsed = parse_event(event(type="Identify"))
    assert parsed.type == "identify" and parsed.raw["type"] == "identify"


def test_numeric_ids_become_strings() -> None:
    parsed = parse_event(event(userId=123, type="group", groupId=45.0))
    assert parsed.user_id == "123" and parsed.group_id == "45"


def test_avro_style_row_with_json_string_objects_is_decoded() -> None:
    row = {
        "type": "track",
        "event": "User Created",
        "userId": "u1",
        "anonymousId": None,
        "messageId": "m2",
        "timestamp": datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
        "traits": None,
        "context": json.dumps({"traits": {"plan": "pro"}}),
        "properties": '{"total": 10.5}',
        "integrations": "",
    }
    parsed = parse_event(row)
    assert parsed.raw["context"] == {"traits": {"plan": "pro"}}
    assert parsed.raw["properties"] == {"total": 10.5}
    assert parsed.raw["integrations"] == {}
    assert "traits" not in parsed.raw and "anonymousId" not in parsed.raw
    assert parsed.timestamp == "2024-05-01T10:00:00.000000Z"


def test_row_values_that_are_not_json_become_json() -> None:
    parsed = parse_event(event(properties={"price": Decimal("3"), "ratio": Decimal("0.5"), "tags": ("a",)}))
    assert parsed.raw["properties"] == {"price": 3, "ratio": 0.5, "tags": ["a"]}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"timestamp": "2024-05-01T12:00:00+02:00"}, "2024-05-01T10:00:00.000000Z"),
        ({"timestamp": "2024-05-01T10:00:00"}, "2024-05-01T10:00:00.000000Z"),
        ({"timestamp": 1714557600}, "2024-05-01T10:00:00.000000Z"),
        ({"timestamp": 1714557600123}, "2024-05-01T10:00:00.123000Z"),
        (
            {"timestamp": ..., "receivedAt": "2024-05-02T00:00:00Z", "sentAt": "2024-05-03T00:00:00Z"},
            "2024-05-02T00:00:00.000000Z",
        ),
        ({"timestamp": ..., "sentAt": "2024-05-03T00:00:00Z"}, "2024-05-03T00:00:00.000000Z"),
        ({"timestamp": ..., "originalTimestamp": "2024-05-04T00:00:00Z"}, "2024-05-04T00:00:00.000000Z"),
    ],
)
def test_timestamp_precedence_and_normalisation(fields: dict, expected: str) -> None:
    assert parse_event(event(**fields)).timestamp == expected


def test_missing_timestamp_defaults_to_parse_time() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_event(event(timestamp=...), now=now).timestamp == "2030-01-01T00:00:00.000000Z"


def test_missing_message_id_is_deterministic_and_ignores_parse_time() -> None:
    raw = event(messageId=..., timestamp=...)
    first = parse_event(raw, now=datetime(2030, 1, 1, tzinfo=UTC))
    again = parse_event(json.dumps(raw), now=datetime(2031, 1, 1, tzinfo=UTC))
    other = parse_event(event(messageId=..., timestamp=..., userId="u2"))
    assert first.message_id.startswith("gen-")
    assert first.message_id == again.message_id != other.message_id


def test_parsing_the_normalised_raw_again_gives_the_same_event() -> None:
    parsed = parse_event(event(messageId=..., timestamp=..., type="IDENTIFY", traits='{"a": 1}'))
    assert parse_event(parsed.raw) == parsed


@pytest.mark.parametrize(
    ("integrations", "out"),
    [
        (..., False),
        ({}, False),
        ({"Close": False}, True),
        ({"Close": True}, False),
        ({"All": False}, True),
        ({"All": False, "Close": True}, False),
        ({"All": False, "Close": {"some": "option"}}, False),
        ({"All": True, "Close": False}, True),
        ({"All": True}, False),
        ({"Salesforce": False}, False),
    ],
)
def test_integrations_opt_out(integrations: object, out: bool) -> None:
    assert opted_out(parse_event(event(integrations=integrations))) is out


def test_traits_paths_fall_back_to_context_traits_except_on_group_calls() -> None:
    track = parse_event(event(type="track", event="X", context={"traits": {"email": "c@x.com"}}))
    assert resolve_path(track.raw, ("traits", "email")) == "c@x.com"
    group = parse_event(event(type="group", groupId="g", context={"traits": {"name": "Person"}}))
    assert resolve_path(group.raw, ("traits", "name")) is MISSING
    identify = parse_event(event(traits={"email": "t@x.com"}, context={"traits": {"email": "c@x.com"}}))
    assert resolve_path(identify.raw, ("traits", "email")) == "t@x.com"


def test_numeric_path_parts_index_lists() -> None:
    parsed = parse_event(event(properties={"items": [{"sku": "a"}, {"sku": "b"}]}))
    assert resolve_path(parsed.raw, ("properties", "items", "1", "sku")) == "b"


def test_a_text_with_a_byte_order_mark_is_refused_as_json_loads_refuses_it() -> None:
    text = json.dumps(BASE)
    with pytest.raises(BadEvent) as caught:
        parse_event("\ufeff" + text)
    assert caught.value.reason == "unparseable_json"
    assert "BOM" in (caught.value.detail or "")
    assert parse_event(b"\xef\xbb\xbf" + text.encode()) == parse_event(text)  # bytes: utf-8-sig


def test_an_event_and_what_it_was_read_as_pickle_to_equals() -> None:
    origin = Origin("kafka", "events", 41, 3)
    parsed = parse_event(json.dumps(BASE).encode(), origin=origin)
    clone = pickle.loads(pickle.dumps(parsed, protocol=pickle.HIGHEST_PROTOCOL))
    assert (clone, clone.origin, clone.received) == (parsed, origin, parsed.received)
    received = Received({"nested": [1, 2]}, Origin("line", "/in/a.jsonl", 7))
    assert pickle.loads(pickle.dumps(received)) == received


@settings(max_examples=500, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)))
def test_a_timestamp_in_the_jobs_own_form_reads_as_the_full_parse_reads_it(moment: datetime) -> None:
    """Text already in `format_timestamp`'s form skips the parse and the re-format: same event time,
    same moment, same timezone object."""
    text = moment.isoformat(timespec="microseconds") + "Z"
    assert parse_event({"type": "identify", "userId": "u", "timestamp": text}).timestamp == text
    full = parse._parse_time(text).astimezone(UTC)
    assert parse._canonical_moment(text) == full and parse._canonical_moment(text).tzinfo is full.tzinfo
    assert parse.instant(text) == full and parse.instant(text).tzinfo is full.tzinfo


@pytest.mark.parametrize(
    "text",
    [
        "2026-13-01T00:00:00.000000Z",
        "2026-02-30T00:00:00.000000Z",
        "2026-01-01T24:00:00.000000Z",
        "2026-01-01T00:00:60.000000Z",
        "\u0662\u0660\u0662\u0666-01-01T00:00:00.000000Z",  # digits fromisoformat also reads
    ],
)
def test_text_of_that_form_that_is_no_real_time_is_refused_as_before(text: str) -> None:
    assert parse._canonical_moment(text) is None
    with pytest.raises(BadEvent, match="invalid_timestamp"):
        parse_event({"type": "identify", "userId": "u", "timestamp": text})
