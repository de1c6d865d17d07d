"""Dense, messy CRMs: the job leaves Close as applying every event alone, in order, would.

Shared emails, company-less leads, anonymous visitors, several events per person, flags switched
off. Each case runs three ways on the same seed: one request at a time (the reference), through the
engine in batches of one (a later batch is searched while the earlier one still writes), and the
whole job over a file (collapse, suppression, the writer's flush order, the engine).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from closecrm.events.mapping import DEFAULT_MAPPING, compile_mappings, map_event
from closecrm.events.parse import parse_event
from closecrm.model import Flags, UpsertRequest
from pipeline.config import load_config
from tests.engine.conftest import CloseEnv
from tests.pipeline.helpers import run_files, write_jsonl

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)
WAYS = ["one_at_a_time", "batches_of_one", "job"]


def timed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**e, "messageId": f"m{n}", "timestamp": (T0 + timedelta(seconds=n)).isoformat()}
        for n, e in enumerate(events)
    ]


def requests_of(events: list[dict[str, Any]], flags: Flags) -> list[UpsertRequest]:
    mapping = compile_mappings([DEFAULT_MAPPING.__class__("identify", DEFAULT_MAPPING.trigger, {}, flags)])
    return [r for e in timed(events) for r in map_event(parse_event(e), mapping)]


def run_job(
    close: CloseEnv,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    events: list[dict[str, Any]],
    flags: Flags,
) -> None:
    doc = {
        "settings": {
            "lead_custom_field_id_for_company_id": close.settings.lead_custom_field_id_for_company_id,
            "contact_custom_field_id_for_user_id": close.settings.contact_custom_field_id_for_user_id,
        },
        "mappings": [{"name": "identify", "preset": "identify", **flags.__dict__}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(str(tmp_path / "config.yaml"))
    path = write_jsonl(tmp_path / "events.jsonl", timed(events))
    assert run_files(close.sim, config, str(path), tmp_path, monkeypatch) == 0


def apply(
    way: str,
    close: CloseEnv,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    events: list[dict[str, Any]],
    flags: Flags = Flags(),
) -> None:
    if way == "job":
        run_job(close, tmp_path, monkeypatch, events, flags)
        return
    reqs = requests_of(events, flags)
    if way == "one_at_a_time":
        close.one(*reqs)
        return

    async def batches_of_one(engine) -> None:
        async for _ in engine.upsert_stream([[r] for r in reqs]):
            pass

    close.run(batches_of_one)


def contacts(close: CloseEnv) -> list[tuple[Any, ...]]:
    """(lead name, lead company id, contact name, title, user id, emails lower-cased), sorted."""
    out = []
    for lead in close.leads():
        for c in lead["contacts"]:
            out.append(
                (
                    lead.get("name"),
                    lead.get(close.company_cf),
                    c.get("name"),
                    c.get("title"),
                    c.get(close.user_cf),
                    tuple(e["email"].lower() for e in c["emails"]),
                )
            )
    return sorted(out, key=repr)


def rows(*expected: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    return sorted(expected, key=repr)


def seed(close: CloseEnv, *leads: dict[str, Any]) -> None:
    """Leads oldest first; a contact: (name, user id or None, emails)."""
    docs = []
    for n, lead in enumerate(leads):
        doc: dict[str, Any] = {"date_created": f"2020-01-{n + 1:02d}T00:00:00+00:00", "contacts": []}
        if lead.get("name"):
            doc["name"] = lead["name"]
        if lead.get("company"):
            doc[close.company_cf] = lead["company"]
        for name, user, emails in lead.get("contacts", ()):
            contact: dict[str, Any] = {
                "name": name,
                "emails": [{"email": e, "type": "office"} for e in emails],
            }
            if user:
                contact[close.user_cf] = user
            doc["contacts"].append(contact)
        docs.append(doc)
    close.seed_leads(*docs)


@pytest.mark.parametrize("way", WAYS)
def test_m1_an_email_appended_by_one_person_is_how_a_later_anonymous_event_finds_them(
    close: CloseEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """u4's email is appended before the anonymous event looks that email up, so both contacts match."""
    seed(
        close,
        {"name": "Solo", "contacts": [("Dee", "u4", ["cy@y.example"])]},
        {"company": "co3", "contacts": [("X", None, ["eve@z.example"])]},
    )
    events = [
        {"type": "identify", "userId": "u4", "traits": {"email": "eve@z.example"}},
        {"type": "identify", "anonymousId": "anon-1", "traits": {"email": "eve@z.example", "name": "Cy"}},
    ]
    apply(way, close, tmp_path, monkeypatch, events)
    assert contacts(close) == rows(
        ("Solo", None, "Cy", None, "u4", ("cy@y.example", "eve@z.example")),
        (None, "co3", "Cy", None, None, ("eve@z.example",)),
    )


