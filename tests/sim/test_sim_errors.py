import httpx
import pytest

pytestmark = pytest.mark.integration


def test_unknown_record_is_404_with_error(api):
    r = api.get("lead/lead_doesnotexist/")
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    assert api.put("contact/cont_nope/", json={"name": "x"}).status_code == 404


def test_unknown_path_and_missing_trailing_slash_are_404_json(api):
    assert api.get("nothing/here/").json()["error"]
    r = api.get("lead")
    assert r.status_code == 404 and "slash" in r.json()["error"]


def test_wrong_method_on_known_path_is_405_json(api):
    r = api.patch("lead/", json={})
    assert r.status_code == 405 and "error" in r.json()
    assert api.delete("data/search/").status_code == 405


def test_post_and_put_without_json_content_type_are_415(api):
    r = api.post("lead/", content=b'{"name": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "error" in r.json()
    r = api.post("data/search/", data={"query": "x"})
    assert r.status_code == 415
    assert api.get("lead/").json()["data"] == []


def test_malformed_json_and_non_object_bodies_are_400(api):
    r = api.post("lead/", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"]
    assert api.post("lead/", json=["a list"]).status_code == 400


def test_validation_error_shape(api):
    r = api.post("lead/", json={"name": 5})
    assert r.status_code == 400
    body = r.json()
    assert isinstance(body["errors"], list) and body["field-errors"] == {"name": "Not a valid string."}


def test_admin_endpoints_steer_the_sim(sim):
    with httpx.Client(base_url=sim.root_url + "_sim/", auth=(sim.api_key, ""), timeout=10) as admin:
        r = admin.patch("config", json={"search_lag": 0.5, "fault_rate": 0.0})
        assert r.status_code == 200 and sim.config.search_lag == 0.5
        assert admin.patch("config", json={"no_such_knob": 1}).status_code == 400
        assert admin.patch("config", json={"fault_rate": 2}).status_code == 400
        assert "test_key" not in admin.get("config").text
        seed = {"leads": [{"name": "Seeded", "contacts": [{"name": "C"}]}]}
        assert admin.post("seed", json=seed).json()["leads"] == 1
        state = admin.get("state").json()
        assert [lead["name"] for lead in state["leads"]] == ["Seeded"]
        httpx.get(sim.base_url + "lead/", auth=(sim.api_key, ""))
        stats = admin.get("stats").json()
        assert stats["by_endpoint"] == {"GET /lead/": 1} and stats["leads"] == 1
        assert admin.post("storm", json={"seconds": 0.2}).status_code == 200
        assert httpx.get(sim.base_url + "me/", auth=(sim.api_key, "")).status_code == 429
        admin.post("reset")
        assert sim.leads() == [] and sim.stats()["requests_total"] == 0
