"""A dry run plans exactly what the real run then writes: same scheduler, a write layer that only remembers.

The plan is read from the dry run's outcomes as a user reads it: records with made-up ids
(``lead_dry_…``) are the creates, ``update`` changes are the updates. The real run's writes are
counted on the simulator, by endpoint.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from closecrm.engine import DRY_RUN_MARK, UpsertEngine
from closecrm.model import Flags, Outcome, UpsertRequest
from pipeline.plan import planned_writes
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_branches import contact, lead, writes
from transforms.feed import EngineFeed

pytestmark = pytest.mark.integration

COMPANIES = ["acme", "beta", "gamma"]
PEOPLE = [(f"u{i}", COMPANIES[i % len(COMPANIES)]) for i in range(7)]  # several users per company
TITLES = ["CEO", "CTO", "Sales"]
PHONES = ["+14155550100", "+14155550101", "(415) 555-0102"]


def email_of(user: str, company: str) -> str:
    return f"{user}@{company}.example.com"


flags = st.builds(
    Flags,
    allow_creating_new_leads=st.sampled_from([True, True, False]),
    allow_updating_existing_leads=st.sampled_from([True, True, False]),
    allow_creating_new_contacts=st.sampled_from([True, True, False]),
    allow_creating_duplicate_contacts=st.booleans(),
    allow_updating_existing_contacts=st.sampled_from([True, True, False]),
)


@st.composite
def requests(draw: st.DrawFn) -> UpsertRequest:
    """A known user with their company, a user or an email alone, or a company alone."""
    user, company = draw(st.sampled_from(PEOPLE))
    shape = draw(st.sampled_from(["user_and_company", "user_and_company", "user_alone", "anonymous", "company"]))
    extra: dict[str, Any] = {
        "contact_title": draw(st.one_of(st.none(), st.sampled_from(TITLES))),
        "contact_phones": tuple(draw(st.lists(st.sampled_from(PHONES), max_size=1))),
        "flags": draw(st.one_of(st.just(Flags()), flags)),
    }
    if shape == "company":
        return UpsertRequest(
            lead_company_id=company,
            lead_name=draw(st.sampled_from([f"Company {company}", "Renamed"])),
            flags=extra["flags"],
        )
    if shape == "anonymous":  # an email only, maybe one nobody has yet
        email = draw(st.sampled_from([email_of(user, company), f"visitor{user}@gmail.com"]))
        return UpsertRequest(contact_emails=(email,), contact_name=draw(st.sampled_from(["Ann", "Bob"])), **extra)
    if shape == "user_alone":
        return UpsertRequest(contact_user_id=user, **extra)
    return UpsertRequest(
        lead_company_id=company,
        lead_name=f"Company {company}",
        contact_user_id=user,
        contact_name=f"Person {user}",
        contact_emails=(email_of(user, company),),
        **extra,
    )


@st.composite
def existing(draw: st.DrawFn) -> list[tuple[str | None, list[tuple[str | None, str]]]]:
    """What Close holds before the run: a few leads (with or without a company id), their contacts."""
    leads = []
    for _ in range(draw(st.integers(0, 3))):
        company = draw(st.one_of(st.none(), st.sampled_from(COMPANIES)))
        people = draw(st.lists(st.sampled_from(PEOPLE), max_size=2, unique=True))
        leads.append(
            (company, [(draw(st.one_of(st.none(), st.just(u))), email_of(u, c)) for u, c in people])
        )
    return leads


def seed(env: CloseEnv, leads: list[tuple[str | None, list[tuple[str | None, str]]]]) -> int:
    """Seed the leads, oldest first; returns how many contacts Close holds now."""
    for n, (company, people) in enumerate(leads, start=1):
        day = f"2020-01-0{n}T00:00:0"
        contacts = [contact(env, user, email, date_created=f"{day}{i}+00:00") for i, (user, email) in enumerate(people)]
        env.seed_leads(lead(env, company, *contacts, date_created=f"{day}0+00:00"))
    return sum(len(people) for _, people in leads)


def run(env: CloseEnv, reqs: list[UpsertRequest], *, dry_run: bool, batch_size: int, depth: int) -> list[Outcome]:
    async def go(engine: UpsertEngine) -> list[Outcome]:
        if batch_size == 0:  # request after request on one engine
            return [await engine.upsert_one(r, dry_run=dry_run) for r in reqs]
        return await engine.upsert_many(reqs, dry_run=dry_run, batch_size=batch_size, depth=depth)

    return env.run(go, max_concurrency=4)


def real_writes(env: CloseEnv, seeded_contacts: int) -> Counter[str]:
    """What the real run wrote, per object kind, from the simulator's counts and state."""
    by_endpoint = writes(env)
    return Counter(
        {
            "lead create": by_endpoint.get("POST /lead/", 0),
            "contact create": len(env.sim.contacts()) - seeded_contacts,  # POST /contact/ and nested in POST /lead/
            "lead update": by_endpoint.get("PUT /lead/{id}/", 0),
            "contact update": by_endpoint.get("PUT /contact/{id}/", 0),
        }
    )


