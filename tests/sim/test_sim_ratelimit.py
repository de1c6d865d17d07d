import re
import time

import httpx
import pytest

pytestmark = pytest.mark.integration

HEADER = re.compile(r"^limit=(\d+)([,;]) remaining=(\d+)\2 reset=([\d.]+)$")


def parse(response):
    m = HEADER.match(response.headers["ratelimit"])
    assert m, response.headers["ratelimit"]
    return int(m[1]), m[2], int(m[3]), float(m[4])


@pytest.mark.parametrize("separator", [",", ";"])
def test_headers_count_down_then_429_with_retry_after(sim, api, separator):
    # 5 per window of 10 s: nothing resets during the test.
    sim.configure(limits_enabled=True, write_rate=5, time_scale=0.1, ratelimit_separator=separator)
    remaining = []
    for _ in range(5):
        r = api.get("me/")
        assert r.status_code == 200
        limit, sep, left, reset = parse(r)
        assert (limit, sep) == (5, separator) and 0 < reset <= 10
        remaining.append(left)
    assert remaining == [4, 3, 2, 1, 0]
    r = api.get("me/")
    assert r.status_code == 429
    assert parse(r)[2] == 0
    retry_after = float(r.headers["retry-after"])
    assert 0 < retry_after <= 10
    body = r.json()
    assert "API limit exceeded" in body["error"] and 0 < body["rate_reset"] <= 10
    assert sim.stats()["rate_limited"] == 1
    assert sim.stats()["429_by_group"] == {"read": 1}


def test_at_time_scale_one_reset_and_retry_after_are_whole_seconds(sim, api):
    sim.configure(limits_enabled=True, write_rate=2)
    api.get("me/")
    api.get("me/")
    r = api.get("me/")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.headers["ratelimit"].endswith("reset=1")


def test_groups_are_limited_separately_and_search_harder(sim, api):
    sim.configure(limits_enabled=True, time_scale=0.1)
    query = {"query": {"type": "object_type", "object_type": "lead"}}
    statuses = [api.post("data/search/", json=query).status_code for _ in range(17)]
    assert statuses == [200] * 16 + [429]
    assert parse(api.get("me/"))[0] == 40  # reads still have their own, larger budget
    assert api.post("lead/", json={"name": "x"}).status_code == 200


def test_time_scale_shrinks_the_window(sim, api):
    sim.configure(limits_enabled=True, write_rate=5, time_scale=20)  # 5 per 50 ms
    codes = [api.get("me/").status_code for _ in range(6)]
    assert 429 in codes
    r = next(r for r in (api.get("me/") for _ in range(20)) if r.status_code == 429)
    time.sleep(float(r.headers["retry-after"]))
    assert api.get("me/").status_code == 200


def test_organisation_limit_is_three_times_the_key_limit_across_keys(sim):
    sim.configure(api_keys=["k1", "k2", "k3", "k4"], limits_enabled=True, write_rate=5, time_scale=0.1)

    def get(key):
        return httpx.get(sim.base_url + "me/", auth=(key, ""))

    for key in ("k1", "k2", "k3"):
        assert [get(key).status_code for _ in range(5)] == [200] * 5
    r = get("k4")  # k4's own budget is untouched, but the organisation's 15 are spent
    assert r.status_code == 429 and "retry-after" in r.headers
    assert get("k1").status_code == 429


def test_per_key_limit_leaves_other_keys_alone(sim):
    sim.configure(api_keys=["k1", "k2"], limits_enabled=True, write_rate=5, time_scale=0.1)
    assert [httpx.get(sim.base_url + "me/", auth=("k1", "")).status_code for _ in range(6)][-1] == 429
    assert httpx.get(sim.base_url + "me/", auth=("k2", "")).status_code == 200


def test_disabled_limits_never_429_but_still_send_the_header(sim, api):
    sim.configure(write_rate=1)
    responses = [api.get("me/") for _ in range(30)]
    assert {r.status_code for r in responses} == {200}
    assert all("ratelimit" in r.headers for r in responses)


def test_storm_429s_everything_for_its_duration(sim, api):
    sim.start_storm(0.3)
    r = api.get("me/")
    assert r.status_code == 429 and float(r.headers["retry-after"]) <= 1
    assert api.post("lead/", json={"name": "x"}).status_code == 429
    time.sleep(0.35)
    assert api.get("me/").status_code == 200
    assert sim.leads() == []
    assert sim.stats()["storm_429"] == 2


def test_storm_rate_starts_storms_at_random(sim, api):
    sim.configure(storm_rate=1.0, storm_seconds=0.2, random_seed=1)
    assert api.get("me/").status_code == 429
    sim.configure(storm_rate=0.0)
    time.sleep(0.25)
    assert api.get("me/").status_code == 200


def test_a_foreign_grouping_shares_one_budget_across_endpoints_with_its_own_windows(sim, api):
    """rate_groups="foreign": lead and contact writes count against one budget; /me/ has an 8 s window."""
    sim.configure(limits_enabled=True, rate_groups="foreign")
    lead = api.post("lead/", json={"name": "a"})
    contact = api.post("contact/", json={"lead_id": lead.json()["id"], "name": "b"})
    assert parse(lead)[0] == parse(contact)[0] == 120
    assert parse(contact)[2] == parse(lead)[2] - 1  # one counter behind both endpoints
    me = api.get("me/")
    assert parse(me)[0] == 80 and parse(me)[3] == 8
    search = api.post("data/search/", json={"query": {"type": "object_type", "object_type": "lead"}})
    assert parse(search)[:1] == (16,) and parse(search)[3] == 1
    assert sim.stats()["by_group"] == {"writes": 2, "account": 1, "search": 1}


def test_a_custom_grouping_is_checked_and_applied(sim, api):
    with pytest.raises(ValueError, match="rate_groups"):
        sim.configure(rate_groups="nope")
    with pytest.raises(ValueError, match="limit"):
        sim.configure(rate_groups=[{"name": "g", "endpoints": ["GET /me/"], "limit": 0, "window": 1}])
    sim.configure(
        limits_enabled=True,
        rate_groups=[{"name": "me", "endpoints": ["GET /me/"], "limit": 2, "window": 5}],
    )
    assert [api.get("me/").status_code for _ in range(3)] == [200, 200, 429]
    assert api.get("lead/").status_code == 200  # no rule matches: "other", at write_rate
    assert sim.stats()["by_group"] == {"me": 3, "other": 1}
