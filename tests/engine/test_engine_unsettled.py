"""A create whose answer was lost is only sent again after a search made past the lag bound."""

from __future__ import annotations

import pytest

from closecrm.engine import UpsertEngine
from closecrm.model import UpsertRequest
from tests.engine.conftest import CloseEnv

pytestmark = pytest.mark.integration

LAG = 0.8


def committed_before(close: CloseEnv, company_id: str, user_id: str) -> None:
    """What an ambiguous POST /lead/ leaves behind: the lead exists, search does not show it yet."""
    close.sim.configure(search_lag=LAG)
    close.seed_leads(
        {"name": "Acme", close.company_cf: company_id, "contacts": [{"name": "Ann", close.user_cf: user_id}]}
    )


def test_replaying_an_ambiguous_create_finds_the_committed_lead_instead_of_duplicating_it(close: CloseEnv):
    close.fresh_org()
    committed_before(close, "acme", "u1")
    req = UpsertRequest(lead_company_id="acme", lead_name="Acme", contact_user_id="u1", contact_name="Ann")

    async def replay(engine: UpsertEngine):
        engine.expect_unconfirmed(req)  # what `close-sync replay` does for an ambiguous_write letter
        return await engine.upsert_one(req)

    outcome = close.run(replay, settle_seconds=2 * LAG)
    assert outcome.kind == "unchanged"
    assert len(close.leads_of("acme")) == 1


def test_without_the_hint_search_lag_alone_would_have_duplicated_it(close: CloseEnv):
    """The control: the same request with no hint creates a second lead (why the hint exists)."""
    close.fresh_org()
    committed_before(close, "acme", "u1")
    req = UpsertRequest(lead_company_id="acme", lead_name="Acme", contact_user_id="u1", contact_name="Ann")
    outcome = close.run(lambda engine: engine.upsert_one(req), settle_seconds=2 * LAG)
    assert outcome.kind == "created"
    assert len(close.leads_of("acme")) == 2


def test_an_identity_whose_create_never_happened_is_created_after_the_lag_bound(close: CloseEnv):
    close.fresh_org()
    close.sim.configure(search_lag=LAG)
    req = UpsertRequest(lead_company_id="beta", contact_user_id="u2")

    async def replay(engine: UpsertEngine):
        engine.expect_unconfirmed(req)
        return await engine.upsert_one(req)

    assert close.run(replay, settle_seconds=2 * LAG).kind == "created"
    assert len(close.leads_of("beta")) == 1