def planned_posts(outs: list[Outcome]) -> Counter[str]:
    """The create calls a dry run's outcomes (in order) stand for: a new lead carries its new
    contact in one POST /lead/, and so it does the contacts its requests list as ``nested``; any
    other new contact is a POST /contact/."""
    seen: set[str] = set()
    posts: Counter[str] = Counter()
    for out in outs:
        new_leads = [i for i in out.lead_ids if DRY_RUN_MARK in i and i not in seen]
        new_contacts = [i for i in out.contact_ids if DRY_RUN_MARK in i and i not in seen]
        seen.update(new_leads, new_contacts)
        if new_leads:
            posts["POST /lead/"] += len(new_leads)
        elif not any(c.get("nested") for c in out.changes):
            posts["POST /contact/"] += len(new_contacts)
    return +posts


def without_ids(outs: list[Outcome]) -> list[tuple[Any, ...]]:
    """Outcomes and their changes as a plan reads them, without record ids (made up, or Close's)."""

    def value(change: dict[str, Any]) -> str:
        return "<id>" if change["field"] == "lead_id" else repr(change["new"])

    return [
        (o.label, o.branch, tuple((c["object"], c["action"], c["field"], value(c)) for c in o.changes))
        for o in outs
    ]


batching = st.sampled_from([(0, 1), (1, 1), (2, 3), (3, 1), (5, 2), (50, 25)])  # (batch_size, depth); 0: upsert_one


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=existing(), reqs=st.lists(requests(), min_size=2, max_size=14), dry=batching, real=batching)
def test_the_dry_run_plans_exactly_the_writes_of_the_real_run(
    close: CloseEnv,
    before: list[Any],
    reqs: list[UpsertRequest],
    dry: tuple[int, int],
    real: tuple[int, int],
) -> None:
    close.fresh_org()
    seeded = seed(close, before)
    state = close.projection()
    plan = run(close, reqs, dry_run=True, batch_size=dry[0], depth=dry[1])
    assert writes(close) == {} and close.projection() == state  # nothing written

    # How many contacts a POST /lead/ carries depends on the batching (rules/nest.py): the calls are
    # compared with a plan made in the real run's batches; every other figure with the first plan.
    alike = run(close, reqs, dry_run=True, batch_size=real[0], depth=real[1])
    outs = run(close, reqs, dry_run=False, batch_size=real[0], depth=real[1])
    for out in outs:
        event(f"branch {out.branch}: {out.label}")
    if any(c.get("nested") for o in outs for c in o.changes):
        event("contacts nested in a new lead")
    assert planned_writes([o.to_json() for o in plan]) == real_writes(close, seeded)
    by_endpoint = writes(close)
    assert planned_posts(alike) == +Counter({k: v for k, v in by_endpoint.items() if k.startswith("POST")})
    assert [[bool(c.get("nested")) for c in o.changes] for o in alike] == [
        [bool(c.get("nested")) for c in o.changes] for o in outs
    ]
    assert without_ids(plan) == without_ids(alike) == without_ids(outs)


