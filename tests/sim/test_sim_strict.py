"""The strict simulator: it answers what the job's requests need (docs/DESIGN.md, "Requests the job
sends") and refuses, with a 400 in Close's error shape, what no Close document or public code shows."""

from __future__ import annotations

import time

import pytest

from tests.sim.test_sim_search import email_related

pytestmark = pytest.mark.integration

CONTACTS = {"type": "object_type", "object_type": "contact"}
LEADS = {"type": "object_type", "object_type": "lead"}


def search(api, **body):
    return api.post("data/search/", json=body)


def refused(response, key):
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"errors", "field-errors"} and any(key in k for k in body["field-errors"]), body
    return body


@pytest.mark.parametrize("term_case", ["sensitive", "insensitive"])
def test_exact_value_finds_an_email_in_any_case_and_term_follows_the_switch(sim, api, term_case):
    sim.configure(term_case=term_case)
    kate = api.post("contact/", json={"name": "Kate", "emails": [{"email": "Kate@Example.COM"}]}).json()
    exact = {"type": "text", "mode": "exact_value", "value": "kate@example.com"}
    body = search(api, query={"type": "and", "queries": [CONTACTS, email_related(exact)]}).json()
    assert [d["id"] for d in body["data"]] == [kate["id"]]
    term = {"type": "term", "values": ["kate@example.com"]}
    found = search(api, query={"type": "and", "queries": [CONTACTS, email_related(term)]}).json()["data"]
    assert [d["id"] for d in found] == ([kate["id"]] if term_case == "insensitive" else [])


def test_unknown_modes_sorts_and_long_field_lists_are_refused(sim, api):
    odd_mode = {"type": "text", "mode": "prefix", "value": "k"}
    refused(search(api, query={"type": "and", "queries": [CONTACTS, email_related(odd_mode)]}), "condition")
    by_id = [{"direction": "asc", "field": {"type": "regular_field", "object_type": "lead", "field_name": "id"}}]
    refused(search(api, query=LEADS, sort=by_id), "sort")
    refused(search(api, query=LEADS, _limit=201), "_limit")
    sim.configure(search_fields_max=3)
    assert search(api, query=LEADS, _fields={"lead": ["id", "name", "date_created"]}).status_code == 200
    body = refused(search(api, query=LEADS, _fields={"lead": ["id", "name", "date_created", "date_updated"]}), "_fields")
    assert "List is too long" in str(body)


def test_a_cursor_expires_and_a_walk_ends_at_its_cap(sim, api):
    for i in range(7):
        api.post("lead/", json={"name": f"L{i}"})
    sim.configure(cursor_max_results=5)
    seen, cursor = [], None
    while True:
        body = search(api, query=LEADS, _limit=2, cursor=cursor).json()
        seen += body["data"]
        cursor = body["cursor"]
        if not cursor:
            break
    assert len(seen) == 5  # the walk ended at the cap, 2 records short
    sim.configure(cursor_ttl_seconds=0.2)
    cursor = search(api, query=LEADS, _limit=2).json()["cursor"]
    time.sleep(0.3)
    refused(search(api, query=LEADS, _limit=2, cursor=cursor), "cursor")


def test_schema_lists_regular_and_shared_fields_and_lists_page(sim, api):
    for i in range(105):
        sim.create_custom_field("lead", f"F{i:03d}")
    shared = sim.create_shared_custom_field("Region", associations=("lead",), accepts_multiple_values=True)
    first = api.get("custom_field/lead/").json()
    assert len(first["data"]) == 100 and first["has_more"] is True
    rest = api.get("custom_field/lead/", params={"_skip": 100}).json()
    assert len(rest["data"]) == 5 and rest["has_more"] is False
    schema = api.get("custom_field_schema/lead/").json()["fields"]
    assert len(schema) == 106 and schema[-1]["id"] == shared and schema[-1]["is_shared"] is True
    assert schema[-1]["accepts_multiple_values"] is True
    assert shared not in {f["id"] for f in api.get("custom_field_schema/contact/").json()["fields"]}
    api.post(f"custom_field/shared/{shared}/association/", json={"object_type": "contact"})
    assert shared in {f["id"] for f in api.get("custom_field_schema/contact/").json()["fields"]}
    lead = api.post("lead/", json={f"custom.{shared}": ["EU", "US"], "contacts": [{f"custom.{shared}": "x"}]})
    assert lead.status_code == 200 and lead.json()[f"custom.{shared}"] == ["EU", "US"]
    old_name = api.post("custom_field/lead/", json={"name": "Tags", "accepts_multiple": True})
    assert old_name.status_code == 400 and "accepts_multiple_values" in old_name.text


def test_a_slow_merge_shows_in_progress_on_the_destinations_lead_merge_activity(sim, api):
    sim.configure(merge_delay_seconds=0.3)
    src, dest = (api.post("lead/", json={"name": n}).json()["id"] for n in ("S", "D"))
    assert api.post("lead/merge/", json={"source": src, "destination": dest}).json() == {"merge_status": "in_progress"}
    assert api.get(f"lead/{src}/").status_code == 200
    [activity] = api.get("activity/lead_merge/", params={"lead_id": dest}).json()["data"]
    assert (activity["source_lead_id"], activity["merge_status"]) == (src, "in_progress")
    time.sleep(0.35)
    [activity] = api.get("activity/lead_merge/", params={"lead_id": dest}).json()["data"]
    assert activity["merge_status"] == "completed" and api.get(f"lead/{src}/").status_code == 404