M2_EVENTS = [
    {"type": "identify", "userId": "u5", "traits": {"name": "Cy"}},
    {
        "type": "identify",
        "userId": "u5",
        "traits": {"email": "dee@y.example", "company": {"id": "co4"}, "title": "Dev"},
    },
]


@pytest.mark.parametrize("way", WAYS)
def test_m2_a_person_found_elsewhere_is_not_duplicated_into_their_company_when_duplicates_are_off(
    close: CloseEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """The company-less request comes first: it creates u5's own lead; the company's request then
    finds u5 outside Delta and is skipped."""
    seed(close, {"name": "Delta", "company": "co4"})
    apply(way, close, tmp_path, monkeypatch, M2_EVENTS, Flags(allow_creating_duplicate_contacts=False))
    assert contacts(close) == [(None, None, "Cy", None, "u5", ())]
    assert [lead.get("name") for lead in close.leads() if lead.get(close.company_cf) == "co4"] == ["Delta"]


@pytest.mark.parametrize("way", WAYS)
def test_m3_with_duplicates_allowed_the_person_gets_a_second_contact_under_their_company(
    close: CloseEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    seed(close, {"name": "Delta", "company": "co4"})
    apply(way, close, tmp_path, monkeypatch, M2_EVENTS)
    assert contacts(close) == rows(
        ("Delta", "co4", None, "Dev", "u5", ("dee@y.example",)),
        (None, None, "Cy", None, "u5", ()),
    )


@pytest.mark.parametrize("way", WAYS)
def test_contacts_created_in_one_batch_rank_oldest_in_input_order(
    close: CloseEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """Two visitors' contacts are created by unrelated groups, which run concurrently; a later event
    finds both by one email, and adopts the lead of the one created first."""
    events = [
        {"type": "identify", "anonymousId": "a1", "traits": {"email": "ann@x.example"}},
        {"type": "identify", "anonymousId": "a2", "traits": {"email": "bob@x.example"}},
        {"type": "identify", "userId": "u2", "traits": {"email": "bob@x.example"}},
        {"type": "identify", "userId": "u2", "traits": {"email": "ann@x.example"}},
        {
            "type": "identify",
            "anonymousId": "a3",
            "traits": {"email": "ann@x.example", "company": {"id": "co1"}},
        },
    ]
    apply(way, close, tmp_path, monkeypatch, events)
    assert contacts(close) == rows(
        (None, None, None, None, "u2", ("bob@x.example", "ann@x.example")),
        (None, "co1", None, None, None, ("ann@x.example",)),
    )


@pytest.mark.parametrize("way", WAYS)
def test_a_contact_without_user_id_or_email_is_created_again_by_each_identical_event(
    close: CloseEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """Nothing finds such a contact again, so repeating the event is not a no-op to suppress."""
    events = [
        {"type": "identify", "anonymousId": "a1", "traits": {"name": "Ann", "company": {"id": "co1"}}}
    ] * 2
    apply(way, close, tmp_path, monkeypatch, events)
    assert contacts(close) == [(None, "co1", "Ann", None, None, ())] * 2


@pytest.mark.parametrize("way", WAYS)
def test_values_a_flag_keeps_from_an_existing_contact_are_not_written_by_collapsing_into_its_creation(
    close: CloseEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """The first event creates the contact; the second may not update it, so its phone never lands."""
    events = [
        {"type": "identify", "userId": "u2", "traits": {"company": {"id": "co1"}}},
        {"type": "identify", "userId": "u2", "traits": {"phone": "+14155550100", "company": {"id": "co1"}}},
    ]
    apply(way, close, tmp_path, monkeypatch, events, Flags(allow_updating_existing_contacts=False))
    [contact] = close.sim.contacts()
    assert contact["phones"] == []


def test_another_persons_event_between_two_collapsed_events_is_not_reordered(
    close: CloseEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """u2 says Bob; an anonymous visitor with u2's email says Ann; u2 says nothing new. One at a
    time the contact ends as Ann; collapsed, u2's two events apply together after the visitor's."""
    seed(close, {"contacts": [(None, "u2", ["ann@x.example"])]})
    events = [
        {"type": "identify", "userId": "u2", "traits": {"name": "Bob"}},
        {"type": "identify", "anonymousId": "a1", "traits": {"email": "ann@x.example", "name": "Ann"}},
        {"type": "identify", "userId": "u2", "traits": {}},
    ]
    apply("job", close, tmp_path, monkeypatch, events)
    assert [c["name"] for c in close.sim.contacts()] == ["Ann"]