# ---------------------------------------------------------------- regressions


def three_new_users_of_one_new_company() -> list[UpsertRequest]:
    return [
        UpsertRequest(
            lead_company_id="newco",
            lead_name="New Co",
            contact_user_id=f"u{i}",
            contact_emails=(f"u{i}@newco.example.com",),
        )
        for i in range(3)
    ]


@pytest.mark.parametrize("batch_size", [0, 1, 3], ids=["upsert_one", "batches_of_one", "one_batch"])
def test_three_new_users_of_one_new_company_plan_one_lead(close: CloseEnv, batch_size: int) -> None:
    plan = run(close, three_new_users_of_one_new_company(), dry_run=True, batch_size=batch_size, depth=2)
    assert [o.label for o in plan] == ["created"] * 3
    assert len({o.lead_ids for o in plan}) == 1 and DRY_RUN_MARK in plan[0].lead_ids[0]
    assert planned_writes([o.to_json() for o in plan]) == Counter({"lead create": 1, "contact create": 3})
    assert close.leads() == []


class _Item:
    def __init__(self, request: UpsertRequest) -> None:
        self.request = request


def test_the_writers_dry_feed_remembers_across_flushes(close: CloseEnv, loop: asyncio.AbstractEventLoop) -> None:
    """The writer's dry run: each flush joins one dry stream, so a later flush finds what an earlier one planned."""
    from closecrm.api.client import CloseClient

    client = CloseClient(close.sim.base_url, close.sim.api_key)
    engine = UpsertEngine(client, close.settings)
    feed = EngineFeed(loop, engine, batch_size=1, dry_run=True)
    reqs = three_new_users_of_one_new_company()
    outs = []
    for req in reqs:  # one flush each
        feed.submit([_Item(req)])
        outs += [o for _, o in feed.wait_until(0)]
    feed.close()
    asyncio.run_coroutine_threadsafe(client.aclose(), loop).result()
    assert planned_writes([o.to_json() for o in outs]) == Counter({"lead create": 1, "contact create": 3})
    assert close.leads() == []


def test_a_dry_run_follows_what_it_planned_for_an_existing_lead(close: CloseEnv) -> None:
    """Adopting a lead, then more people of that company: the dry run finds the lead it stamped."""
    close.seed_leads(lead(close, None, contact(close, None, "ann@acme.example.com"), name="Unowned"))
    reqs = [
        UpsertRequest(lead_company_id="acme", contact_user_id="u1", contact_emails=("ann@acme.example.com",)),
        UpsertRequest(lead_company_id="acme", contact_user_id="u2", contact_phones=("+14155550100",)),
        UpsertRequest(contact_user_id="u2", contact_phones=("+14155550101",)),
    ]
    plan = run(close, reqs, dry_run=True, batch_size=1, depth=1)
    assert [(o.label, o.branch) for o in plan] == [
        ("updated", "adopt_lead"),
        ("created", "lead_by_company_id"),
        ("updated", "contacts_without_company_id"),
    ]
    [existing_lead] = close.leads()
    assert plan[1].lead_ids == (existing_lead["id"],)
    [phones] = [c for c in plan[2].changes if c["field"] == "phones"]
    assert [p["phone"] for p in phones["new"]] == ["+14155550100", "+14155550101"]  # merged onto the planned contact
    outs = run(close, reqs, dry_run=False, batch_size=1, depth=1)
    assert planned_writes([o.to_json() for o in plan]) == real_writes(close, 1)
    assert without_ids(plan) == without_ids(outs)
