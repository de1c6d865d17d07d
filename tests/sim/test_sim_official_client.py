"""Close's official Python client (closeio_api), which nobody here wrote, driven against the simulator."""

import time

import pytest
from closeio_api import APIError, Client, ValidationError

pytestmark = pytest.mark.integration


@pytest.fixture
def close(sim):
    client = Client(sim.api_key, max_retries=3)
    client.base_url = sim.base_url  # Client has no base-URL argument; API.base_url is what it requests against
    return client


def test_official_client_create_search_update(sim, close):
    cf = sim.create_custom_field("lead", "Company ID")
    lead = close.post("lead", {"name": "Acme", f"custom.{cf}": "acme-1",
                               "contacts": [{"name": "Ann", "emails": [{"email": "ann@acme.com"}]}]})
    assert lead["contacts"][0]["emails"][0]["email"] == "ann@acme.com"
    found = close.post("data/search", {
        "query": {"type": "and", "queries": [
            {"type": "object_type", "object_type": "lead"},
            {"type": "field_condition", "field": {"type": "custom_field", "custom_field_id": cf},
             "condition": {"type": "text", "mode": "exact_value", "value": "acme-1"}}]},
        "_fields": {"lead": ["name"]},
    })
    assert found["data"] == [{"__object_type": "lead", "id": lead["id"], "name": "Acme"}]
    close.put(f"lead/{lead['id']}", {"description": "updated"})
    assert close.get(f"lead/{lead['id']}")["description"] == "updated"
    assert close.get("me")["organizations"]


def test_official_client_sees_validation_errors(sim, close):
    with pytest.raises(ValidationError) as info:
        close.post("contact", {"name": "A", "emails": [{"email": "nope"}]})
    assert "emails" in info.value.field_errors
    with pytest.raises(APIError) as info:
        close.get("lead/lead_missing")
    assert info.value.response.status_code == 404


def test_official_client_waits_out_a_429_using_the_ratelimit_header(sim, close):
    sim.configure(limits_enabled=True, write_rate=2)
    started = time.monotonic()
    ids = [close.post("lead", {"name": f"n{i}"})["id"] for i in range(3)]
    assert len(set(ids)) == 3
    assert sim.stats()["rate_limited"] >= 1
    assert time.monotonic() - started >= 0.2  # it slept instead of failing
