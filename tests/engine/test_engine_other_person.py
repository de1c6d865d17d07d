"""A contact that carries another user id is another person: the email fallback never matches it.

"Match a contact" is by user id, and only when no contact has the user id, by email. A contact
whose user id differs from the request's is not that person, however equal the emails look
(``\u212a`` is the Kelvin sign, which lower-cases to ``k``): it is never renamed nor re-stamped.
A request without a user id may still match it by email.
"""

from __future__ import annotations

from typing import Any

import pytest

from closecrm.engine import UpsertEngine
from closecrm.model import Flags, Outcome, UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_branches import contact, lead

pytestmark = pytest.mark.integration

KELVIN_KATE = "\u212aate@example.com"  # lower() gives kate@example.com
KATE_ID = "cont_kate"


def kate(env: CloseEnv) -> dict[str, Any]:
    return contact(env, "u_kate", "kate@example.com", name="Kate", title="CEO", id=KATE_ID)


def kate_now(env: CloseEnv) -> dict[str, Any]:
    """Kate's contact, by the id it was seeded with."""
    [found] = [c for c in env.sim.contacts() if c["id"] == KATE_ID]
    return found


def assert_kate_untouched(env: CloseEnv) -> None:
    found = kate_now(env)
    assert found["name"] == "Kate"
    assert found[env.user_cf] == "u_kate"
    assert found["title"] == "CEO"
    assert [e["email"] for e in found["emails"]] == ["kate@example.com"]
    assert env.contacts_with_user("u_kate") == [found]


def mallory(**fields: Any) -> UpsertRequest:
    return UpsertRequest(
        **{
            "contact_user_id": "u_mallory",
            "contact_name": "Mallory",
            "contact_emails": ("kate@example.com",),
            **fields,
        }
    )


@pytest.mark.parametrize("email", [KELVIN_KATE, "kate@example.com", " KATE@example.com "])
def test_without_company_id_an_email_match_with_another_user_id_is_not_renamed(
    close: CloseEnv, email: str
) -> None:
    close.seed_leads(lead(close, None, kate(close), name="Kate's lead"))
    [out] = close.one(mallory(contact_emails=(email,)))
    assert_kate_untouched(close)
    assert out.branch == "nothing_found"
    assert [c["name"] for c in close.contacts_with_user("u_mallory")] == (
        ["Mallory"] if out.kind == "created" else []
    )


def test_the_issue_repro_in_a_batch_leaves_kate_alone(close: CloseEnv) -> None:
    close.seed_leads(lead(close, None, kate(close), name="Kate's lead"))
    outs = close.batch(
        [mallory(contact_emails=(KELVIN_KATE,)), mallory(contact_emails=("kate@example.com",))]
    )
    assert [o.branch for o in outs][0] == "nothing_found"
    assert_kate_untouched(close)


def test_a_request_without_user_id_still_matches_a_contact_with_one_by_email(close: CloseEnv) -> None:
    close.seed_leads(lead(close, None, kate(close), name="Kate's lead"))
    [out] = close.one(UpsertRequest(contact_emails=("KATE@example.com",), contact_title="CTO"))
    assert out.label == "updated" and out.branch == "contacts_without_company_id"
    found = kate_now(close)
    assert found["title"] == "CTO" and found[close.user_cf] == "u_kate"


def test_a_contact_without_user_id_matched_by_email_still_gets_the_user_id(close: CloseEnv) -> None:
    close.seed_leads(lead(close, None, contact(close, None, "kate@example.com", name="Kate", id=KATE_ID)))
    [out] = close.one(mallory())
    assert out.label == "updated"
    assert kate_now(close)[close.user_cf] == "u_mallory"


def test_inside_the_found_lead_a_contact_with_another_user_id_is_not_matched(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme", kate(close)))
    [out] = close.one(mallory(lead_company_id="acme"))
    assert out.label == "created" and out.branch == "lead_by_company_id"
    assert_kate_untouched(close)
    [acme] = close.leads_of("acme")
    assert sorted(c["name"] for c in acme["contacts"]) == ["Kate", "Mallory"]


def test_another_persons_contact_elsewhere_is_no_duplicate_of_this_one(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme"), lead(close, "other", kate(close)))
    [out] = close.one(mallory(lead_company_id="acme", flags=Flags(allow_creating_duplicate_contacts=False)))
    assert out.label == "created" and out.branch == "lead_by_company_id"
    assert_kate_untouched(close)
    assert [c["name"] for c in close.leads_of("acme")[0]["contacts"]] == ["Mallory"]


def test_the_lead_of_another_persons_contact_is_not_adopted(close: CloseEnv) -> None:
    close.seed_leads(lead(close, None, kate(close), name="Kate's lead"))
    [out] = close.one(mallory(lead_company_id="acme", lead_name="Acme"))
    assert out.label == "created" and out.branch == "nothing_found"
    assert_kate_untouched(close)
    kates_lead = next(x for x in close.leads() if x["name"] == "Kate's lead")
    assert kates_lead.get(close.company_cf) in (None, "")
    [acme] = close.leads_of("acme")
    assert [c["name"] for c in acme["contacts"]] == ["Mallory"]


def test_another_persons_contact_under_another_company_is_not_duplicated(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "old-co", kate(close)))
    [out] = close.one(mallory(lead_company_id="new-co", flags=Flags(allow_creating_duplicate_contacts=False)))
    assert out.label == "created" and out.branch == "nothing_found"
    assert_kate_untouched(close)
    assert [c["name"] for c in close.leads_of("new-co")[0]["contacts"]] == ["Mallory"]


def test_the_stream_path_applies_the_same_rule(close: CloseEnv) -> None:
    close.seed_leads(lead(close, None, kate(close), name="Kate's lead"))

    async def go(engine: UpsertEngine) -> list[Outcome]:
        return await engine.upsert_many([mallory(contact_emails=(KELVIN_KATE,)), mallory()], batch_size=1)

    outs = close.run(go)
    assert outs[0].branch == "nothing_found"
    assert_kate_untouched(close)


def test_after_an_ambiguous_create_another_persons_contact_is_not_taken_for_it(close: CloseEnv) -> None:
    """Search shows Kate by email before it shows the lead the lost POST created: that is not it."""
    close.seed_leads(lead(close, None, kate(close), name="Kate's lead"))
    close.sim.configure(ambiguous_rate=1.0, search_lag=0.3)
    [out] = close.one(mallory(), settle_seconds=1.0)
    close.sim.configure(ambiguous_rate=0.0)
    assert out.kind == "created"
    assert_kate_untouched(close)
    assert [c["name"] for c in close.contacts_with_user("u_mallory")] == ["Mallory"]
