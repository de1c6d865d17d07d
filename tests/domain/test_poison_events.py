"""Poison events: bad input becomes a `BadEvent` with a reason (or is tolerated), never an exception
that escapes the domain functions and aborts the job."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closecrm.events.collapse import collapse, merge
from closecrm.events.mapping import (
    DEFAULT_MAPPING,
    compile_mapping,
    map_event,
    request_dropping_bad_values,
    request_from_values,
)
from closecrm.events.normalize import email_key, is_valid_email, phone_key, to_e164, url_key
from closecrm.events.parse import MAX_DEPTH, BadEvent, format_timestamp, parse_event
from closecrm.model import DeadLetter, DroppedField, UpsertRequest
from transforms.deadletter import dead_letter_json, raw_for_letter

SURROGATE_VALUE = b'{"type":"identify","userId":"u1","traits":{"name":"\\ud800"}}'


def reason(raw: object, **kwargs: object) -> str:
    with pytest.raises(BadEvent) as caught:
        parse_event(raw, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def writable(letter_event: object) -> str:
    """What a later stage does with a dead letter: JSON line, UTF-8 bytes, and a pickle on the way."""
    line = dead_letter_json(DeadLetter(stage="parse", reason="x", event=letter_event))
    line.encode("utf-8")
    json.dumps(letter_event, ensure_ascii=False).encode("utf-8")  # no lone surrogate left in it
    pickle.dumps(letter_event)
    json.loads(line)
    return line


# ---------------------------------------------------------------------------- lone surrogates


def test_a_lone_surrogate_in_a_value_is_invalid_unicode_with_its_path() -> None:
    assert reason(SURROGATE_VALUE) == "invalid_unicode:traits.name"
    assert reason(SURROGATE_VALUE.decode()) == "invalid_unicode:traits.name"


def test_a_lone_surrogate_in_a_key_is_invalid_unicode_and_the_reason_is_writable() -> None:
    raw = b'{"type":"identify","userId":"u1","traits":{"a\\udc80b":"x"}}'
    got = reason(raw)
    assert got.startswith("invalid_unicode:traits.a")
    got.encode("utf-8")  # the path names the key without the surrogate itself


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"identify","userId":"u1","traits":{"name":"\ud800"}}',  # a real surrogate in str input
        {"type": "identify", "userId": "u1", "traits": {"name": "\udfff"}},  # a row (Avro/Parquet)
        {"type": "identify", "userId": "u1", "traits": json.dumps({"name": "\ud800"})},  # JSON-string object
        b'{"type":"identify","userId":"u1","properties":{"tags":["ok","\\udbff"]}}',
        b'{"type":"identify","userId":"\\ud800"}',
        b'{"type":"track","event":"\\ud800","userId":"u1"}',
    ],
)
def test_lone_surrogates_anywhere_are_invalid_unicode(raw: object) -> None:
    assert reason(raw).startswith("invalid_unicode:")


def test_a_surrogate_pair_is_a_valid_character() -> None:
    parsed = parse_event(b'{"type":"identify","userId":"u1","traits":{"name":"\\ud83d\\ude00"}}')
    assert parsed.raw["traits"]["name"] == "\U0001f600"


@pytest.mark.parametrize(
    "raw",
    [
        SURROGATE_VALUE,
        SURROGATE_VALUE.decode(),
        '{"name":"\ud800"}',
        {"traits": {"\ud800": "\udfff"}},
        ["\ud800"],
    ],
)
def test_a_dead_letter_of_a_surrogate_event_can_be_written(raw: object) -> None:
    writable(raw_for_letter(raw))


def test_request_values_with_a_lone_surrogate_are_invalid_unicode() -> None:
    # not a value to drop: text that is not text fails the event, strict or not
    for normalise in (request_from_values, request_dropping_bad_values):
        with pytest.raises(BadEvent) as caught:
            normalise({"contact_name": "a\ud800"})
        assert caught.value.reason == "invalid_unicode:contact_name"
        with pytest.raises(BadEvent) as caught:
            normalise({"lead_custom_fields": {"cf_x": ["\ud800"]}})
        assert caught.value.reason.startswith("invalid_unicode:lead_custom_fields")


# ---------------------------------------------------------------------------- deep nesting


def nested(depth: int) -> str:
    """An event whose deepest container is at ``depth`` (the event object itself is level 1)."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)
    return '{"type":"identify","userId":"u1","traits":{"x":' + inner + "}}"


def test_nesting_up_to_the_limit_is_accepted_and_one_more_is_too_deep() -> None:
    parsed = parse_event(nested(MAX_DEPTH))
    pickle.dumps(parsed)
    assert reason(nested(MAX_DEPTH + 1)) == "too_deep"


