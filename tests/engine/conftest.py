"""Fixtures for engine tests: a clean simulator with the two lookup custom fields, and sync runners."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from closecrm.api.client import CloseClient
from closecrm.engine import UpsertEngine
from closecrm.events.normalize import email_key, phone_key, url_key
from closecrm.model import Outcome, Settings, UpsertRequest
from closesim import SimServer

T = TypeVar("T")

# Limits are off in `sim`, but its header still announces them; a large time scale makes the
# announced budget so big that pacing never slows a functional test down.
FAST = {"time_scale": 200.0}


@dataclass
class CloseEnv:
    sim: SimServer
    settings: Settings

    def run(self, fn: Callable[[UpsertEngine], Awaitable[T]], **engine_kw: Any) -> T:
        client_kw = engine_kw.pop("client_kw", {})

        async def main() -> T:
            async with CloseClient(self.sim.base_url, self.sim.api_key, **client_kw) as client:
                return await fn(UpsertEngine(client, self.settings, **engine_kw))

        return asyncio.run(main())

    def one(self, *reqs: UpsertRequest, dry_run: bool = False, **engine_kw: Any) -> list[Outcome]:
        async def go(engine: UpsertEngine) -> list[Outcome]:
            return [await engine.upsert_one(r, dry_run=dry_run) for r in reqs]

        return self.run(go, **engine_kw)

    def batch(self, reqs: Sequence[UpsertRequest], **engine_kw: Any) -> list[Outcome]:
        async def go(engine: UpsertEngine) -> list[Outcome]:
            return await engine.upsert_batch(reqs)

        return self.run(go, **engine_kw)

    def fresh_org(self) -> None:
        """Empty the simulator and recreate the two lookup custom fields (new ids, same names)."""
        self.sim.reset()
        self.sim.configure(**FAST)
        company_cf = self.sim.create_custom_field("lead", "Company ID")
        user_cf = self.sim.create_custom_field("contact", "User ID")
        self.settings = Settings(company_cf, user_cf, self.settings.default_lead_status_id)

    # -------------------------------------------------------------- state

    @property
    def company_cf(self) -> str:
        return "custom." + self.settings.lead_custom_field_id_for_company_id

    @property
    def user_cf(self) -> str:
        return "custom." + self.settings.contact_custom_field_id_for_user_id

    def leads(self) -> list[dict[str, Any]]:
        return self.sim.leads()

    def leads_of(self, company_id: str) -> list[dict[str, Any]]:
        return [lead for lead in self.sim.leads() if lead.get(self.company_cf) == company_id]

    def contacts_with_user(self, user_id: str) -> list[dict[str, Any]]:
        return [c for c in self.sim.contacts() if c.get(self.user_cf) == user_id]

    def seed_leads(self, *leads: dict[str, Any]) -> None:
        self.sim.seed({"leads": list(leads)})

    def projection(self) -> list[Any]:
        """Close's state without ids and dates: what two equivalent runs must agree on."""
        store = self.sim.simulator.store
        names = {f"custom.{f['id']}": f["name"] for t in ("lead", "contact") for f in store.custom_fields(t)}

        def custom(record: dict[str, Any]) -> tuple[tuple[str, str], ...]:
            return tuple(
                sorted((names.get(k, k), str(v)) for k, v in record.items() if k.startswith("custom."))
            )

        out = []
        for lead in self.sim.leads():
            contacts = sorted(
                [
                    (
                        c.get("name"),
                        c.get("title"),
                        tuple(email_key(e["email"]) for e in c["emails"]),
                        tuple(phone_key(p["phone"]) for p in c["phones"]),
                        tuple(url_key(u["url"]) for u in c["urls"]),
                        custom(c),
                    )
                    for c in lead["contacts"]
                ],
                key=repr,
            )
            out.append(
                (
                    lead.get("name"),
                    lead.get("description"),
                    lead.get("status_label"),
                    custom(lead),
                    tuple(contacts),
                )
            )
        return sorted(out, key=repr)


@pytest.fixture
def term_case() -> str:
    """How the simulator's search compares text in a `term` condition, which Close does not document;
    the differential suites run with both ("sensitive", "insensitive")."""
    return "sensitive"


@pytest.fixture
def close(sim: SimServer, term_case: str) -> CloseEnv:
    sim.configure(**FAST, term_case=term_case)
    company_cf = sim.create_custom_field("lead", "Company ID")
    user_cf = sim.create_custom_field("contact", "User ID")
    return CloseEnv(sim, Settings(company_cf, user_cf))
