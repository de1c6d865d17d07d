"""Alias on the mapping side: the shipped `alias` preset (off unless listed), the alias event's own
check (a usable previousId), an alias request needing a user id, and the allow_merging flag (off by
default) as the config gives it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from closecrm.events.mapping import (
    ACTION_FIELDS,
    ALIAS_PRESET,
    DEFAULT_MAPPING,
    IDENTITY_FIELDS,
    PRESETS,
    MappingSpec,
    compile_mappings,
    map_event,
    request_from_values,
)
from closecrm.events.parse import BadEvent, Event, parse_event
from closecrm.model import Flags, UpsertRequest
from pipeline.config import ConfigError, FlagsConfig, JobConfig, json_schema, parse_config
from transforms.deadletter import DEAD
from transforms.mapping import _Map
from transforms.parse import _Parse

ROOT = Path(__file__).resolve().parents[2]
TS = "2024-05-01T10:00:00Z"
ALIAS = {"type": "alias", "previousId": "anon-7", "userId": "u1", "messageId": "m1", "timestamp": TS}


def alias(**changes: Any) -> dict[str, Any]:
    """An alias event; a change to ``...`` leaves that key out."""
    out = {**ALIAS, **changes}
    return {k: v for k, v in out.items() if v is not ...}


def mapped(event: Event, spec: MappingSpec = ALIAS_PRESET) -> list[UpsertRequest]:
    return map_event(event, compile_mappings([spec]))


def parse_reason(raw: object) -> str:
    with pytest.raises(BadEvent) as caught:
        parse_event(raw)  # type: ignore[arg-type]
    return caught.value.reason


def map_reason(event: Event, spec: MappingSpec = ALIAS_PRESET) -> str:
    with pytest.raises(BadEvent) as caught:
        mapped(event, spec)
    return caught.value.reason


def dead_letters(outputs: list[Any]) -> list[Any]:
    return [out.value for out in outputs if getattr(out, "tag", None) == DEAD]


# ---------------------------------------------------------------------------- the preset


def test_the_alias_preset_is_shipped_and_maps_the_two_ids_and_nothing_else() -> None:
    assert PRESETS["alias"] is ALIAS_PRESET
    assert ALIAS_PRESET.trigger == 'type = "alias"'
    assert ALIAS_PRESET.flags == Flags()  # merging stays off unless the config asks for it
    assert set(ALIAS_PRESET.fields) == set(ACTION_FIELDS)
    assert {name: source for name, source in ALIAS_PRESET.fields.items() if source is not None} == {
        "alias_previous_id": "$.previousId",
        "contact_user_id": "$.userId",
    }


def test_an_alias_event_becomes_a_request_with_the_two_ids_only() -> None:
    # Traits on an alias call (Segment allows them) are not read: the preset maps nothing else.
    event = parse_event(
        alias(
            traits={"email": "ann@acme.com", "name": "Ann", "company": {"id": "c1", "name": "Acme"}},
            context={"traits": {"title": "CTO", "phone": "+1 415 555 2671"}},
        )
    )
    (request,) = mapped(event)
    assert request == UpsertRequest(
        alias_previous_id="anon-7",
        contact_user_id="u1",
        event_ids=("m1",),
        timestamp="2024-05-01T10:00:00.000000Z",
    )
    assert request.mappings == ("Alias to Close",) and request.dropped == ()


def test_the_alias_preset_ignores_other_events_and_the_default_mapping_ignores_aliases() -> None:
    identify = parse_event({"type": "identify", "userId": "u1", "messageId": "m2", "timestamp": TS})
    assert mapped(identify) == []
    assert mapped(parse_event(alias()), DEFAULT_MAPPING) == []


def test_a_numeric_previous_id_is_read_as_text_like_the_other_ids() -> None:
    event = parse_event(alias(previousId=42, userId=7.0))
    assert event.raw["previousId"] == "42"
    (request,) = mapped(event)
    assert (request.alias_previous_id, request.contact_user_id) == ("42", "7")


def test_an_alias_of_a_user_id_to_itself_is_kept() -> None:
    # Pointless but harmless: nothing to join, which the engine reports as unchanged.
    (request,) = mapped(parse_event(alias(previousId="u1")))
    assert request.alias_previous_id == request.contact_user_id == "u1"


# ---------------------------------------------------------------------------- bad aliases


@pytest.mark.parametrize(
    ("previous_id", "expected"),
    [
        (..., "missing_previous_id"),
        (None, "missing_previous_id"),
        ("", "missing_previous_id"),
        ("   ", "missing_previous_id"),
        (True, "wrong_type:previousId"),
        ({"id": "anon-7"}, "wrong_type:previousId"),
        (["anon-7"], "wrong_type:previousId"),
    ],
)
def test_an_alias_without_a_usable_previous_id_is_rejected(previous_id: Any, expected: str) -> None:
    raw = alias(previousId=previous_id)
    assert parse_reason(raw) == expected
    assert parse_reason(json.dumps(raw)) == expected


def test_an_alias_without_previous_id_becomes_a_parse_dead_letter() -> None:
    parse = _Parse(max_bytes=64 * 1024)
    parse.setup()
    (letter,) = dead_letters(list(parse.process(json.dumps(alias(previousId=...)))))
    assert (letter.stage, letter.reason, letter.event_ids) == ("parse", "missing_previous_id", ("m1",))


def test_previous_id_is_only_required_of_alias_events() -> None:
    event = parse_event({"type": "identify", "userId": "u1", "messageId": "m2", "timestamp": TS})
    assert event.user_id == "u1"


def test_an_alias_without_a_user_id_fails_its_event_when_mapped() -> None:
    # Valid as an event (anonymousId is an id), but an alias request needs the user id it joins.
    event = parse_event(alias(userId=..., anonymousId="anon-9"))
    assert map_reason(event) == "missing_contact_user_id"
    with pytest.raises(BadEvent, match="mapping 'Alias to Close'"):
        mapped(event)


def test_an_alias_without_a_user_id_becomes_a_map_dead_letter() -> None:
    mapper = _Map([ALIAS_PRESET])
    mapper.setup()
    event = parse_event(alias(userId=..., anonymousId="anon-9"))
    (letter,) = dead_letters(list(mapper.process(event)))
    assert (letter.stage, letter.reason, letter.event_ids) == ("map", "missing_contact_user_id", ("m1",))


def test_the_previous_id_is_an_identity_a_bad_value_fails_the_event_instead_of_being_dropped() -> None:
    assert "alias_previous_id" in IDENTITY_FIELDS
    spec = MappingSpec("custom alias", 'type = "alias"', fields={"alias_previous_id": "$.properties.old"})
    event = parse_event(alias(properties={"old": {"id": 1}}))
    assert map_reason(event, spec) == "wrong_type:alias_previous_id"


def test_a_request_from_values_with_a_previous_id_needs_a_user_id() -> None:
    with pytest.raises(BadEvent) as caught:
        request_from_values({"alias_previous_id": "anon-7", "contact_email": "ann@acme.com"})
    assert caught.value.reason == "missing_contact_user_id"
    request = request_from_values({"alias_previous_id": " anon-7 ", "contact_user_id": "u1"})
    assert (request.alias_previous_id, request.contact_user_id) == ("anon-7", "u1")


def test_a_mapping_of_previous_id_on_events_without_one_makes_ordinary_requests() -> None:
    # No static check ties alias_previous_id to alias triggers: where the source finds nothing, the
    # request is an ordinary upsert.
    spec = MappingSpec(
        "any", 'type = "identify" or type = "alias"', fields={"alias_previous_id": "$.previousId"}
    )
    identify = parse_event({"type": "identify", "userId": "u1", "messageId": "m2", "timestamp": TS})
    (request,) = mapped(identify, spec)
    assert request.alias_previous_id is None and request.contact_user_id == "u1"


# ---------------------------------------------------------------------------- config


def test_default_flags_never_merge() -> None:
    assert Flags().allow_merging is False
    assert FlagsConfig().flags() == Flags()
    assert JobConfig().mapping_specs()[0].flags.allow_merging is False
    config = parse_config({"mappings": [{"name": "a", "preset": "alias"}]})
    assert config.mapping_specs()[0].flags == Flags()
    assert config.mapping_specs()[0].flags.allow_merging is False


def test_an_alias_preset_with_allow_merging_loads_and_gives_the_flag() -> None:
    config = parse_config({"mappings": [{"name": "Aliases", "preset": "alias", "allow_merging": True}]})
    (spec,) = config.mapping_specs()
    assert spec.flags == Flags(allow_merging=True)
    assert (spec.trigger, spec.fields) == (ALIAS_PRESET.trigger, ALIAS_PRESET.fields)
    (request,) = mapped(parse_event(alias()), spec)
    assert request.flags.allow_merging is True and request.alias_previous_id == "anon-7"


def test_allow_merging_without_an_alias_field_and_an_alias_field_on_any_trigger_are_fine() -> None:
    config = parse_config(
        {
            "mappings": [
                {"name": "a", "trigger": 'type = "identify"', "allow_merging": True},
                {"name": "b", "trigger": "true", "fields": {"alias_previous_id": "$.previousId"}},
            ]
        }
    )
    assert [spec.flags.allow_merging for spec in config.mapping_specs()] == [True, False]


def test_allow_merging_takes_a_boolean_only() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"mappings": [{"name": "a", "preset": "alias", "allow_merging": "yes"}]})
    assert caught.value.problems[0].startswith("mappings[0].allow_merging:")


def test_a_mapping_without_trigger_or_preset_names_the_alias_preset() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"mappings": [{"name": "a"}]})
    assert caught.value.problems == [
        "mappings[0].trigger: required (or name a preset: identify | group | alias)"
    ]


def test_a_literal_previous_id_is_warned_about_as_a_path() -> None:
    config = parse_config(
        {"mappings": [{"name": "a", "preset": "alias", "fields": {"alias_previous_id": "previousId"}}]}
    )
    (warning,) = config.warnings()
    assert warning.startswith("mappings[0].fields.alias_previous_id: 'previousId' is a literal")


def test_the_schema_offers_the_alias_preset_and_the_merging_flag_off() -> None:
    mapping = json_schema()["$defs"]["MappingConfig"]["properties"]
    assert "alias" in json.dumps(mapping["preset"])
    assert mapping["allow_merging"]["default"] is False
    committed = json.loads((ROOT / "schemas" / "config.schema.json").read_text(encoding="utf-8"))
    assert committed == json_schema(), "run: python schemas/generate.py"


def test_the_example_config_lists_the_alias_preset_disabled_with_merging_off() -> None:
    example = yaml.safe_load((ROOT / "examples" / "config.example.yaml").read_text(encoding="utf-8"))
    (listed,) = [m for m in example["mappings"] if m.get("preset") == "alias"]
    assert listed["enabled"] is False and listed["allow_merging"] is False
