"""Lookups hold whichever way Close compares case in a `term` condition (its documentation does not
say): a contact stored as ``Kate@Example.COM`` is found by an event carrying ``kate@example.com``,
and user and company ids stored in a text custom field are found as sent, with the simulator in
either case mode. Nothing is created twice."""

from __future__ import annotations

import itertools

import pytest

from closecrm.engine import UpsertEngine
from closecrm.engine.view import Search
from closecrm.model import UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_branches import contact, lead

pytestmark = pytest.mark.integration

CASES = pytest.mark.parametrize("term_case", ["sensitive", "insensitive"])


@CASES
def test_an_email_stored_in_another_case_is_found_and_not_created_again(close: CloseEnv) -> None:
    close.seed_leads(lead(close, None, contact(close, None, "Kate@Example.COM", name="Kate"), name="K"))
    [out] = close.batch([UpsertRequest(contact_emails=("kate@example.com",), contact_title="CEO")])
    assert out.label == "updated", out
    [found] = close.sim.contacts()
    assert found["title"] == "CEO" and found["name"] == "Kate"
    assert len(close.leads()) == 1


@CASES
def test_user_and_company_ids_in_text_fields_are_found_as_sent(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "Acme-1", contact(close, "User-7", "u7@example.com"), name="Acme"))
    [out] = close.batch(
        [UpsertRequest(lead_company_id="Acme-1", contact_user_id="User-7", contact_title="CTO")]
    )
    assert out.label == "updated", out
    [found] = close.sim.contacts()
    assert found["title"] == "CTO"
    assert len(close.leads()) == 1
    # An id that differs only in case is another company and another person.
    [other] = close.batch([UpsertRequest(lead_company_id="acme-1", contact_user_id="user-7")])
    assert other.label == "created", other
    assert len(close.leads()) == 2 and len(close.sim.contacts()) == 2


def test_a_lookup_whose_cursor_expired_reads_again_from_the_start(
    close: CloseEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = [contact(close, None, "x@example.com", name=f"P{i}") for i in range(250)]  # two pages
    close.seed_leads(lead(close, None, *many, name="Busy"))
    close.sim.configure(cursor_ttl_seconds=0.1)
    faults = close.sim.simulator.faults
    served = itertools.count(1)
    # The second page waits past the cursor's life once; the walk starts again and ends.
    monkeypatch.setattr(faults, "delay", lambda: 0.3 if next(served) == 2 else 0.0)

    async def go(engine: UpsertEngine) -> list[dict]:
        return await Search(engine.client, close.settings).contacts_by_keys([], ["x@example.com"])

    hits = close.run(go)
    assert next(served) == 5  # page 1, page 2 refused, page 1, page 2
    assert len({h["id"] for h in hits}) == 250
