"""parse → map → collapse on arbitrary input: only BadEvent ever escapes, and what passes can travel."""

from __future__ import annotations

import json
import pickle
from datetime import datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from closecrm.events.collapse import collapse, collapse_key, merge
from closecrm.events.mapping import compile_mappings, map_event
from closecrm.events.normalize import email_key, phone_key, url_key
from closecrm.events.parse import BadEvent, Event, identity, parse_event
from closecrm.model import UpsertRequest
from pipeline.config import parse_config
from tests.fuzz.budget import budget
from tests.fuzz.strategies import as_wire, emails, phones, small_text, text, urls, wire_events

# The default identify mapping, the group preset, and one mapping that writes arbitrary paths
# into custom fields and scalars: every field of the action can receive anything.
CONFIG = parse_config(
    {
        "settings": {"lead_custom_field_id_for_company_id": "cf_co", "contact_custom_field_id_for_user_id": "cf_u"},
        "mappings": [
            {"name": "identify", "preset": "identify"},
            {"name": "group", "preset": "group"},
            {
                "name": "everything",
                "trigger": 'type = "track" or type = "page" or traits.plan exists',
                "fields": {
                    "lead_name": "$.traits.company.name",
                    "lead_description": "$.properties",
                    "lead_status_id": "$.traits.status",
                    "lead_custom_fields": {"cf_plan": "$.traits.plan", "cf_any": "$.properties.x"},
                    "contact_custom_fields": "$.traits.custom",
                    "contact_title": "$.event",
                },
            },
        ],
    }
)
MAPPINGS = compile_mappings(CONFIG.mapping_specs())


def travels(value: object) -> None:
    """Later stages pickle what they pass on and write it as UTF-8 JSON lines."""
    pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    body = value.raw if isinstance(value, Event) else value.to_json()
    json.dumps(body, sort_keys=True, default=str).encode("utf-8")


def parse_and_map(raw: object) -> list[UpsertRequest]:
    try:
        event = parse_event(raw)  # type: ignore[arg-type]
    except BadEvent as exc:
        assert exc.reason and isinstance(exc.reason, str)
        str(exc).encode("utf-8")  # the reason ends up in a dead letter
        return []
    travels(event)
    try:
        requests = map_event(event, MAPPINGS)
    except BadEvent as exc:
        str(exc).encode("utf-8")
        return []
    for request in requests:
        travels(request)
        request.fingerprint()
        collapse_key(request)
    return requests


@budget(400)
@given(wire_events())
def test_parse_and_map_raise_only_bad_event_and_pass_on_only_what_can_travel(raw):
    parse_and_map(raw)


@budget(150)
@given(st.lists(wire_events(), min_size=2, max_size=8))
def test_collapse_never_raises_and_orders_a_persons_requests_by_instant(raws):
    requests = [r for raw in raws for r in parse_and_map(raw)]
    # One person: every request re-keyed to one user, as CollapsePerPerson sees them.
    for merged in collapse(requests):
        travels(merged)
    times = [datetime.fromisoformat(r.timestamp.replace("Z", "+00:00")) for r in collapse(requests) if r.timestamp]
    assert times == sorted(times)
    for a in requests:
        for b in requests:
            if collapse_key(a) == collapse_key(b):
                travels(merge(a, b))


@budget(300)
@given(st.one_of(emails, text))
def test_email_key_is_total(value):
    email_key(value)


@budget(300)
@given(st.one_of(phones, text))
def test_phone_key_is_total(value):
    phone_key(value)


@budget(300)
@given(st.one_of(urls, text))
def test_url_key_is_total(value):
    url_key(value)


def _unescaped(obj: Any, form: str) -> Any:
    """JSON text with its characters as they are (no \\u escapes): what the quick read of `identity` sees
    most; as bytes, lone surrogates become bytes that are not UTF-8."""
    blob = json.dumps(obj, ensure_ascii=False, default=str)
    return blob if form == "text" else blob.encode("utf-8", "surrogatepass")


# Ids as producers send them: padded, numbers (42, 4.2e1, 1e2), empty, escaped or raw non-ASCII text.
plausible_ids = st.one_of(
    st.none(),
    st.sampled_from(["u1", " u1 ", "", " ", "Kåte", "\u00e9", "\ud800", "x" * 300]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)


@st.composite
def plausible_events(draw: st.DrawFn) -> dict[str, Any]:
    """Events the parse mostly accepts, their ids drawn from `plausible_ids`."""
    kind = draw(st.sampled_from(["identify", "track", "group", "alias", "page", "screen"]))
    event: dict[str, Any] = {
        "type": draw(st.sampled_from([kind, kind.upper(), f" {kind} "])),
        "messageId": draw(st.one_of(plausible_ids, st.sampled_from(["m1", " m1 ", "gen-0"]))),
        "userId": draw(plausible_ids),
        "anonymousId": draw(plausible_ids),
        "event": "Clicked",
        "groupId": draw(plausible_ids),
        "previousId": "p1",
        "traits": draw(st.one_of(st.just({"email": "kate@example.com"}), st.dictionaries(small_text, text, max_size=2))),
    }
    return {k: v for k, v in event.items() if v is not None or draw(st.booleans())}


payloads = st.one_of(
    wire_events(),
    st.builds(as_wire, plausible_events(), st.sampled_from(["dict", "text", "bytes"])),
    st.builds(_unescaped, plausible_events(), st.sampled_from(["text", "bytes"])),
)


@budget(200)
@given(payloads)
def test_identity_names_the_ids_of_the_event_the_parse_makes(raw):
    """The bounded job places a payload by `identity` and parses it later: wherever the parse makes an
    event, the quick read names that event's user, visitor and messageId (and never None)."""
    try:
        event = parse_event(raw)
    except BadEvent:
        return
    assert identity(raw) == (event.user_id, event.anonymous_id, event.message_id)
