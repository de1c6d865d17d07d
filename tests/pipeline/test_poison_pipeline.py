"""Poison events through the transforms and the whole job: each becomes one dead letter with a reason,
good events still flow, and every event read is accounted for exactly once."""

from __future__ import annotations

import json
import pickle
import threading
from collections import Counter
from itertools import zip_longest
from typing import Any

import pytest
from apache_beam.pvalue import TaggedOutput

from closecrm.events.mapping import DEFAULT_MAPPING
from closecrm.events.parse import parse_event
from closecrm.model import DeadLetter, DroppedField, Origin, Received, UpsertRequest
from pipeline.sources import SourceOptions
from tests.pipeline.helpers import FakeState, read_lines, sim_config, write_jsonl
from tests.reliability.rel_helpers import applied_ids, dead_letters, identify, run_job
from transforms import collapse as collapse_transforms
from transforms import mapping as mapping_transforms
from transforms import metrics as m
from transforms import parse as parse_transforms
from transforms.collapse import Pending, _CollapseFn, _Explode, _SuppressIdentical, collapse_persons
from transforms.deadletter import DEAD, dead_letter_json
from transforms.ledger import DEAD as LEDGER_DEAD
from transforms.ledger import LEDGER
from transforms.mapping import _Map
from transforms.parse import _Parse, raw_id

SURROGATE_LINE = (
    r'{"type":"identify","userId":"u_s","messageId":"poison_surrogate","traits":{"name":"\ud800"}}'
)


def deep_line(depth: int, mid: str) -> str:
    nest = "[" * depth + "]" * depth
    return '{"type":"identify","userId":"u_d","messageId":"' + mid + '","traits":{"x":' + nest + "}}"


def outputs(items: Any) -> tuple[list[Any], list[DeadLetter], list[tuple[str, str]]]:
    main: list[Any] = []
    dead: list[DeadLetter] = []
    ledger: list[tuple[str, str]] = []
    for item in items or ():
        if isinstance(item, TaggedOutput):
            (dead if item.tag == DEAD else ledger if item.tag == LEDGER else main).append(item.value)
        else:
            main.append(item)
    return main, dead, ledger


def parse_one(raw: Any) -> tuple[list[Any], list[DeadLetter], list[tuple[str, str]]]:
    fn = _Parse(64 * 1024)
    fn.setup()
    fn.start_bundle()
    return outputs(fn.process(raw))


def written(letter: DeadLetter) -> dict:
    """What WriteDeadLetters does with a letter, after a trip through a pickle (Beam's coders)."""
    line = dead_letter_json(pickle.loads(pickle.dumps(letter)))
    line.encode("utf-8")
    return json.loads(line)


# ---------------------------------------------------------------------------- ParseEvents


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (SURROGATE_LINE.encode(), "invalid_unicode:traits.name"),
        (SURROGATE_LINE, "invalid_unicode:traits.name"),
        (deep_line(1_000, "deep").encode(), "too_deep"),
        ('{"type":"identify","userId":"u1","timestamp":"0001-01-01T00:00:00+01:00"}', "invalid_timestamp"),
    ],
)
def test_parse_dead_letters_a_poison_event_with_its_reason_and_one_dead_ledger_entry(
    raw: Any, expected: str
) -> None:
    main, dead, ledger = parse_one(raw)
    assert main == []
    assert [letter.reason for letter in dead] == [expected]
    assert [status for _, status in ledger] == [LEDGER_DEAD]
    written(dead[0])


def test_a_too_deep_row_is_dead_lettered_and_its_letter_is_writable() -> None:
    value: Any = 1
    for _ in range(5_000):
        value = [value]
    row = {"type": "identify", "userId": "u1", "traits": {"x": value}}
    raw_id(row)
    main, dead, ledger = parse_one(row)
    assert [letter.reason for letter in dead] == ["too_deep"]
    assert len(ledger) == 1
    written(dead[0])


