"""closecrm.events.trigger: the filter-language subset parses, evaluates, and reports errors with columns."""

from __future__ import annotations

import pickle

import pytest

from closecrm.events.trigger import TriggerError, compile_trigger

IDENTIFY = {
    "type": "identify",
    "userId": "u1",
    "traits": {"email": "a@b.com", "plan": "pro", "seats": 12, "tags": ["vip", "beta"], "active": True},
}
TRACK = {
    "type": "track",
    "event": "User Created",
    "userId": "u1",
    "properties": {"total": 10.5, "items": [{"sku": "A1"}], "note": None},
    "context": {"traits": {"plan": "pro"}},
}


@pytest.mark.parametrize(
    ("text", "event", "expected"),
    [
        ('type = "identify"', IDENTIFY, True),
        ('type = "identify"', TRACK, False),
        ("type == 'track'", TRACK, True),
        ('type != "identify"', TRACK, True),
        ('event = "User Created"', TRACK, True),
        ('event = "User Created"', IDENTIFY, False),
        ('type = "track" and event = "User Created"', TRACK, True),
        ('type = "track" && event = "Other"', TRACK, False),
        ('type = "group" or type = "identify"', IDENTIFY, True),
        ('type = "group" || event = "User Created"', TRACK, True),
        ('not type = "identify"', TRACK, True),
        ('!(type = "identify")', IDENTIFY, False),
        ('NOT type = "identify" AND event = "User Created"', TRACK, True),
        ('type = "identify" or type = "track" and event = "Nope"', IDENTIFY, True),
        ('(type = "identify" or type = "track") and event = "Nope"', IDENTIFY, False),
        ("traits.email exists", IDENTIFY, True),
        ("traits.phone exists", IDENTIFY, False),
        ("traits.phone not exists", IDENTIFY, True),
        ("properties.note exists", TRACK, False),
        ("properties.note = null", TRACK, True),
        ("properties.missing = null", TRACK, True),
        ('properties.missing != "x"', TRACK, True),
        ('context.traits.plan = "pro"', TRACK, True),
        ('traits.plan = "pro"', TRACK, True),  # falls back to context.traits
        ('$.traits.plan = "pro"', IDENTIFY, True),
        ("properties.total > 10", TRACK, True),
        ("properties.total >= 10.5", TRACK, True),
        ("properties.total < 10", TRACK, False),
        ("properties.total <= -1", TRACK, False),
        ("traits.seats = 12", IDENTIFY, True),
        ('traits.seats = "12"', IDENTIFY, False),
        ('traits.seats > "1"', IDENTIFY, False),
        ('traits.plan > "a"', IDENTIFY, True),
        ("traits.active = true", IDENTIFY, True),
        ("traits.active = 1", IDENTIFY, False),
        ('traits.email contains "@b."', IDENTIFY, True),
        ('traits.tags contains "vip"', IDENTIFY, True),
        ('traits.tags not contains "gold"', IDENTIFY, True),
        ('contains(traits.email, "@x.")', IDENTIFY, False),
        ('traits.plan in ["pro", "enterprise"]', IDENTIFY, True),
        ('traits.plan in ("free")', IDENTIFY, False),
        ('traits.plan not in ["free"]', IDENTIFY, True),
        ("traits.plan in []", IDENTIFY, False),
        ('event match "User *"', TRACK, True),
        ('match(traits.email, "*@b.com")', IDENTIFY, True),
        ('properties.items.0.sku = "A1"', TRACK, True),
        ('traits.email = "a@b.com" and traits.seats > 10', IDENTIFY, True),
        ('traits.note = "say \\"hi\\""', {"traits": {"note": 'say "hi"'}}, True),
        ("true", TRACK, True),
        ("false", TRACK, False),
    ],
)
def test_trigger_matches(text: str, event: dict, expected: bool) -> None:
    assert compile_trigger(text).matches(event) is expected


@pytest.mark.parametrize(
    ("text", "column", "problem"),
    [
        ("type = ", 8, "expected a value after '='"),
        ('type "identify"', 6, "expected an operator"),
        ('(event = "a"', 13, "expected ')'"),
        ('event = "a" type = "b"', 13, "after a complete condition"),
        ('type = "identify" and', 22, "expected a condition"),
        ("", 1, "empty"),
        ("   ", 1, "empty"),
        ('type = "unterminated', 8, "unterminated string"),
        ("type = @", 8, "unexpected character '@'"),
        ("type = identify", 8, 'write "identify" in quotes'),
        ('type = "track" or traits.plan in [pro]', 35, "names a field of the event, not text"),
        ('type = "identfy"', 8, 'did you mean "identify"?'),
        ('type in ["page", "Track"]', 18, "is not an event type"),
        ('"x" exists', 1, "'exists' needs a path"),
        ('traits.plan in "pro"', 16, "expected a list"),
        ('traits.plan in ["a" "b"]', 21, "expected ',' or ']'"),
        ("traits.x not = 1", 10, "expected an operator"),
        ("traits.x not true", 14, "after 'not'"),
        ('contains(traits.x "a")', 19, "expected ','"),
        ("and", 1, "expected a condition"),
        ("type = 'a\\q'", 10, "unknown escape"),
        ("type = )", 8, "expected a value"),
    ],
)
def test_errors_name_the_column_and_the_problem(text: str, column: int, problem: str) -> None:
    with pytest.raises(TriggerError) as caught:
        compile_trigger(text)
    assert caught.value.column == column
    assert caught.value.position == column - 1
    assert problem in caught.value.problem
    assert str(caught.value).endswith(f"at column {column}")


def test_compiled_trigger_pickles_for_beam_workers() -> None:
    trigger = compile_trigger('type = "track" and traits.plan in ["pro"]')
    clone = pickle.loads(pickle.dumps(trigger))
    assert clone == trigger and clone.matches(TRACK)
