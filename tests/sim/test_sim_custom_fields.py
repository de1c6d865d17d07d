import pytest

pytestmark = pytest.mark.integration


def test_custom_field_definitions_are_listed_and_fetchable(sim, api):
    cf = sim.create_custom_field("contact", "User ID")
    listed = api.get("custom_field/contact/").json()["data"]
    assert [(f["id"], f["name"], f["type"]) for f in listed] == [(cf, "User ID", "text")]
    assert api.get(f"custom_field/contact/{cf}/").json()["name"] == "User ID"
    assert api.get("custom_field/lead/").json()["data"] == []


def test_custom_field_can_be_created_by_post(api):
    r = api.post("custom_field/lead/", json={"name": "Plan", "type": "choices", "choices": ["free", "pro"]})
    assert r.status_code == 200 and r.json()["id"].startswith("cf_")
    assert api.post("custom_field/lead/", json={"name": "Bad", "type": "blob"}).status_code == 400


def test_custom_values_are_written_and_read_as_top_level_keys(sim, api):
    cf = sim.create_custom_field("lead", "Company ID")
    lead = api.post("lead/", json={"name": "Acme", f"custom.{cf}": "c-1"}).json()
    assert lead[f"custom.{cf}"] == "c-1"
    api.put(f"lead/{lead['id']}/", json={f"custom.{cf}": "c-2"})
    assert api.get(f"lead/{lead['id']}/").json()[f"custom.{cf}"] == "c-2"
    api.put(f"lead/{lead['id']}/", json={f"custom.{cf}": None})
    assert f"custom.{cf}" not in api.get(f"lead/{lead['id']}/").json()


def test_unknown_custom_field_id_is_400(sim, api):
    lead_cf = sim.create_custom_field("lead", "Company ID")
    r = api.post("lead/", json={"name": "Acme", "custom.cf_unknown": "x"})
    assert r.status_code == 400 and "custom.cf_unknown" in r.json()["field-errors"]
    # A lead field is unknown on a contact.
    r = api.post("contact/", json={"name": "A", f"custom.{lead_cf}": "x"})
    assert r.status_code == 400


def test_wrong_custom_value_types_are_400(sim, api):
    text = sim.create_custom_field("contact", "User ID", "text")
    number = sim.create_custom_field("contact", "Score", "number")
    choices = sim.create_custom_field("contact", "Tier", "choices", choices=["a", "b"])
    for bad in ({f"custom.{text}": {"x": 1}}, {f"custom.{text}": ["x"]}, {f"custom.{number}": "many"},
                {f"custom.{choices}": "z"}):
        r = api.post("contact/", json={"name": "A", **bad})
        assert r.status_code == 400, bad
        assert list(r.json()["field-errors"]) == list(bad)
    ok = api.post("contact/", json={"name": "A", f"custom.{number}": "12", f"custom.{text}": 7}).json()
    assert ok[f"custom.{number}"] == 12 and ok[f"custom.{text}"] == "7"
