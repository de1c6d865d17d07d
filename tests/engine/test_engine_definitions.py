"""Custom field definitions are read as Close holds them: shared fields (associated with leads or
contacts) count as much as regular ones, and an organisation with more fields than one page of a
definition list holds loses none of them."""

from __future__ import annotations

import asyncio

import pytest

from closecrm.api.client import CloseClient
from closecrm.engine.settings_check import check_settings
from closecrm.model import Settings, UpsertRequest
from closesim import SimServer
from tests.engine.conftest import CloseEnv

pytestmark = pytest.mark.integration


def checked(sim: SimServer, settings: Settings) -> dict[str, set[str]]:
    async def go() -> dict[str, set[str]]:
        async with CloseClient(sim.base_url, sim.api_key) as client:
            return await check_settings(client, settings)

    return asyncio.run(go())


def test_shared_fields_serve_as_the_id_fields_and_as_mapped_fields(close: CloseEnv) -> None:
    sim = close.sim
    sim.reset()
    company = sim.create_shared_custom_field("Company ID", associations=("lead",))
    user = sim.create_shared_custom_field("User ID", associations=("contact",))
    plan = sim.create_shared_custom_field("Plan", associations=("lead", "contact"))
    close.settings = Settings(company, user)
    found = checked(sim, close.settings)
    assert {company, plan} <= found["lead"] and {user, plan} <= found["contact"]

    req = UpsertRequest(
        lead_company_id="acme",
        lead_custom_fields={plan: "pro"},
        contact_user_id="u1",
        contact_custom_fields={plan: "trial"},
    )
    first, second = close.batch([req])[0], close.batch([req])[0]
    # Found again by the shared id fields, and the shared values read back: nothing is re-sent.
    assert (first.label, second.label) == ("created", "unchanged"), (first, second)
    [lead] = close.leads()
    assert lead[f"custom.{company}"] == "acme" and lead[f"custom.{plan}"] == "pro"
    assert lead["contacts"][0][f"custom.{user}"] == "u1" and lead["contacts"][0][f"custom.{plan}"] == "trial"


def test_an_organisation_with_more_fields_than_a_page_loses_none(close: CloseEnv) -> None:
    sim = close.sim
    sim.reset()
    for i in range(120):
        sim.create_custom_field("lead", f"Filler {i:03d}")
    company = sim.create_custom_field("lead", "Company ID")
    extra = sim.create_custom_field("lead", "Region")
    user = sim.create_custom_field("contact", "User ID")
    close.settings = Settings(company, user)
    assert {company, extra} <= checked(sim, close.settings)["lead"]
    req = UpsertRequest(lead_company_id="acme", lead_custom_fields={extra: "EU"}, contact_user_id="u1")
    first, second = close.batch([req])[0], close.batch([req])[0]
    assert (first.label, second.label) == ("created", "unchanged"), (first, second)
