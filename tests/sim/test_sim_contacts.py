import pytest

pytestmark = pytest.mark.integration


def test_post_contact_without_lead_id_creates_lead_named_after_it(api):
    r = api.post("contact/", json={"name": "Solo Person", "emails": [{"email": "solo@x.com"}]})
    assert r.status_code == 200
    contact = r.json()
    lead = api.get(f"lead/{contact['lead_id']}/").json()
    assert lead["name"] == "Solo Person"
    assert lead["contact_ids"] == [contact["id"]]


def test_post_contact_with_unknown_lead_id_is_400(api):
    r = api.post("contact/", json={"name": "X", "lead_id": "lead_nope"})
    assert r.status_code == 400 and "lead_id" in r.json()["field-errors"]


def test_post_contact_joins_existing_lead(api):
    lead = api.post("lead/", json={"name": "Acme"}).json()
    contact = api.post("contact/", json={"lead_id": lead["id"], "name": "Ann"}).json()
    assert api.get(f"lead/{lead['id']}/").json()["contact_ids"] == [contact["id"]]


def test_put_contact_replaces_lists_and_keeps_other_fields(api):
    contact = api.post(
        "contact/",
        json={
            "name": "Ann",
            "title": "CEO",
            "emails": [{"email": "a@x.com", "type": "office"}, {"email": "b@x.com", "type": "home"}],
            "phones": [{"phone": "+14155550100"}],
        },
    ).json()
    r = api.put(f"contact/{contact['id']}/", json={"emails": [{"email": "c@x.com"}]})
    assert r.status_code == 200
    updated = api.get(f"contact/{contact['id']}/").json()
    assert updated["emails"] == [{"email": "c@x.com", "type": "office"}]
    assert updated["phones"] == contact["phones"]
    assert (updated["name"], updated["title"]) == ("Ann", "CEO")


def test_invalid_email_and_phone_are_400_field_errors(api):
    r = api.post("contact/", json={"name": "A", "emails": [{"email": "not-an-email"}]})
    assert r.status_code == 400 and "emails" in r.json()["field-errors"]
    r = api.post("contact/", json={"name": "A", "phones": [{"phone": "hello"}]})
    assert r.status_code == 400 and "phones" in r.json()["field-errors"]
    assert api.get("contact/").json()["data"] == []


def test_contact_listing_by_lead_paginates(api):
    lead = api.post("lead/", json={"name": "Acme", "contacts": [{"name": f"C{i}"} for i in range(3)]}).json()
    api.post("lead/", json={"name": "Other", "contacts": [{"name": "Z"}]})
    first = api.get("contact/", params={"lead_id": lead["id"], "_limit": 2}).json()
    rest = api.get("contact/", params={"lead_id": lead["id"], "_limit": 2, "_skip": 2}).json()
    assert first["has_more"] is True and rest["has_more"] is False
    assert [c["name"] for c in first["data"] + rest["data"]] == ["C0", "C1", "C2"]


def test_delete_contact_detaches_it_from_lead(api):
    lead = api.post("lead/", json={"name": "Acme", "contacts": [{"name": "A"}, {"name": "B"}]}).json()
    assert api.delete(f"contact/{lead['contact_ids'][0]}/").status_code == 200
    assert api.get(f"lead/{lead['id']}/").json()["contact_ids"] == lead["contact_ids"][1:]
