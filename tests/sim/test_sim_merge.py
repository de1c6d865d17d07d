"""POST /lead/merge/ and DELETE /contact/{id}/ over real HTTP: effects, errors, the merge delay,
search (and its lag), rate-limit groups and injected faults."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from closesim import SimServer

pytestmark = pytest.mark.integration

HEADER = re.compile(r"^limit=(\d+)([,;]) remaining=(\d+)\2 reset=([\d.]+)$")
SEED = {
    "leads": [
        {"id": "lead_src", "name": "Source", "contacts": [{"id": "cont_s1", "name": "S1"}, {"id": "cont_s2", "name": "S2"}]},
        {"id": "lead_dst", "name": "Destination", "contacts": [{"id": "cont_d1", "name": "D1"}]},
        {"id": "lead_c", "name": "C"},
        {"id": "lead_d", "name": "D"},
    ]
}


def merge(api: httpx.Client, source: str, destination: str) -> httpx.Response:
    return api.post("lead/merge/", json={"source": source, "destination": destination})


def outcome(send: Any) -> int | str:
    """The status of a write that may have been answered with a dropped connection."""
    try:
        return int(send().status_code)
    except httpx.RemoteProtocolError:
        return "dropped"


def search_ids(api: httpx.Client, object_type: str, **extra: Any) -> list[str]:
    body = {"query": {"type": "object_type", "object_type": object_type}, "_limit": 200, **extra}
    r = api.post("data/search/", json=body)
    assert r.status_code == 200, r.text
    return sorted(d["id"] for d in r.json()["data"])


def contact_leads(api: httpx.Client) -> dict[str, str]:
    body = {"query": {"type": "object_type", "object_type": "contact"}, "_fields": {"contact": ["lead_id"]}}
    return {d["id"]: d["lead_id"] for d in api.post("data/search/", json=body).json()["data"]}


def ratelimit(response: httpx.Response) -> tuple[int, int]:
    m = HEADER.match(response.headers["ratelimit"])
    assert m, response.headers["ratelimit"]
    return int(m[1]), int(m[3])


# ------------------------------------------------------------------- merge


def test_merge_moves_contacts_fills_what_the_destination_lacks_and_deletes_the_source(sim, api):
    company = sim.create_custom_field("lead", "Company ID")
    plan = sim.create_custom_field("lead", "Plan")
    dest = api.post(
        "lead/", json={"name": "Acme", f"custom.{company}": "c1", "contacts": [{"name": "Dee"}]}
    ).json()
    src = api.post(
        "lead/",
        json={
            "name": "Acme (dup)",
            "description": "from the source",
            "url": "https://acme.example",
            f"custom.{company}": "c2",
            f"custom.{plan}": "pro",
            "contacts": [{"name": "Sam", "emails": [{"email": "sam@acme.example"}]}, {"name": "Sue"}],
        },
    ).json()

    r = merge(api, src["id"], dest["id"])
    assert r.status_code == 200 and r.json() == {"merge_status": "completed"}

    assert api.get(f"lead/{src['id']}/").status_code == 404
    merged = api.get(f"lead/{dest['id']}/").json()
    assert merged["contact_ids"] == dest["contact_ids"] + src["contact_ids"]
    assert {c["lead_id"] for c in merged["contacts"]} == {dest["id"]}
    assert (merged["name"], merged[f"custom.{company}"]) == ("Acme", "c1")  # the destination's own values win
    assert merged[f"custom.{plan}"] == "pro"  # values it lacked come from the source
    assert (merged["description"], merged["url"]) == ("from the source", "https://acme.example")
    assert merged["date_updated"] > dest["date_updated"]
    for contact_id in src["contact_ids"]:
        assert api.get(f"contact/{contact_id}/").json()["lead_id"] == dest["id"]
    assert api.get("contact/", params={"lead_id": src["id"]}).json()["data"] == []

    assert search_ids(api, "lead") == [dest["id"]]
    assert contact_leads(api) == {c: dest["id"] for c in merged["contact_ids"]}
    [record] = sim.merges()
    assert (record["source"], record["destination"], record["merge_status"]) == (src["id"], dest["id"], "completed")
    assert sim.stats()["by_endpoint"]["POST /lead/merge/"] == 1


def test_merge_of_a_missing_lead_is_404_like_get(sim, api):
    sim.seed(SEED)
    missing = api.get("lead/lead_missing/")
    assert missing.status_code == 404
    for source, destination in (("lead_missing", "lead_dst"), ("lead_src", "lead_missing")):
        r = merge(api, source, destination)
        assert r.status_code == 404
        assert set(r.json()) == set(missing.json()) == {"error"} and "lead_missing" in r.json()["error"]
    assert api.get("lead/lead_src/").json()["contact_ids"] == ["cont_s1", "cont_s2"]
    assert sim.merges() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"source": "lead_src", "destination": "lead_src"}, None),
        ({"destination": "lead_dst"}, "source"),
        ({"source": "lead_src"}, "destination"),
        ({"source": 5, "destination": "lead_dst"}, "source"),
        ({"source": "lead_src", "destination": ["lead_dst"]}, "destination"),
        ({"source": None, "destination": "lead_dst"}, "source"),
        (["lead_src", "lead_dst"], None),
    ],
    ids=["self", "no-source", "no-destination", "source-number", "destination-list", "source-null", "not-object"],
)
def test_bad_merge_bodies_are_400(sim, api, body, field):
    sim.seed(SEED)
    r = api.post("lead/merge/", json=body)
    assert r.status_code == 400
    errors = r.json()
    assert set(errors) == {"errors", "field-errors"}
    if field is None:
        assert errors["errors"] and errors["field-errors"] == {}
    else:
        assert set(errors["field-errors"]) == {field}
    assert api.get("lead/lead_src/").status_code == 200 and sim.merges() == []


def test_with_a_merge_delay_the_merge_is_in_progress_until_the_delay_has_passed(sim, api):
    sim.seed(SEED)
    sim.configure(merge_delay_seconds=0.4)
    r = merge(api, "lead_src", "lead_dst")
    assert r.status_code == 200 and r.json() == {"merge_status": "in_progress"}

    source = api.get("lead/lead_src/")
    assert source.status_code == 200 and source.json()["contact_ids"] == ["cont_s1", "cont_s2"]
    assert api.get("contact/cont_s1/").json()["lead_id"] == "lead_src"
    assert api.get("lead/lead_dst/").json()["contact_ids"] == ["cont_d1"]
    assert search_ids(api, "lead") == ["lead_c", "lead_d", "lead_dst", "lead_src"]
    assert [m["merge_status"] for m in sim.merges()] == ["in_progress"]

    time.sleep(0.45)
    assert api.get("lead/lead_src/").status_code == 404
    assert api.get("lead/lead_dst/").json()["contact_ids"] == ["cont_d1", "cont_s1", "cont_s2"]
    assert api.get("contact/cont_s1/").json()["lead_id"] == "lead_dst"
    assert search_ids(api, "lead") == ["lead_c", "lead_d", "lead_dst"]
    [record] = sim.merges()
    assert record["merge_status"] == "completed" and record["date_completed"] > record["date_created"]


def test_a_delayed_merge_whose_source_was_deleted_meanwhile_fails_and_changes_nothing(sim, api):
    sim.seed(SEED)
    sim.configure(merge_delay_seconds=0.2)
    assert merge(api, "lead_src", "lead_dst").json() == {"merge_status": "in_progress"}
    assert api.delete("lead/lead_src/").status_code == 200
    time.sleep(0.25)
    assert api.get("lead/lead_dst/").json()["contact_ids"] == ["cont_d1"]
    assert [m["merge_status"] for m in sim.merges()] == ["failed"]


def test_merge_delay_is_a_knob_of_the_admin_config_route(sim):
    sim.seed(SEED)
    with httpx.Client(base_url=sim.root_url + "_sim/", auth=(sim.api_key, ""), timeout=10) as admin:
        r = admin.patch("config", json={"merge_delay_seconds": 0.2})
        assert r.status_code == 200 and r.json()["merge_delay_seconds"] == 0.2
        assert sim.config.merge_delay_seconds == 0.2
        assert admin.patch("config", json={"merge_delay_seconds": -1}).status_code == 400
        api = httpx.Client(base_url=sim.base_url, auth=(sim.api_key, ""), timeout=10)
        with api:
            assert merge(api, "lead_src", "lead_dst").json() == {"merge_status": "in_progress"}
        merges = admin.get("merges").json()["data"]
        assert [(m["source"], m["merge_status"]) for m in merges] == [("lead_src", "in_progress")]
        assert httpx.get(sim.root_url + "_sim/merges").status_code == 401


def test_search_sees_a_merge_and_a_contact_delete_search_lag_after_they_take_effect(sim, api):
    sim.seed(SEED)
    sim.configure(search_lag=0.6, merge_delay_seconds=0.3)
    assert merge(api, "lead_src", "lead_dst").json() == {"merge_status": "in_progress"}
    assert api.delete("contact/cont_d1/").status_code == 200
    time.sleep(0.4)  # the merge has taken effect; search will see it at 0.9 s
    assert api.get("lead/lead_src/").status_code == 404
    assert "lead_src" in search_ids(api, "lead")
    assert contact_leads(api) == {"cont_d1": "lead_dst", "cont_s1": "lead_src", "cont_s2": "lead_src"}
    time.sleep(0.6)
    assert search_ids(api, "lead") == ["lead_c", "lead_d", "lead_dst"]
    assert contact_leads(api) == {"cont_s1": "lead_dst", "cont_s2": "lead_dst"}


# ---------------------------------------------------------- delete contact


def test_delete_contact_then_404_and_gone_from_its_lead_and_search(sim, api):
    lead = api.post(
        "lead/",
        json={"name": "Acme", "contacts": [{"name": "A", "emails": [{"email": "a@acme.example"}]}, {"name": "B"}]},
    ).json()
    gone, kept = lead["contact_ids"]
    r = api.delete(f"contact/{gone}/")
    assert r.status_code == 200 and r.json() == {}
    again = api.delete(f"contact/{gone}/")
    assert again.status_code == 404 and set(again.json()) == {"error"} and gone in again.json()["error"]
    assert api.get(f"contact/{gone}/").status_code == 404
    assert api.delete("contact/cont_missing/").status_code == 404
    assert api.get(f"lead/{lead['id']}/").json()["contact_ids"] == [kept]
    assert search_ids(api, "contact") == [kept]
    by_email = {
        "type": "has_related",
        "this_object_type": "contact",
        "related_object_type": "contact_email",
        "related_query": {
            "type": "field_condition",
            "field": {"type": "regular_field", "object_type": "contact_email", "field_name": "email"},
            "condition": {"type": "term", "values": ["a@acme.example"]},
        },
    }
    query = {"type": "and", "queries": [{"type": "object_type", "object_type": "contact"}, by_email]}
    assert api.post("data/search/", json={"query": query}).json()["data"] == []
    stats = sim.stats()
    assert stats["by_endpoint"]["DELETE /contact/{id}/"] == 3
    assert stats["contacts"] == 1


# ------------------------------------------------------- limits and faults


def test_merge_counts_in_lead_write_and_contact_delete_in_contact_write(sim, api):
    sim.seed(SEED)
    # 3 per 10 s window: nothing resets during the test.
    sim.configure(limits_enabled=True, write_rate=3, time_scale=0.1)
    first = merge(api, "lead_src", "lead_dst")
    assert first.status_code == 200 and ratelimit(first) == (3, 2)
    put = api.put("lead/lead_c/", json={"name": "C2"})
    assert put.status_code == 200 and ratelimit(put) == (3, 1)
    second = merge(api, "lead_c", "lead_d")
    assert second.status_code == 200 and ratelimit(second) == (3, 0)
    throttled = merge(api, "lead_dst", "lead_d")
    assert throttled.status_code == 429 and float(throttled.headers["retry-after"]) > 0
    assert throttled.json()["rate_limit_type"] == "lead_write"
    assert api.get("lead/lead_dst/").status_code == 200  # the throttled merge did nothing

    deleted = api.delete("contact/cont_s1/")  # its own group, with its own budget
    assert deleted.status_code == 200 and ratelimit(deleted) == (3, 2)

    stats = sim.stats()
    assert stats["by_group"] == {"lead_write": 4, "contact_write": 1, "read": 1}
    assert stats["by_endpoint"]["POST /lead/merge/"] == 3
    assert stats["by_endpoint"]["DELETE /contact/{id}/"] == 1
    assert stats["429_by_group"] == {"lead_write": 1}


def test_a_5xx_fault_comes_before_the_merge_or_delete_and_changes_nothing(sim, api):
    sim.seed(SEED)
    sim.configure(fault_rate=1.0)
    assert merge(api, "lead_src", "lead_dst").status_code in (500, 502, 503)
    assert api.delete("contact/cont_d1/").status_code in (500, 502, 503)
    sim.configure(fault_rate=0.0)
    assert api.get("lead/lead_src/").json()["contact_ids"] == ["cont_s1", "cont_s2"]
    assert api.get("contact/cont_d1/").status_code == 200
    assert sim.merges() == [] and sim.stats()["faults_injected"] == 2


@pytest.mark.parametrize("delay", [0.0, 0.2], ids=["immediate", "delayed"])
def test_an_ambiguous_merge_or_delete_was_applied_exactly_once(sim: SimServer, api, delay):
    sim.seed(SEED)
    sim.configure(ambiguous_rate=1.0, random_seed=3, merge_delay_seconds=delay)
    assert outcome(lambda: merge(api, "lead_src", "lead_dst")) in (502, 504, "dropped")
    assert outcome(lambda: api.delete("contact/cont_d1/")) in (502, 504, "dropped")
    sim.configure(ambiguous_rate=0.0)
    time.sleep(delay + 0.05)

    assert api.get("lead/lead_src/").status_code == 404
    assert api.get("lead/lead_dst/").json()["contact_ids"] == ["cont_s1", "cont_s2"]
    assert [m["merge_status"] for m in sim.merges()] == ["completed"]
    # A client that retries finds the work done: the source and the contact are gone.
    assert merge(api, "lead_src", "lead_dst").status_code == 404
    assert api.delete("contact/cont_d1/").status_code == 404
    assert len(sim.merges()) == 1 and sim.stats()["ambiguous_injected"] == 2
