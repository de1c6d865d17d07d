import httpx
import pytest

pytestmark = pytest.mark.integration


def test_missing_key_is_401_with_json_error(sim):
    r = httpx.get(sim.base_url + "me/")
    assert r.status_code == 401
    assert isinstance(r.json()["error"], str)


def test_wrong_key_is_401(sim):
    r = httpx.get(sim.base_url + "lead/", auth=("not_the_key", ""))
    assert r.status_code == 401
    assert "error" in r.json()


def test_me_returns_user_with_organizations(api):
    r = api.get("me/")
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("user_")
    assert body["organizations"] and body["organizations"][0]["id"].startswith("orga_")


def test_every_configured_key_is_accepted(sim):
    sim.configure(api_keys=["k1", "k2", "k3"])
    for key in ("k1", "k2", "k3"):
        assert httpx.get(sim.base_url + "me/", auth=(key, "")).status_code == 200
    assert httpx.get(sim.base_url + "me/", auth=("test_key", "")).status_code == 401
