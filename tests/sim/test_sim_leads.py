import re

import pytest

pytestmark = pytest.mark.integration

ID = re.compile(r"^lead_[A-Za-z0-9_-]{43}$")


def test_create_lead_with_nested_contacts_returns_contacts_and_ids(api):
    r = api.post(
        "lead/",
        json={
            "name": "Acme",
            "contacts": [
                {"name": "Ann", "emails": [{"email": "ann@acme.com", "type": "office"}]},
                {"name": "Bob", "phones": [{"phone": "(415) 555-0100"}]},
            ],
        },
    )
    assert r.status_code == 200
    lead = r.json()
    assert ID.match(lead["id"])
    assert [c["name"] for c in lead["contacts"]] == ["Ann", "Bob"]
    assert lead["contact_ids"] == [c["id"] for c in lead["contacts"]]
    assert all(c["id"].startswith("cont_") and c["lead_id"] == lead["id"] for c in lead["contacts"])
    bob = lead["contacts"][1]
    assert bob["phones"][0]["phone"] == "+14155550100"
    assert bob["phones"][0]["type"] == "office"
    assert bob["phones"][0]["phone_formatted"]
    fetched = api.get(f"lead/{lead['id']}/").json()
    assert fetched["contacts"] == lead["contacts"]


def test_dates_are_utc_microsecond_iso_and_strictly_increasing(api):
    first = api.post("lead/", json={"name": "one"}).json()
    second = api.post("lead/", json={"name": "two"}).json()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$", first["date_created"])
    assert first["date_created"] < second["date_created"]


def test_put_lead_is_partial_and_bumps_date_updated(api):
    lead = api.post("lead/", json={"name": "Acme", "description": "old", "url": "https://acme.com"}).json()
    r = api.put(f"lead/{lead['id']}/", json={"description": "new"})
    assert r.status_code == 200
    updated = r.json()
    assert (updated["name"], updated["description"], updated["url"]) == ("Acme", "new", "https://acme.com")
    assert updated["date_updated"] > lead["date_updated"]
    assert updated["date_created"] == lead["date_created"]


def test_put_lead_rejects_nested_contacts(api):
    lead = api.post("lead/", json={"name": "Acme", "contacts": [{"name": "Ann"}]}).json()
    r = api.put(f"lead/{lead['id']}/", json={"contacts": [{"name": "Eve"}]})
    assert r.status_code == 400
    assert "contacts" in r.json()["field-errors"]
    assert [c["name"] for c in api.get(f"lead/{lead['id']}/").json()["contacts"]] == ["Ann"]


def test_delete_lead_removes_it_and_its_contacts(api):
    lead = api.post("lead/", json={"name": "Acme", "contacts": [{"name": "Ann"}]}).json()
    assert api.delete(f"lead/{lead['id']}/").status_code == 200
    assert api.get(f"lead/{lead['id']}/").status_code == 404
    assert api.get(f"contact/{lead['contact_ids'][0]}/").status_code == 404


def test_missing_status_gets_org_default_and_unknown_status_is_400(api):
    statuses = api.get("status/lead/").json()["data"]
    assert len(statuses) >= 2 and all(s["id"].startswith("stat_") for s in statuses)
    lead = api.post("lead/", json={"name": "Acme"}).json()
    assert lead["status_id"] == statuses[0]["id"]
    assert lead["status_label"] == statuses[0]["label"]
    r = api.post("lead/", json={"name": "Bad", "status_id": "stat_doesnotexist"})
    assert r.status_code == 400 and "status_id" in r.json()["field-errors"]
    r = api.put(f"lead/{lead['id']}/", json={"status_id": statuses[1]["id"]})
    assert r.json()["status_label"] == statuses[1]["label"]
    assert api.put(f"lead/{lead['id']}/", json={"status_id": "stat_nope"}).status_code == 400


def test_lead_listing_paginates_with_skip_limit_and_has_more(api):
    ids = {api.post("lead/", json={"name": f"L{i}"}).json()["id"] for i in range(5)}
    page1 = api.get("lead/", params={"_limit": 2}).json()
    page2 = api.get("lead/", params={"_limit": 2, "_skip": 2}).json()
    page3 = api.get("lead/", params={"_limit": 2, "_skip": 4}).json()
    assert (page1["has_more"], page2["has_more"], page3["has_more"]) == (True, True, False)
    seen = [lead["id"] for page in (page1, page2, page3) for lead in page["data"]]
    assert len(seen) == 5 and set(seen) == ids


def test_lead_listing_caps_limit_at_100(sim, api):
    sim.seed({"leads": [{"name": f"L{i}"} for i in range(120)]})
    page = api.get("lead/", params={"_limit": 500}).json()
    assert len(page["data"]) == 100 and page["has_more"] is True
