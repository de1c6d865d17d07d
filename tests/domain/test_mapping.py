"""closecrm.events.mapping: defaults, presets, overrides, context.traits fallback and normalisation (null and empty
values dropped, numbers for string fields as strings, custom-field values keeping their JSON type)."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

from closecrm.events.mapping import (
    DEFAULT_MAPPING,
    DEFAULT_SOURCES,
    GROUP_PRESET,
    MappingError,
    MappingSpec,
    compile_mapping,
    compile_mappings,
    map_event,
    request_dropping_bad_values,
    request_from_values,
)
from closecrm.events.parse import BadEvent, parse_event
from closecrm.model import DroppedField, Flags, UpsertRequest

TS = "2024-05-01T10:00:00Z"


def ev(**fields: object):
    base = {"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": TS}
    return parse_event({**base, **fields})


def one(event, spec: MappingSpec = DEFAULT_MAPPING) -> UpsertRequest:
    requests = map_event(event, compile_mappings([spec]))
    assert len(requests) == 1
    return requests[0]


def dropped(request: UpsertRequest) -> list[tuple[str, str]]:
    return [(d.field, d.reason) for d in request.dropped]


FULL_TRAITS = {
    "company": {"name": "Acme", "id": "c1"},
    "name": "Ann",
    "email": "ann@acme.com",
    "phone": "+1 415 555 2671",
    "website": "acme.com/ann",
    "title": "CTO",
}


def test_default_sources_are_the_spec_defaults() -> None:
    assert DEFAULT_SOURCES == {
        "lead_name": "$.traits.company.name",
        "lead_company_id": "$.traits.company.id",
        "contact_name": "$.traits.name",
        "contact_email": "$.traits.email",
        "contact_phone": "$.traits.phone",
        "contact_url": "$.traits.website",
        "contact_title": "$.traits.title",
        "contact_user_id": "$.userId",
    }
    assert DEFAULT_MAPPING.trigger == 'type = "identify"' and DEFAULT_MAPPING.flags == Flags()


def test_default_mapping_maps_an_identify_call() -> None:
    req = one(ev(traits=FULL_TRAITS))
    assert req == UpsertRequest(
        lead_name="Acme",
        lead_company_id="c1",
        contact_name="Ann",
        contact_emails=("ann@acme.com",),
        contact_phones=("+1 415 555 2671",),
        contact_urls=("acme.com/ann",),
        contact_title="CTO",
        contact_user_id="u1",
        event_ids=("m1",),
        timestamp="2024-05-01T10:00:00.000000Z",
    )


def test_default_mapping_ignores_other_event_types() -> None:
    assert map_event(ev(type="track", event="X"), compile_mappings([DEFAULT_MAPPING])) == []


def test_group_preset_reads_the_company_and_nothing_personal() -> None:
    event = ev(
        type="group",
        groupId="g1",
        traits={"name": "Acme", "email": "billing@acme.com"},
        context={"traits": {"name": "Ann", "email": "ann@acme.com"}},
    )
    req = one(event, GROUP_PRESET)
    assert (req.lead_company_id, req.lead_name, req.contact_user_id) == ("g1", "Acme", "u1")
    assert req.contact_emails == () and req.contact_name is None


def test_group_preset_does_not_take_the_lead_name_from_context_traits() -> None:
    event = ev(type="group", groupId="g1", context={"traits": {"name": "Ann"}})
    assert one(event, GROUP_PRESET).lead_name is None


def test_track_call_reads_traits_from_context_traits() -> None:
    spec = MappingSpec("signup", 'type = "track" and event = "User Created" and traits.plan = "pro"')
    event = ev(
        type="track",
        event="User Created",
        context={"traits": {"email": "ann@acme.com", "plan": "pro", "name": "Ann"}},
    )
    req = one(event, spec)
    assert req.contact_emails == ("ann@acme.com",) and req.contact_name == "Ann"


def test_traits_win_over_context_traits() -> None:
    req = one(ev(traits={"name": "T"}, context={"traits": {"name": "C", "title": "CT"}}))
    assert (req.contact_name, req.contact_title) == ("T", "CT")


def test_fields_override_defaults_and_null_unmaps() -> None:
    spec = MappingSpec(
        "m",
        'type = "identify"',
        fields={
            "contact_title": "$.traits.jobTitle",
            "lead_status_id": "stat_1",
            "lead_description": "$.properties.items[0].sku",
            "contact_email": None,
            "lead_custom_fields": {"cf_plan": "$.traits.plan", "cf_source": "segment", "cf_n": 3},
            "contact_custom_fields": "$.traits.custom",
        },
        flags=Flags(allow_creating_new_leads=False),
    )
    event = ev(
        traits={
            "jobTitle": "CEO",
            "title": "ignored",
            "email": "a@b.com",
            "plan": "pro",
            "custom": {"cf_a": [1, 2], "cf_b": None, "cf_c": False},
        },
        properties={"items": [{"sku": "A1"}]},
    )
    req = one(event, spec)
    assert req.contact_title == "CEO"
    assert req.lead_status_id == "stat_1"
    assert req.lead_description == "A1"
    assert req.contact_emails == ()
    assert req.lead_custom_fields == {"cf_plan": "pro", "cf_source": "segment", "cf_n": 3}
    assert req.contact_custom_fields == {"cf_a": [1, 2], "cf_c": False}
    assert req.flags == Flags(allow_creating_new_leads=False)


def test_one_event_matching_several_mappings_gives_several_requests_in_order() -> None:
    a = MappingSpec("a", 'type = "identify"', fields={"lead_status_id": "stat_a"})
    b = MappingSpec("b", "traits.email exists", fields={"lead_status_id": "stat_b"})
    c = MappingSpec("c", 'type = "group"')
    requests = map_event(ev(traits={"email": "a@b.com"}), compile_mappings([a, b, c]))
    assert [r.lead_status_id for r in requests] == ["stat_a", "stat_b"]
    assert all(r.event_ids == ("m1",) and r.timestamp == "2024-05-01T10:00:00.000000Z" for r in requests)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        (" Ann ", "Ann"),
        (42, "42"),
        (42.0, "42"),
        (4.5, "4.5"),
        (-0.25, "-0.25"),
        (10**20, "100000000000000000000"),
    ],
)
def test_string_fields_drop_empty_values_and_stringify_numbers(value: object, expected: str | None) -> None:
    assert one(ev(traits={"name": value})).contact_name == expected


def test_missing_values_never_appear() -> None:
    req = one(ev(traits={}))
    assert req == UpsertRequest(contact_user_id="u1", event_ids=("m1",), timestamp=req.timestamp)


@pytest.mark.parametrize("value", [{"a": 1}, [1], True])
def test_a_wrong_type_for_an_optional_string_field_is_dropped_and_recorded(value: object) -> None:
    request = one(ev(traits={"title": value, "name": "Ann", "email": "ann@acme.com"}))
    assert request.contact_title is None
    assert (request.contact_name, request.contact_emails, request.contact_user_id) == ("Ann", ("ann@acme.com",), "u1")
    assert request.dropped == (DroppedField("contact_title", "wrong_type:contact_title", "Identify to Close"),)
    assert request.mappings == ("Identify to Close",)


@pytest.mark.parametrize("value", [{"a": 1}, [1], True])
def test_a_wrong_type_for_the_company_id_or_user_id_still_fails_the_event(value: object) -> None:
    with pytest.raises(BadEvent) as caught:
        one(ev(traits={"company": {"id": value}, "name": "Ann"}))
    assert caught.value.reason == "wrong_type:lead_company_id"
    assert "Identify to Close" in str(caught.value)
    spec = MappingSpec("by uid", "true", fields={"contact_user_id": "$.traits.uid"})
    with pytest.raises(BadEvent) as caught:
        one(ev(traits={"uid": value}), spec)
    assert caught.value.reason == "wrong_type:contact_user_id"


def test_custom_fields_that_are_not_an_object_of_cf_keys_are_dropped_and_recorded() -> None:
    spec = MappingSpec("m", "true", fields={"lead_custom_fields": "$.traits.custom"})
    request = one(ev(traits={"custom": "x"}), spec)
    assert request.lead_custom_fields == {}
    assert dropped(request) == [("lead_custom_fields", "wrong_type:lead_custom_fields")]
    request = one(ev(traits={"custom": {"plan": 1, "cf_ok": 2}}), spec)
    assert request.lead_custom_fields == {"cf_ok": 2}
    assert dropped(request) == [("lead_custom_fields.plan", "wrong_type:lead_custom_fields")]


@pytest.mark.parametrize("value", [{"a": 1}, [["nested"]], [{"a": 1}]])
def test_a_custom_field_value_no_field_can_hold_is_dropped_and_the_others_are_sent(value: object) -> None:
    spec = MappingSpec("m", "true", fields={"contact_custom_fields": {"cf_bad": "$.traits.bad", "cf_ok": "$.traits.ok"}})
    request = one(ev(traits={"bad": value, "ok": "fine"}), spec)
    assert request.contact_custom_fields == {"cf_ok": "fine"}
    assert dropped(request) == [("contact_custom_fields.cf_bad", "wrong_type:contact_custom_fields")]


def test_strict_normalisation_still_refuses_what_the_mapper_drops() -> None:
    """Snapshot rows keep the strict rule: a bad value dead-letters the row."""
    for values, reason in [
        ({"contact_title": True}, "wrong_type:contact_title"),
        ({"lead_custom_fields": {"plan": 1}}, "wrong_type:lead_custom_fields"),
        ({"contact_custom_fields": {"cf_x": {"a": 1}}}, "wrong_type:contact_custom_fields"),
        ({"contact_email": "nope"}, "invalid_email"),
    ]:
        with pytest.raises(BadEvent) as caught:
            request_from_values(values)
        assert caught.value.reason == reason
        assert request_dropping_bad_values(values).dropped[0].reason == reason


def test_custom_field_values_keep_their_json_type_and_drop_null_and_empty() -> None:
    spec = MappingSpec(
        "m",
        "true",
        fields={
            "contact_custom_fields": {
                "cf_n": "$.traits.n",
                "cf_b": "$.traits.b",
                "cf_l": "$.traits.l",
                "cf_null": "$.traits.none",
                "cf_missing": "$.traits.missing",
                "cf_empty": "$.traits.empty",
                "cf_zero": "$.traits.zero",
            }
        },
    )
    event = ev(traits={"n": 1.5, "b": False, "l": ["x"], "none": None, "empty": "", "zero": 0})
    assert one(event, spec).contact_custom_fields == {"cf_n": 1.5, "cf_b": False, "cf_l": ["x"], "cf_zero": 0}


def test_email_is_trimmed_and_validated_and_a_bad_one_is_dropped() -> None:
    assert one(ev(traits={"email": "  Ann@Acme.com "})).contact_emails == ("Ann@Acme.com",)
    for bad in ("not-an-email", "a@", 12345):
        request = one(ev(traits={"email": bad, "name": "Ann"}))
        assert request.contact_emails == () and request.contact_name == "Ann"
        assert dropped(request) == [("contact_email", "invalid_email")]


def test_a_bad_email_that_was_the_only_identity_leaves_a_request_without_identity() -> None:
    """The engine skips such a request as no_identity, as it would an event that carries no email."""
    event = parse_event({"type": "identify", "anonymousId": "a1", "messageId": "m1", "traits": {"email": "nope"}})
    request = one(event)
    assert (request.contact_user_id, request.lead_company_id, request.contact_emails) == (None, None, ())
    assert dropped(request) == [("contact_email", "invalid_email")]


def test_phone_is_kept_as_given_but_must_parse_else_it_is_dropped() -> None:
    assert one(ev(traits={"phone": "(415) 555-2671"})).contact_phones == ("(415) 555-2671",)
    assert one(ev(traits={"phone": 4155552671})).contact_phones == ("4155552671",)
    request = one(ev(traits={"phone": "call me maybe", "email": "ann@acme.com"}))
    assert request.contact_phones == () and request.contact_emails == ("ann@acme.com",)
    assert dropped(request) == [("contact_phone", "invalid_phone")]


def test_every_bad_optional_value_of_an_event_is_recorded_once_with_its_mapping() -> None:
    traits = {"email": "nope", "phone": "x", "website": "javascript:alert(1)", "title": ["t"], "name": "Ann"}
    request = one(ev(traits=traits))
    assert dropped(request) == [
        ("contact_email", "invalid_email"),
        ("contact_phone", "invalid_phone"),
        ("contact_url", "invalid_url"),
        ("contact_title", "wrong_type:contact_title"),
    ]
    assert {d.mapping for d in request.dropped} == {"Identify to Close"}
    assert (request.contact_name, request.contact_user_id) == ("Ann", "u1")


def test_literal_values_are_normalised_like_event_values() -> None:
    spec = MappingSpec("m", "true", fields={"lead_name": 7, "lead_description": "  about  "})
    req = one(ev(), spec)
    assert (req.lead_name, req.lead_description) == ("7", "about")


@pytest.mark.parametrize(
    "fields",
    [
        {"contact_emial": "$.traits.email"},
        {"lead_custom_fields": {"plan": "$.traits.plan"}},
        {"lead_custom_fields": "literal"},
        {"contact_name": "$."},
        {"contact_name": "$.traits..name"},
    ],
)
def test_bad_mapping_specs_fail_to_compile(fields: dict) -> None:
    with pytest.raises(MappingError):
        compile_mapping(MappingSpec("m", "true", fields=fields))


def test_compiled_mappings_pickle_for_beam_workers() -> None:
    compiled = compile_mappings([DEFAULT_MAPPING, replace(GROUP_PRESET, name="g")])
    clone = pickle.loads(pickle.dumps(compiled))
    assert map_event(ev(traits=FULL_TRAITS), clone) == map_event(ev(traits=FULL_TRAITS), compiled)


def test_request_from_values_is_usable_for_snapshot_rows() -> None:
    req = request_from_values(
        {"contact_user_id": 12, "contact_email": "a@b.com", "lead_name": ""}, Flags(), event_ids=("row:12",)
    )
    assert (req.contact_user_id, req.contact_emails, req.lead_name) == ("12", ("a@b.com",), None)


def test_collapsing_keeps_the_mappings_and_dropped_values_of_every_request_it_merges() -> None:
    from closecrm.events.collapse import collapse

    first = one(ev(messageId="m1", timestamp=TS, traits={"phone": "call me", "name": "Ann"}))
    second = one(
        ev(messageId="m2", timestamp="2024-05-01T10:01:00Z", traits={"website": "javascript:x", "title": "CTO"}),
        replace(DEFAULT_MAPPING, name="Again"),
    )
    (merged,) = collapse([first, second])
    assert merged.event_ids == ("m1", "m2")
    assert merged.mappings == ("Identify to Close", "Again")
    assert [(d.field, d.mapping) for d in merged.dropped] == [("contact_phone", "Identify to Close"), ("contact_url", "Again")]
    # provenance is not content: the same values, dropped or not, make the same request for suppression
    assert merged.fingerprint() == replace(merged, dropped=(), mappings=()).fingerprint()
    assert UpsertRequest.from_json(merged.to_json()).dropped == merged.dropped