def test_an_unexpected_error_in_parsing_becomes_an_internal_error_dead_letter(monkeypatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret=abc123 must not leak")

    monkeypatch.setattr(parse_transforms, "parse_event", explode)
    main, dead, ledger = parse_one(b'{"type":"identify","userId":"u1"}')
    assert main == []
    assert [(letter.stage, letter.reason) for letter in dead] == [("parse", "internal_error:RuntimeError")]
    assert "abc123" not in json.dumps(written(dead[0]))
    assert [status for _, status in ledger] == [LEDGER_DEAD]


def test_identical_bad_lines_are_each_accounted_for() -> None:
    ledger_keys = [parse_one(b"{not json")[2][0][0] for _ in range(2)]
    assert len(set(ledger_keys)) == 2


# ---------------------------------------------------------------------------- MapToUpserts


def map_one(event: Any) -> tuple[list[Any], list[DeadLetter], list[tuple[str, str]]]:
    fn = _Map([DEFAULT_MAPPING])
    fn.setup()
    return outputs(fn.process(event))


def test_map_leaves_out_a_bad_website_records_it_and_passes_the_event_on() -> None:
    event = parse_event(
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "m1",
            "traits": {"website": "javascript:alert(1)", "email": "u1@example.com"},
        }
    )
    main, dead, ledger = map_one(event)
    assert dead == [] and ledger == []
    ((person, (request, _)),) = main
    assert person == "user:u1"
    assert request.contact_urls == () and request.contact_emails == ("u1@example.com",)
    assert request.dropped == (DroppedField("contact_url", "invalid_url", DEFAULT_MAPPING.name),)


def test_map_dead_letters_a_bad_company_id_with_the_event_as_received_and_where_it_was_read() -> None:
    line = b'{"type":"identify","userId":"u1","traits":{"company":{"id":{"not":"an id"}}}}'
    (event,) = parse_one(Received(line, Origin("line", "/in/events.jsonl", 7)))[0]
    assert "timestamp" in event.raw and "messageId" in event.raw  # filled in by the parser
    main, dead, ledger = map_one(event)
    assert main == []
    (letter,) = dead
    assert (letter.stage, letter.reason) == ("map", "wrong_type:lead_company_id")
    assert letter.event == {"type": "identify", "userId": "u1", "traits": {"company": {"id": {"not": "an id"}}}}
    assert letter.source == {"file": "/in/events.jsonl", "line": 7}
    assert letter.event_ids == (event.message_id,) and ledger == [(event.message_id, LEDGER_DEAD)]
    written(letter)


def test_a_parse_letter_is_named_by_the_messageid_it_can_read_and_says_where_it_was_read() -> None:
    line = b'{"type":"warp","userId":"u1","messageId":"msg-42"}'
    main, dead, ledger = parse_one(Received(line, Origin("line", "/in/events.jsonl", 3)))
    assert main == []
    (letter,) = dead
    assert (letter.reason, letter.event_ids) == ("unknown_type", ("msg-42",))
    assert letter.source == {"file": "/in/events.jsonl", "line": 3}
    ((key, status),) = ledger
    assert status == LEDGER_DEAD and key.startswith("raw:")  # one entry of its own per read
    # no readable messageId: named by a hash of the input
    for raw in (b"{not json", b'{"type":"warp","messageId":7}', b'{"type":"warp","messageId":"\\ud800"}'):
        (letter,) = parse_one(raw)[1]
        assert letter.event_ids[0].startswith("raw:") and letter.source is None


