"""upsert_batch: few searches, per-lead serialisation, input order, and no duplicates under search lag."""

from __future__ import annotations

import pytest

from closecrm.engine import UpsertEngine
from closecrm.model import Outcome, UpsertRequest
from tests.engine.conftest import CloseEnv

pytestmark = pytest.mark.integration


def people(n: int, companies: int) -> list[UpsertRequest]:
    return [
        UpsertRequest(
            lead_company_id=f"co{i % companies}",
            lead_name=f"Company {i % companies}",
            contact_user_id=f"u{i}",
            contact_emails=(f"user{i}@co{i % companies}.com",),
            contact_name=f"User {i}",
        )
        for i in range(n)
    ]


def test_a_first_sync_batch_costs_a_few_searches_plus_one_write_per_company(close: CloseEnv) -> None:
    reqs = people(200, 40)
    outs = close.batch(reqs)
    assert [o.kind for o in outs] == ["created"] * 200
    by_group = close.sim.stats()["by_group"]
    assert by_group["search"] <= 6
    # each company's lead is created with its five people nested (rules/nest.py)
    assert by_group["lead_write"] == 40 and "contact_write" not in by_group
    assert "read" not in by_group
    assert sum(o.calls for o in outs) == close.sim.stats()["requests_total"]
    assert sum(o.calls for o in outs) / len(outs) <= 0.25


def test_two_new_users_of_one_new_company_make_one_lead(close: CloseEnv) -> None:
    outs = close.batch(
        [
            UpsertRequest(lead_company_id="acme", contact_user_id="u1"),
            UpsertRequest(lead_company_id="acme", contact_user_id="u2"),
        ]
    )
    assert [o.kind for o in outs] == ["created", "created"]
    [lead] = close.leads()
    assert len(lead["contacts"]) == 2


def test_outcomes_come_back_in_input_order(close: CloseEnv) -> None:
    reqs = [
        UpsertRequest(lead_company_id="a", contact_user_id="u1"),
        UpsertRequest(contact_name="no identity"),
        UpsertRequest(lead_company_id="b", contact_user_id="u2"),
        UpsertRequest(lead_company_id="a", contact_user_id="u1"),
    ]
    outs = close.batch(reqs)
    assert [o.label for o in outs] == ["created", "skipped:no_identity", "created", "unchanged"]
    assert outs[0].lead_ids == outs[3].lead_ids


def test_later_requests_in_a_batch_see_what_earlier_ones_wrote(close: CloseEnv) -> None:
    """An email appended by one request is how a later, anonymous request finds the contact."""
    outs = close.batch(
        [
            UpsertRequest(
                lead_company_id="a", contact_user_id="u1", contact_emails=("one@a.com", "two@a.com")
            ),
            UpsertRequest(contact_emails=("TWO@a.com",), contact_title="CTO"),
            UpsertRequest(
                lead_company_id="a", contact_emails=("one@a.com",), contact_phones=("+14155550100",)
            ),
        ]
    )
    assert [o.label for o in outs] == ["created", "updated", "updated"]
    [c] = close.sim.contacts()
    assert c["title"] == "CTO" and c["phones"][0]["phone"] == "+14155550100"


def test_batch_and_one_at_a_time_agree_on_a_mixed_sequence(close: CloseEnv) -> None:
    reqs = (
        people(30, 5)
        + [
            UpsertRequest(contact_user_id="u3", lead_company_id="moved", contact_title="CEO"),
            UpsertRequest(contact_emails=("user4@co4.com",), lead_description="seen"),
            UpsertRequest(lead_company_id="co1", lead_name="Renamed"),
        ]
        + people(10, 5)
    )
    close.batch(reqs)
    batched = close.projection()
    close.fresh_org()
    close.one(*reqs)
    assert close.projection() == batched


def test_search_lag_does_not_create_duplicates_across_calls(close: CloseEnv) -> None:
    close.sim.configure(search_lag=30.0)  # search sees nothing this engine wrote

    async def go(engine: UpsertEngine) -> list[Outcome]:
        outs = [await engine.upsert_one(UpsertRequest(lead_company_id="acme", contact_user_id="u1"))]
        outs.append(await engine.upsert_one(UpsertRequest(lead_company_id="acme", contact_user_id="u2")))
        outs.append(
            await engine.upsert_one(UpsertRequest(contact_user_id="u1", contact_emails=("a@acme.com",)))
        )
        outs += await engine.upsert_batch([UpsertRequest(lead_company_id="acme", contact_user_id="u3")])
        outs += await engine.upsert_batch(
            [UpsertRequest(contact_emails=("a@acme.com",), contact_title="CTO")]
        )
        return outs

    outs = close.run(go)
    assert [o.label for o in outs] == ["created", "created", "updated", "created", "updated"]
    [lead] = close.leads()
    assert len(lead["contacts"]) == 3
    assert [c["title"] for c in lead["contacts"] if c[close.user_cf] == "u1"] == ["CTO"]
    assert close.sim.stats()["by_group"]["read"] >= 1  # cached ids were confirmed by GET


def test_a_cached_id_of_a_deleted_record_is_dropped(close: CloseEnv) -> None:
    close.sim.configure(search_lag=30.0)

    async def go(engine: UpsertEngine) -> list[Outcome]:
        first = await engine.upsert_one(UpsertRequest(lead_company_id="acme", contact_user_id="u1"))
        close.sim.simulator.store.delete_lead(first.lead_ids[0])
        second = await engine.upsert_one(UpsertRequest(lead_company_id="acme", contact_user_id="u1"))
        return [first, second]

    outs = close.run(go)
    assert [o.label for o in outs] == ["created", "created"]
    assert len(close.leads()) == 1


def test_dry_run_of_a_batch_plans_against_its_own_earlier_requests(close: CloseEnv) -> None:
    async def go(engine: UpsertEngine) -> list[Outcome]:
        return await engine.upsert_batch(
            [
                UpsertRequest(lead_company_id="acme", contact_user_id="u1"),
                UpsertRequest(lead_company_id="acme", contact_user_id="u2"),
                UpsertRequest(lead_company_id="acme", contact_user_id="u1"),
            ],
            dry_run=True,
        )

    outs = close.run(go)
    assert [o.label for o in outs] == ["created", "created", "unchanged"]
    assert close.leads() == []
    assert "lead_write" not in close.sim.stats()["by_group"]
