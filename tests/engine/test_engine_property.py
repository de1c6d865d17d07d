"""Property: a batch leaves Close exactly as applying each request one at a time would, with no duplicate leads."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closecrm.engine import UpsertEngine
from closecrm.model import Flags, Outcome, UpsertRequest
from tests.engine.conftest import CloseEnv

pytestmark = pytest.mark.integration

COMPANIES = ["c0", "c1", "c2"]
USERS = ["u0", "u1", "u2", "u3"]
EMAILS = ["a@x.com", "B@x.com", "b@x.com", "c@y.com"]
PHONES = ["+14155550100", "(415) 555-0101", "415.555.0100"]

flags = st.builds(
    Flags,
    allow_creating_new_leads=st.sampled_from([True, True, True, False]),
    allow_updating_existing_leads=st.sampled_from([True, True, True, False]),
    allow_creating_new_contacts=st.sampled_from([True, True, True, False]),
    allow_creating_duplicate_contacts=st.booleans(),
    allow_updating_existing_contacts=st.sampled_from([True, True, True, False]),
)

requests = st.builds(
    UpsertRequest,
    lead_company_id=st.one_of(st.none(), st.sampled_from(COMPANIES)),
    lead_name=st.one_of(st.none(), st.sampled_from(["Acme", "Beta"])),
    lead_description=st.one_of(st.none(), st.sampled_from(["d1", "d2"])),
    contact_user_id=st.one_of(st.none(), st.sampled_from(USERS)),
    contact_emails=st.lists(st.sampled_from(EMAILS), max_size=2, unique=True).map(tuple),
    contact_phones=st.lists(st.sampled_from(PHONES), max_size=1).map(tuple),
    contact_title=st.one_of(st.none(), st.sampled_from(["CEO", "CTO"])),
    contact_name=st.one_of(st.none(), st.sampled_from(["Ann", "Bob"])),
    flags=st.one_of(st.just(Flags()), flags),
)


@st.composite
def seeded_contacts(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 2))
    return [
        {
            "user": draw(st.one_of(st.none(), st.sampled_from(USERS))),
            "emails": draw(st.lists(st.sampled_from(EMAILS), max_size=2, unique=True)),
        }
        for _ in range(n)
    ]


seeds = st.lists(
    st.tuples(st.one_of(st.none(), st.sampled_from(COMPANIES)), seeded_contacts()),
    max_size=3,
)


def seed(env: CloseEnv, leads: list[tuple[str | None, list[dict[str, Any]]]]) -> Counter[str]:
    """Seed ``(company id or None, [{"user", "emails"}])`` leads, oldest first; returns leads per company."""
    docs = []
    n = 0
    for company_id, contacts in leads:
        n += 1
        doc: dict[str, Any] = {"date_created": f"2020-01-{n:02d}T00:00:00+00:00", "contacts": []}
        if company_id:
            doc[env.company_cf] = company_id
        for c in contacts:
            n += 1
            contact: dict[str, Any] = {
                "date_created": f"2020-01-{n:02d}T00:00:00+00:00",
                "emails": [{"email": e, "type": "office"} for e in c["emails"]],
            }
            if c["user"]:
                contact[env.user_cf] = c["user"]
            doc["contacts"].append(contact)
        docs.append(doc)
    env.seed_leads(*docs)
    return Counter(company_id for company_id, _ in leads if company_id)


def leads_per_company(env: CloseEnv) -> Counter[str]:
    return Counter(lead[env.company_cf] for lead in env.leads() if lead.get(env.company_cf))


@dataclass
class Reference:
    """What applying each request one at a time did to a seeded org: outcomes and the end state."""

    outcomes: list[Outcome]
    state: Any
    seeded: Counter[str]
    reseed: Callable[[], Counter[str]]

    def assert_matched_by(self, env: CloseEnv, outcomes: list[Outcome]) -> None:
        """The same end state and outcome kinds, and no company with more leads than it was seeded with (or 1)."""
        self.assert_state_matched_by(env)
        assert [o.kind for o in outcomes] == [o.kind for o in self.outcomes]

    def assert_state_matched_by(self, env: CloseEnv, path: str = "") -> None:
        """The same end state (outcomes differ in number once requests are collapsed)."""
        assert env.projection() == self.state, path
        for company_id, count in leads_per_company(env).items():
            assert count == max(1, self.seeded[company_id]), (path, company_id)

    def again(self, env: CloseEnv) -> None:
        """A fresh org seeded the same way, for the next path under test."""
        env.fresh_org()
        self.seeded = self.reseed()


def one_at_a_time_reference(
    env: CloseEnv,
    leads: list[Any],
    reqs: list[UpsertRequest],
    seeding: Callable[[CloseEnv, Any], Counter[str]] = seed,
) -> Reference:
    """Seed, apply each request alone, record; then leave a fresh org seeded the same way for the path under test."""
    env.fresh_org()
    seeding(env, leads)
    outcomes = env.one(*reqs)
    state = env.projection()
    reference = Reference(outcomes, state, Counter(), lambda: seeding(env, leads))
    reference.again(env)
    return reference


@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(leads=seeds, reqs=st.lists(requests, min_size=1, max_size=8), split=st.integers(0, 8))
def test_batch_equals_one_at_a_time_and_never_duplicates_a_company(
    close: CloseEnv, leads: list[Any], reqs: list[UpsertRequest], split: int
) -> None:
    reference = one_at_a_time_reference(close, leads, reqs)

    async def batches(engine: UpsertEngine) -> list[Any]:
        return await engine.upsert_batch(reqs[:split]) + await engine.upsert_batch(reqs[split:])

    reference.assert_matched_by(close, close.run(batches))
