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


ADMIN_ROUTES = [
    ("GET", "_sim/config", None),
    ("PATCH", "_sim/config", {"search_lag": 0.0}),
    ("GET", "_sim/stats", None),
    ("POST", "_sim/reset", None),
    ("POST", "_sim/seed", {"leads": []}),
    ("GET", "_sim/state", None),
    ("POST", "_sim/storm", {"seconds": 0}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_admin_routes_need_the_api_key(sim, method, path, body):
    sim.seed({"leads": [{"name": "Kept"}]})
    url = sim.root_url + path
    for auth in (None, ("not_the_key", "")):
        r = httpx.request(method, url, json=body, auth=auth)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        assert isinstance(r.json()["error"], str)
    assert [lead["name"] for lead in sim.leads()] == ["Kept"]  # nothing was changed without the key
    assert httpx.request(method, url, json=body, auth=(sim.api_key, "")).status_code == 200


def test_unknown_admin_routes_need_the_key_too(sim):
    assert httpx.get(sim.root_url + "_sim/nope").status_code == 401
    assert httpx.get(sim.root_url + "_sim/nope", auth=(sim.api_key, "")).status_code == 404
