"""The engine on random requests over a dense CRM (shared, case-varied, look-alike emails), on the simulator.

Invariants: every request ends with exactly one outcome and nothing escapes; a contact's user id,
once set, never changes (the email fallback never takes a contact that carries another user id);
a request with hostile values fails alone, never a clean request of the same batch.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from closecrm.model import Flags, UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.fuzz.budget import budget
from tests.fuzz.strategies import hostile_values, urls

pytestmark = pytest.mark.integration

USERS = ["u_kate", "u_mallory", "u_dee", "u_cy"]
EMAILS = ["kate@example.com", "\u212aate@example.com", "KATE@example.com", "dee@y.example", "cy@y.example"]
COMPANIES = ["co1", "co2", "co3"]


def seed(close: CloseEnv) -> None:
    """Kate under a company lead, Dee under a company-less lead, and a contact with no user id."""
    close.seed_leads(
        {
            "name": "Acme",
            close.company_cf: "co1",
            "contacts": [{"name": "Kate", "emails": [{"email": "kate@example.com"}], close.user_cf: "u_kate"}],
        },
        {
            "name": "Solo",
            "contacts": [
                {"name": "Dee", "emails": [{"email": "cy@y.example"}], close.user_cf: "u_dee"},
                {"name": "X", "emails": [{"email": "dee@y.example"}]},
            ],
        },
    )


clean_requests = st.builds(
    lambda company, user, email, name, title, flags: UpsertRequest(
        lead_company_id=company,
        lead_name=None if company is None else f"Lead {company}",
        contact_user_id=user,
        contact_emails=() if email is None else (email,),
        contact_name=name,
        contact_title=title,
        flags=flags,
    ),
    st.one_of(st.none(), st.sampled_from(COMPANIES)),
    st.one_of(st.none(), st.sampled_from(USERS)),
    st.one_of(st.none(), st.sampled_from(EMAILS)),
    st.one_of(st.none(), st.sampled_from(["Cy", "Mallory", "Kate"])),
    st.one_of(st.none(), st.sampled_from(["CEO", "Dev"])),
    st.builds(Flags, *(st.booleans() for _ in range(5))),
)


def _poison(req: UpsertRequest, url: str, value: Any) -> UpsertRequest:
    """The same identity with values no mapping should let through: odd URLs, NaN, deep or odd custom values."""
    return UpsertRequest(
        lead_company_id=req.lead_company_id,
        contact_user_id=req.contact_user_id,
        contact_emails=req.contact_emails,
        contact_urls=(url,),
        contact_custom_fields={"cf_missing": value},
        lead_custom_fields={"cf_nan": math.nan},
        flags=req.flags,
    )


poison_requests = st.builds(_poison, clean_requests, urls, hostile_values)


def user_ids(close: CloseEnv) -> dict[str, Any]:
    return {c["id"]: c.get(close.user_cf) for c in close.sim.contacts()}


@budget(250)
@given(st.lists(st.tuples(st.booleans(), clean_requests, poison_requests), min_size=1, max_size=24))
def test_random_batches_keep_user_ids_and_fail_only_hostile_requests(close, picks):
    close.fresh_org()
    seed(close)
    requests = [poison if bad else clean for bad, clean, poison in picks]
    hostile = [bad for bad, _, _ in picks]
    for round_ in range(2):  # the second round meets the contacts the first one created
        before = user_ids(close)
        outcomes = close.batch(requests)
        assert len(outcomes) == len(requests)
        for request, outcome, bad in zip(requests, outcomes, hostile, strict=True):
            assert outcome.kind in {"created", "updated", "unchanged", "skipped", "failed"}
            if outcome.kind == "failed":
                assert bad, f"round {round_}: a clean request failed: {request} -> {outcome}"
        after = user_ids(close)
        for contact_id, user_id in before.items():
            if user_id:
                assert after.get(contact_id) == user_id, f"round {round_}: {contact_id} was {user_id}"