def test_an_unexpected_error_in_mapping_becomes_an_internal_error_dead_letter(monkeypatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(mapping_transforms, "map_event", explode)
    event = parse_event({"type": "identify", "userId": "u1", "messageId": "m1"})
    main, dead, ledger = map_one(event)
    assert main == []
    assert [(letter.stage, letter.reason) for letter in dead] == [("map", "internal_error:KeyError")]
    assert ledger == [("m1", LEDGER_DEAD)]
    written(dead[0])


def test_a_person_key_failure_yields_no_request_before_the_dead_letter(monkeypatch) -> None:
    calls = {"n": 0}

    def second_fails(event: Any, request: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("boom")
        return "user:u1"

    monkeypatch.setattr(mapping_transforms, "person_key", second_fails)
    fn = _Map([DEFAULT_MAPPING, DEFAULT_MAPPING])
    fn.setup()
    main, dead, ledger = outputs(
        fn.process(parse_event({"type": "identify", "userId": "u1", "messageId": "m1"}))
    )
    assert main == [] and len(dead) == 1 and ledger == [("m1", LEDGER_DEAD)]


# ---------------------------------------------------------------------------- CollapsePerPerson


def odd_requests() -> list[tuple[UpsertRequest, dict]]:
    return [
        (
            UpsertRequest(
                contact_user_id="u1",
                contact_urls=("acme.com",),
                event_ids=("e1",),
                timestamp="2026-01-01T00:00:00Z",
            ),
            {"messageId": "e1"},
        ),
        (
            UpsertRequest(
                contact_user_id="u1",
                contact_urls=("javascript:alert(1)",),
                event_ids=("e2",),
                timestamp="999-01-01",
            ),
            {"messageId": "e2"},
        ),
        (
            UpsertRequest(
                contact_user_id="u1", contact_emails=(None,), event_ids=None, lead_custom_fields=None
            ),  # type: ignore[arg-type]
            {"messageId": "e3"},
        ),
    ]


def carried_ids(collapsed: list[tuple[UpsertRequest, Any]]) -> list[str]:
    return sorted(e["messageId"] for _, events in collapsed for e in events)


def test_collapse_keeps_every_request_of_a_person_with_odd_values() -> None:
    collapsed = _CollapseFn().extract_output(odd_requests())
    assert carried_ids(collapsed) == ["e1", "e2", "e3"]
    ((person, from_shard),) = collapse_persons([("user:u1", (r, e)) for r, e in odd_requests()])
    assert person == "user:u1" and carried_ids(from_shard) == ["e1", "e2", "e3"]
    pendings = list(_Explode(packed=True).process((person, from_shard)))
    assert len(pendings) == len(from_shard)


def test_an_unexpected_collapse_failure_sends_the_requests_uncollapsed(monkeypatch) -> None:
    def explode(requests: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(collapse_transforms, "collapse", explode)
    collapsed = _CollapseFn().extract_output(odd_requests())
    assert [r for r, _ in collapsed] == [r for r, _ in odd_requests()]
    assert carried_ids(collapsed) == ["e1", "e2", "e3"]


def test_suppress_identical_lets_through_a_request_it_cannot_digest() -> None:
    undigestible = UpsertRequest(contact_user_id="u1", lead_custom_fields={"cf_x": threading.Lock()})
    gate = _SuppressIdentical(60.0)
    state = FakeState()
    for _ in range(2):
        main, _, _ = outputs(gate._gate(("user:u1", Pending("user:u1", undigestible)), state))
        assert [p.request for p in main] == [undigestible]


# ---------------------------------------------------------------------------- the whole job


@pytest.mark.integration
def test_poison_events_among_good_ones_are_each_dead_lettered_and_every_event_is_accounted(
    sim, tmp_path, monkeypatch
) -> None:
    config, cf = sim_config(sim, tmp_path)
    good = [identify(u, 0, 0) for u in range(5)]
    later_title = identify(2, 0, 1, title="CTO")  # u_2's newest event
    year_999 = {**identify(2, 0, 2, title="Intern"), "timestamp": "0999-01-01T00:00:00Z"}
    first_of_u9 = identify(9, 0, 0, website="https://acme.example.com/")
    poison: dict[str, tuple[str, str]] = {  # line -> (stage, reason)
        SURROGATE_LINE: ("parse", "invalid_unicode:traits.name"),
        r'{"type":"identify","userId":"u_k","messageId":"poison_key","traits":{"a\udc80":"x"}}': (
            "parse",
            "invalid_unicode:traits.a\\udc80",
        ),
        r'{"type":"identify","userId":"u_m","messageId":"\ud800"}': ("parse", "invalid_unicode:messageId"),
        deep_line(600, "poison_deep_600"): ("parse", "too_deep"),
        deep_line(1_000, "poison_deep_1000"): ("parse", "too_deep"),
        json.dumps(
            {"type": "identify", "userId": "u_c", "messageId": "poison_company", "traits": {"company": {"id": [1]}}}
        ): ("map", "wrong_type:lead_company_id"),
        json.dumps(
            {**identify(7, 0, 0), "messageId": "poison_ts", "timestamp": "0001-01-01T00:00:00+01:00"}
        ): ("parse", "invalid_timestamp"),
    }
    garbage = ["{not json", "{not json"]  # identical lines: two reads, two dead letters
    # bad optional values: left out and recorded, the rest of each event applied
    bad_urls = [
        {**identify(8, 0, 0, website="http://example.com:abc/"), "messageId": "poison_port"},
        identify(9, 0, 1, website="javascript:alert(1)"),
    ]
    good_lines = [json.dumps(e) for e in [*good, later_title, year_999, first_of_u9, *bad_urls]]
    mixed = zip_longest(good_lines, poison)  # poison spread through the stream
    rows = [line for pair in mixed for line in pair if line is not None] + garbage
    path = write_jsonl(tmp_path / "events.jsonl", rows)

    values = run_job(sim, config, SourceOptions(source="files", input=str(path)), tmp_path, monkeypatch)

    read = values.get(m.EVENTS_READ, 0)
    applied, skipped, dead = (
        values.get(m.EVENTS_APPLIED, 0),
        values.get(m.EVENTS_SKIPPED, 0),
        values.get(m.EVENTS_DEAD_LETTERED, 0),
    )
    assert read == len(rows)
    assert applied + skipped + dead == read, values
    letters = dead_letters(tmp_path)
    assert dead == len(letters) == len(poison) + len(garbage)
    expected = Counter([*poison.values(), ("parse", "unparseable_json"), ("parse", "unparseable_json")])
    assert Counter((letter["stage"], letter["reason"]) for letter in letters) == expected
    # every letter says where its line was; the map-stage one shows the event as it was sent
    assert sorted(letter["source"]["line"] for letter in letters) == sorted(
        n for n, line in enumerate(rows, start=1) if line in poison or line in garbage
    )
    (company_letter,) = [letter for letter in letters if letter["stage"] == "map"]
    assert company_letter["event"] == json.loads(next(line for line in poison if "poison_company" in line))
    good_ids = [e["messageId"] for e in [*good, later_title, year_999, first_of_u9, *bad_urls]]
    assert sorted(applied_ids(tmp_path)) == sorted(good_ids)
    assert applied == len(good_ids)
    audit = read_lines(tmp_path / "audit.jsonl")
    dropped = sorted((line["person"], d["field"], d["reason"]) for line in audit for d in line["dropped"])
    assert dropped == [("user:u_8", "contact_url", "invalid_url"), ("user:u_9", "contact_url", "invalid_url")]
    assert values.get(m.FIELDS_DROPPED) == 2
    assert values.get(m.FIELDS_DROPPED_PREFIX + "contact_url:invalid_url") == 2
    # the newest event wins, whatever the text of the older one's timestamp
    contacts = {c.get(f"custom.{cf['user']}"): c for c in sim.contacts()}
    assert contacts["u_2"]["title"] == "CTO"
    assert [u["url"] for u in contacts["u_9"].get("urls") or []] == ["https://acme.example.com/"]
    assert not contacts["u_8"].get("urls") and contacts["u_8"]["emails"]
    assert set(contacts) == {f"u_{u}" for u in (0, 1, 2, 3, 4, 8, 9)}