@pytest.mark.parametrize("depth", [500, 1_000, 5_000, 100_000])
def test_deep_json_text_is_too_deep(depth: int) -> None:
    assert reason(nested(depth).encode(), max_bytes=10**6) == "too_deep"


def test_deep_json_inside_a_json_string_object_is_too_deep() -> None:
    deep = json.dumps(
        {"type": "identify", "userId": "u1", "traits": '{"x":' + "[" * 50_000 + "]" * 50_000 + "}"}
    )
    assert reason(deep, max_bytes=10**6) == "too_deep"
    # Levels inside the decoded string count from where the object sits in the event.
    within_limit_as_text = '{"x":' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"
    assert reason({"type": "identify", "userId": "u1", "traits": within_limit_as_text}) == "too_deep"


def test_a_deep_row_is_too_deep_and_its_dead_letter_is_bounded() -> None:
    value: object = "bottom"
    for _ in range(5_000):
        value = {"k": value}
    row = {"type": "identify", "userId": "u1", "traits": value}
    assert reason(row) == "too_deep"
    line = writable(raw_for_letter(row))
    assert len(line) < 64 * 1024


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"type": "identify", "userId": "u1", "traits": {"name": "[" * 500 + "{" * 500}})
    assert parse_event(text).raw["traits"]["name"].startswith("[[[")


# ---------------------------------------------------------------------------- URLs


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_url_email_and_phone_keys_are_total_on_any_text(text: str) -> None:
    url_key(text)
    email_key(text)
    phone_key(text)
    is_valid_email(text)
    to_e164(text)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:abc/",
        "http://[::1",
        "http://[/",
        "http://example.com:99999/",
        "http://:80",
        "::::",
    ],
)
def test_url_key_does_not_raise_on_malformed_urls(url: str) -> None:
    assert isinstance(url_key(url), str)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:abc/",
        "http://example.com:99999/",
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox",
        "ftp://example.com/file",
        "mailto:a@example.com",
        "http://",
        "https:///path",
        "http://exa\x00mple.com/",
        "http://example.com/a\nb",
        "http://example.com/\x7f",
        "http://exa mple.com/",
        "http://[::1",
        "http://user:secret@example.com/",
        "//",
        "http://.../",
    ],
)
def test_an_implausible_contact_url_is_invalid_url(url: str) -> None:
    # strict (snapshot rows): the row is refused
    with pytest.raises(BadEvent) as caught:
        request_from_values({"contact_url": url})
    assert (caught.value.reason, caught.value.detail) == ("invalid_url", "contact_url")
    # events: the URL is left out and recorded, the rest goes on
    request = request_dropping_bad_values({"contact_url": url, "contact_user_id": "u1"}, mapping="m")
    assert request.contact_urls == () and request.contact_user_id == "u1"
    assert request.dropped == (DroppedField("contact_url", "invalid_url", "m"),)


@pytest.mark.parametrize(
    "url",
    [
        "acme.com",
        "acme.com/ann",
        "www.acme.com/",
        "https://www.acme.com/",
        "http://www.ACME.com/",
        "HTTPS://acme.com/a?b=c#d",
        "example.com:8080/path",
        "http://example.com:8080",
        "http://[::1]:80/x",
        "http://127.0.0.1/",
        "https://bücher.de/",
        "localhost:3000",
    ],
)
def test_a_plausible_contact_url_is_kept_as_given(url: str) -> None:
    assert request_from_values({"contact_url": url}).contact_urls == (url,)
    kept = request_dropping_bad_values({"contact_url": url})
    assert kept.contact_urls == (url,) and kept.dropped == ()


def test_a_bad_website_trait_is_left_out_and_recorded_and_the_event_is_mapped() -> None:
    event = parse_event(
        {
            "type": "identify",
            "userId": "u1",
            "traits": {"website": "http://example.com:abc/", "email": "ann@acme.com", "phone": "+14155552671"},
        }
    )
    (request,) = map_event(event, [compile_mapping(DEFAULT_MAPPING)])
    assert request.contact_urls == ()
    assert (request.contact_emails, request.contact_phones) == (("ann@acme.com",), ("+14155552671",))
    assert request.dropped == (DroppedField("contact_url", "invalid_url", DEFAULT_MAPPING.name),)


# ---------------------------------------------------------------------------- collapse never raises


def req(i: int, **fields: object) -> UpsertRequest:
    return UpsertRequest(contact_user_id="u1", event_ids=(f"e{i}",), **fields)  # type: ignore[arg-type]


def test_collapse_merges_a_second_event_with_a_bad_url_without_raising() -> None:
    out = collapse(
        [
            req(1, contact_urls=("https://acme.com/",), timestamp="2026-01-01T00:00:00.000000Z"),
            req(2, contact_urls=("javascript:alert(1)",), timestamp="2026-01-01T00:00:01.000000Z"),
            req(3, contact_urls=("http://example.com:abc/",), timestamp="2026-01-01T00:00:02.000000Z"),
        ]
    )
    assert [r.event_ids for r in out] == [("e1", "e2", "e3")]


