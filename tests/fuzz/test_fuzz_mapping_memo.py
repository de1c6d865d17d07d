"""`map_event` reads paths the quick way and memoises normalised text fields: on any event it must give
what resolving each path (`resolve_path`) and normalising the values afresh gives, the first time a
value is seen and every time after."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from closecrm.events.mapping import (
    ALIAS_PRESET,
    DEFAULT_MAPPING,
    GROUP_PRESET,
    CompiledMapping,
    MappingSpec,
    PathSource,
    compile_mappings,
    map_event,
    request_dropping_bad_values,
)
from closecrm.events.parse import BadEvent, Event, parse_event, resolve_path
from closecrm.model import Flags, UpsertRequest
from tests.fuzz.budget import budget
from tests.fuzz.strategies import events

MAPPINGS = compile_mappings(
    [
        DEFAULT_MAPPING,
        GROUP_PRESET,
        ALIAS_PRESET,
        MappingSpec(
            name="odd paths",
            trigger='type = "identify" or type = "track"',
            fields={
                "lead_name": "$.traits.company",  # an object, not text
                "lead_description": "$.traits.seat",  # 1, True, 1.0 and "1" are equal keys, not values
                "contact_title": "$.context.traits.title",
                "contact_name": "$.traits.list[1]",  # through a list
                "lead_status_id": 42,  # a literal number
            },
            flags=Flags(allow_updating_existing_leads=False),
        ),
        MappingSpec(
            name="custom",
            trigger='type = "identify"',
            fields={
                "contact_custom_fields": {"cf_plan": "$.traits.plan"},
                "lead_custom_fields": "$.traits.custom",
            },
        ),
    ]
)


def afresh(event: Event, mapping: CompiledMapping) -> UpsertRequest:
    """A request built the plain way: each path resolved, every value normalised anew."""

    def value(source: Any) -> Any:
        return resolve_path(event.raw, source.parts) if isinstance(source, PathSource) else source.literal

    values: dict[str, Any] = {name: value(source) for name, source in mapping.sources.items()}
    for name, custom in mapping.custom_sources.items():
        values[name] = {k: value(s) for k, s in custom.items()} if isinstance(custom, dict) else value(custom)
    try:
        return request_dropping_bad_values(
            values,
            mapping.spec.flags,
            event_ids=(event.message_id,),
            timestamp=event.timestamp,
            mapping=mapping.name,
        )
    except BadEvent as exc:
        raise BadEvent(exc.reason, f"mapping {mapping.name!r}: {exc.detail or exc.reason}") from None


def outcome(build: Any) -> Any:
    try:
        requests = build()
    except BadEvent as exc:
        return ("bad", exc.reason, str(exc))
    return [(repr(r), vars(r), [type(v) for v in vars(r).values()]) for r in requests]


def expected(event: Event) -> Any:
    return outcome(lambda: [afresh(event, m) for m in MAPPINGS if m.matches(event)])


few = st.sampled_from
odd_traits = st.fixed_dictionaries(
    {
        "list": st.lists(st.one_of(st.none(), few(["a", " b ", "", 3])), max_size=3),
        "seat": few([1, True, 1.0, "1", " 1", None, ""]),
        "plan": st.one_of(st.none(), few(["pro", "", [1, 2]])),
        "custom": st.one_of(st.none(), few([{"cf_x": 1}, {"x": 1}, "text"])),
    }
)
# Values repeat across examples (the memo outlives them), in traits and in context.traits apart.
plain_traits = st.dictionaries(
    few(["name", "email", "phone", "website", "title", "company"]),
    st.one_of(
        few([None, "", " ", "Kate", "kate@x.com", "not an email", "+1 415 555 0100", "12", "acme.com"]),
        few(["javascript:x", "\ud800", 7, True, 2.5, [1], {"id": "c1", "name": "Acme"}, {"id": 5}]),
    ),
    max_size=6,
)


@st.composite
def segment_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": draw(few(["identify", "identify", "group", "track", "alias"])),
        "userId": draw(few(["u1", "u2", 3, " "])),
        "traits": {**draw(plain_traits), **draw(odd_traits)},
    }
    if draw(st.booleans()):
        event["context"] = {"traits": draw(plain_traits)}
    for key, values in (("groupId", ["c1", "", 9]), ("previousId", ["u0", None])):
        if draw(st.booleans()):
            event[key] = draw(few(values))
    return event


@budget(600)
@given(st.one_of(segment_events(), segment_events(), events()))
def test_map_event_is_mapping_afresh(raw: dict[str, Any]) -> None:
    try:
        event = parse_event(raw)
    except BadEvent:
        return
    want = expected(event)
    assert outcome(lambda: map_event(event, MAPPINGS)) == want
    assert outcome(lambda: map_event(event, MAPPINGS)) == want  # memoised this time
    again = parse_event(raw)  # equal values, other objects (a message id or time filled in anew)
    assert outcome(lambda: map_event(again, MAPPINGS)) == expected(again)


def test_each_request_gets_its_own_custom_field_dicts() -> None:
    event = parse_event({"type": "identify", "userId": "u1", "traits": {"email": "a@x.com"}})
    first, second = (map_event(event, MAPPINGS[:1])[0] for _ in range(2))
    assert first == second
    assert first.contact_custom_fields is not second.contact_custom_fields
    assert first.lead_custom_fields is not second.lead_custom_fields


def test_equal_values_of_other_types_are_not_one_memo_entry() -> None:
    """1, True and 1.0 are equal (and hash alike) but normalise apart: True is no text."""
    for seat in (1, True, 1.0, "1", True, 1):
        event = parse_event({"type": "identify", "userId": "u1", "messageId": "m", "traits": {"seat": seat}})
        assert outcome(lambda event=event: map_event(event, MAPPINGS)) == expected(event)
