import json

import pytest

from closesim import SimServer

pytestmark = pytest.mark.integration

SEED = {
    "custom_fields": {
        "lead": [{"id": "cf_company", "name": "Company ID", "type": "text"}],
        "contact": [{"id": "cf_user", "name": "User ID", "type": "text"}],
    },
    "statuses": [{"id": "stat_new", "label": "New"}, {"id": "stat_won", "label": "Won"}],
    "leads": [
        {
            "id": "lead_newer",
            "name": "Acme (dup)",
            "date_created": "2024-02-01T00:00:00Z",
            "custom.cf_company": "acme",
            "contacts": [{"id": "cont_dup2", "name": "Ann", "emails": [{"email": "ann@acme.com"}],
                          "date_created": "2024-02-01T00:00:01Z", "custom.cf_user": "u1"}],
        },
        {
            "id": "lead_older",
            "name": "Acme",
            "status_id": "stat_won",
            "date_created": "2024-01-01T00:00:00+00:00",
            "custom.cf_company": "acme",
            "contacts": [{"id": "cont_dup1", "name": "Ann", "emails": [{"email": "ANN@acme.com"}],
                          "date_created": "2024-01-01T00:00:01Z", "custom.cf_user": "u1"}],
        },
    ],
}


def test_seed_creates_preexisting_duplicates_with_given_ids_and_dates(sim, api):
    sim.seed(SEED)
    assert [s["id"] for s in api.get("status/lead/").json()["data"]] == ["stat_new", "stat_won"]
    older = api.get("lead/lead_older/").json()
    assert older["date_created"] == "2024-01-01T00:00:00.000000+00:00"
    assert older["status_label"] == "Won"
    assert api.get("lead/lead_newer/").json()["status_id"] == "stat_new"  # the first seeded status is the default
    assert [lead["id"] for lead in sim.leads()] == ["lead_older", "lead_newer"]
    query = {"type": "and", "queries": [
        {"type": "object_type", "object_type": "lead"},
        {"type": "field_condition", "field": {"type": "custom_field", "custom_field_id": "cf_company"},
         "condition": {"type": "text", "mode": "exact_value", "value": "acme"}}]}
    body = api.post("data/search/", json={"query": query, "sort": [
        {"direction": "asc", "field": {"type": "regular_field", "object_type": "lead", "field_name": "date_created"}}]})
    assert [d["id"] for d in body.json()["data"]] == ["lead_older", "lead_newer"]
    new = api.post("lead/", json={"name": "later"}).json()
    assert new["date_created"] > "2024-02-01"


def test_seed_rejects_unknown_custom_fields(sim):
    with pytest.raises(Exception, match="custom"):
        sim.seed({"leads": [{"name": "x", "custom.cf_missing": "v"}]})


def test_snapshot_round_trips_into_a_new_simulator(sim, api):
    sim.seed(SEED)
    api.post("contact/", json={"lead_id": "lead_older", "name": "Bob", "phones": [{"phone": "+44 20 7946 0958"}]})
    snapshot = json.loads(json.dumps(sim.snapshot()))
    assert set(snapshot) == {"custom_fields", "statuses", "leads"}
    with SimServer() as other:
        other.seed(snapshot)
        assert other.leads() == sim.leads()
        assert other.contacts() == sim.contacts()


def test_stats_count_requests_per_group_and_endpoint(sim, api):
    lead = api.post("lead/", json={"name": "x"}).json()
    api.get(f"lead/{lead['id']}/")
    api.get(f"lead/{lead['id']}/")
    api.put(f"lead/{lead['id']}/", json={"name": "y"})
    api.post("contact/", json={"lead_id": lead["id"], "name": "c"})
    api.post("data/search/", json={"query": {"type": "object_type", "object_type": "lead"}})
    stats = sim.stats()
    assert stats["by_endpoint"] == {
        "POST /lead/": 1, "GET /lead/{id}/": 2, "PUT /lead/{id}/": 1, "POST /contact/": 1, "POST /data/search/": 1,
    }
    assert stats["by_group"] == {"lead_write": 2, "read": 2, "contact_write": 1, "search": 1}
    assert stats["requests_total"] == 6
