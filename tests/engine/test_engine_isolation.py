"""One request's unexpected error fails that request only: the rest of its batch goes on.

A value a per-request helper cannot handle (a URL whose port is not a number, a float that is not
JSON, an email that is not text) must not raise out of the engine and fail every request of the
batch as ``engine_error``, including the ones already written.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from closecrm.engine import UpsertEngine
from closecrm.events.normalize import url_key
from closecrm.model import Outcome, UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_branches import contact, lead

pytestmark = pytest.mark.integration

BAD_URL = "http://example.com:abc/"


def good(i: int) -> UpsertRequest:
    return UpsertRequest(
        lead_company_id=f"co{i % 7}",
        lead_name=f"Company {i % 7}",
        contact_user_id=f"u{i}",
        contact_name=f"User {i}",
        contact_emails=(f"u{i}@co{i % 7}.com",),
        contact_urls=(f"https://co{i % 7}.com/u{i}",),
    )


def batch_with(bad: UpsertRequest) -> list[UpsertRequest]:
    reqs = [good(i) for i in range(20)]
    reqs.insert(7, bad)
    return reqs


def url_key_raises() -> bool:
    try:
        url_key(BAD_URL)
    except ValueError:
        return True
    return False


def assert_only_the_bad_one_failed(close: CloseEnv, outs: list[Outcome], reason: str) -> Outcome:
    assert len(outs) == 21
    bad = outs[7]
    others = outs[:7] + outs[8:]
    assert [o.label for o in others] == ["created"] * 20
    assert bad.kind == "failed" and bad.reason == reason, bad
    for i in range(20):
        assert len(close.contacts_with_user(f"u{i}")) == 1
    assert sorted(x[close.company_cf] for x in close.leads()) == [f"co{i}" for i in range(7)]
    return bad


def nan_seats(close: CloseEnv, **fields: object) -> UpsertRequest:
    seats = close.sim.create_custom_field("contact", "Seats", type="number")
    return UpsertRequest(contact_custom_fields={seats: math.nan}, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("entry", ["batch", "stream"])
def test_the_issues_bad_url_fails_only_its_request(close: CloseEnv, entry: str) -> None:
    bad = UpsertRequest(lead_company_id="co_bad", contact_user_id="u_bad", contact_urls=(BAD_URL,))
    outs = run(close, batch_with(bad), entry)
    if url_key_raises():
        failed = assert_only_the_bad_one_failed(close, outs, "engine_error:ValueError")
        assert failed.calls >= 0 and close.leads_of("co_bad") == []
    else:  # url_key accepts it now: all 21 go through
        assert [o.kind for o in outs] == ["created"] * 21


@pytest.mark.parametrize("entry", ["batch", "stream"])
def test_a_value_that_cannot_be_sent_fails_only_its_request(close: CloseEnv, entry: str) -> None:
    bad = nan_seats(close, lead_company_id="co_bad", contact_user_id="u_bad")
    outs = run(close, batch_with(bad), entry)
    failed = assert_only_the_bad_one_failed(close, outs, "engine_error:ValueError")
    assert close.leads_of("co_bad") == []
    assert "JSON" in str(failed.error_body)


@pytest.mark.parametrize("entry", ["batch", "stream"])
@pytest.mark.parametrize(
    "bad",
    [
        UpsertRequest(lead_company_id="co_bad", contact_user_id="u_bad", contact_emails=(42,)),  # type: ignore[arg-type]
        UpsertRequest(contact_user_id="u_bad", contact_emails=("ok@x.com", 42)),  # type: ignore[arg-type]
        UpsertRequest(lead_company_id="co_bad", lead_custom_fields={7: "x"}),  # type: ignore[dict-item]
        UpsertRequest(contact_user_id="u_bad", contact_custom_fields={None: "x"}),  # type: ignore[dict-item]
    ],
    ids=["email-not-text", "second-email-not-text", "lead-field-id-not-text", "contact-field-id-none"],
)
def test_a_value_the_lookup_cannot_use_fails_only_its_request(
    close: CloseEnv, entry: str, bad: UpsertRequest
) -> None:
    outs = run(close, batch_with(bad), entry)
    failed = assert_only_the_bad_one_failed(close, outs, "engine_error:AttributeError")
    assert failed.calls == 0 and failed.lead_ids == () and failed.contact_ids == ()


def test_a_request_that_fails_after_a_write_reports_that_write(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme", contact(close, "u1", "ann@acme.com"), name="Old"))
    [acme] = close.leads()
    bad = nan_seats(close, lead_company_id="acme", lead_name="New", contact_user_id="u1")
    [out] = close.batch([bad])
    assert out.kind == "failed" and out.reason == "engine_error:ValueError"
    assert out.lead_ids == (acme["id"],)  # the lead was written before the contact's write failed
    assert close.leads()[0]["name"] == "New"
    assert out.calls >= 3  # two searches and the lead's PUT
    assert out.changes and out.branch == "lead_by_company_id"


def test_the_client_is_usable_after_a_request_it_could_not_encode(close: CloseEnv) -> None:
    """The pacer must not keep a slot for a call that never left."""
    bad = nan_seats(close, lead_company_id="co_bad", contact_user_id="u_bad")

    async def go(engine: UpsertEngine) -> list[Outcome]:
        outs = []
        for req in (bad, bad, bad, good(1)):
            outs += await asyncio.wait_for(engine.upsert_batch([req]), 20)  # hung forever once
        return outs

    outs = close.run(go, client_kw={"max_in_flight": 1})
    assert [o.label for o in outs] == ["failed:engine_error:ValueError"] * 3 + ["created"]


def run(close: CloseEnv, reqs: list[UpsertRequest], entry: str) -> list[Outcome]:
    async def go(engine: UpsertEngine) -> list[Outcome]:
        if entry == "batch":
            return await engine.upsert_batch(reqs)
        return await engine.upsert_many(reqs, batch_size=8, depth=3)

    return close.run(go)