@pytest.mark.parametrize(
    "odd",
    [
        {"contact_emails": (None,)},
        {"contact_emails": (7,)},
        {"contact_phones": (123, None)},
        {"contact_urls": (b"bytes", None)},
        {"lead_custom_fields": None},
        {"contact_custom_fields": ["not", "a", "dict"]},
        {"timestamp": 12345},
        {"timestamp": "not a time"},
        {"timestamp": "0000-00-00"},
        {"event_ids": None},
    ],
)
def test_collapse_and_merge_never_raise_on_odd_values(odd: dict) -> None:
    good = req(1, contact_emails=("a@x.com",), timestamp="2026-01-01T00:00:00.000000Z")
    bad = UpsertRequest(
        **{"contact_user_id": "u1", "contact_emails": ("a@x.com",), "event_ids": ("e2",), **odd}
    )
    for pair in ([good, bad], [bad, good], [bad, bad]):
        out = collapse(pair)
        assert 1 <= len(out) <= 2
        ids = [i for r in out for i in (r.event_ids or ())]
        assert set(ids) <= {"e1", "e2"}


@pytest.mark.parametrize(
    "odd",
    [
        {"contact_emails": (None, 7)},
        {"contact_phones": (123, None, "not a phone")},
        {"contact_urls": (b"bytes", None, "javascript:alert(1)", "http://example.com:abc/", "http://[::1")},
        {"timestamp": 12345},
    ],
)
def test_merge_never_raises_on_odd_values_inside_a_request(odd: dict) -> None:
    good = req(1, contact_emails=("a@x.com",), contact_urls=("acme.com",), timestamp="2026-01-01T00:00:00Z")
    bad = UpsertRequest(**{"contact_user_id": "u1", "event_ids": ("e2",), **odd})
    assert merge(good, bad).event_ids == ("e1", "e2")
    assert merge(bad, good).event_ids == ("e2", "e1")


# ---------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("given_ts", "expected"),
    [
        ("0999-01-01T00:00:00Z", "0999-01-01T00:00:00.000000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
        ("2026-01-01T05:00:00+05:00", "2026-01-01T00:00:00.000000Z"),
        ("2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00.500000Z"),
        ("2026-01-01T00:00:00.25Z", "2026-01-01T00:00:00.250000Z"),
        (-62135596800, "0001-01-01T00:00:00.000000Z"),
    ],
)
def test_timestamps_are_normalised_to_one_fixed_width_utc_form(given_ts: object, expected: str) -> None:
    parsed = parse_event({"type": "identify", "userId": "u1", "timestamp": given_ts})
    assert parsed.timestamp == expected


@pytest.mark.parametrize(
    "bad",
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:00:00-05:00",  # after year 9999 in UTC
        "-0001-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "2026-13-01T00:00:00Z",
        -(10**20),
        10**30,
    ],
)
def test_timestamps_outside_the_representable_range_are_invalid(bad: object) -> None:
    assert reason({"type": "identify", "userId": "u1", "timestamp": bad}) == "invalid_timestamp"


def test_format_timestamp_pads_the_year() -> None:
    from datetime import UTC, datetime

    assert format_timestamp(datetime(999, 1, 1, tzinfo=UTC)) == "0999-01-01T00:00:00.000000Z"
    assert format_timestamp(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000000Z"


def event_request(ts: str, title: str, n: int) -> UpsertRequest:
    event = parse_event(
        {
            "type": "identify",
            "userId": "u1",
            "messageId": f"m{n}",
            "timestamp": ts,
            "traits": {"title": title},
        }
    )
    (request,) = map_event(event, [compile_mapping(DEFAULT_MAPPING)])
    return request


def test_the_later_instant_wins_even_against_a_year_999_event() -> None:
    new = event_request("2026-01-01T00:00:00Z", "new", 1)
    old = event_request("0999-01-01T00:00:00Z", "old", 2)
    for order in ([new, old], [old, new]):
        (out,) = collapse(order)
        assert out.contact_title == "new"
        assert out.event_ids == ("m2", "m1")


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ("2026-01-01T00:00:00.25Z", "2026-01-01T00:00:00.5Z"),
        ("2026-01-01T01:00:00+05:00", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00Z", "2026-01-01T01:00:00+00:30"),
        ("999-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
    ],
)
def test_collapse_orders_requests_by_instant_not_by_text(earlier: str, later: str) -> None:
    first = req(1, contact_title="earlier", timestamp=earlier)
    second = req(2, contact_title="later", timestamp=later)
    for order in ([first, second], [second, first]):
        (out,) = collapse(order)
        assert out.contact_title == "later"
