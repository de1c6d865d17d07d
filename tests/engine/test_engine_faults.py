"""Faults on (5xx, ambiguous writes, search lag, 429 storms): nothing duplicated, nothing lost, same end state."""

from __future__ import annotations

import pytest

from closecrm.engine import UpsertEngine
from closecrm.model import Outcome, UpsertRequest
from tests.engine.conftest import CloseEnv

pytestmark = pytest.mark.integration

LAG = 0.3  # seconds; the engine is told search may lag up to twice that


def workload() -> list[UpsertRequest]:
    reqs = []
    for i in range(120):
        company = f"co{i % 15}"
        user = f"u{i % 60}"
        reqs.append(
            UpsertRequest(
                lead_company_id=company,
                lead_name=f"Company {company}",
                contact_user_id=user,
                contact_emails=(f"{user}@{company}.com",) + ((f"alt{i}@{company}.com",) if i >= 60 and i % 4 == 0 else ()),
                contact_title="CEO" if i % 7 == 0 else None,
                contact_phones=(f"+1415555{i:04d}",) if i % 5 == 0 else (),
            )
        )
    return reqs


def apply_in_batches(env: CloseEnv, reqs: list[UpsertRequest], size: int = 40) -> list[Outcome]:
    async def go(engine: UpsertEngine) -> list[Outcome]:
        outs: list[Outcome] = []
        for i in range(0, len(reqs), size):
            outs += await engine.upsert_batch(reqs[i : i + size])
        return outs

    return env.run(go, settle_seconds=2 * LAG, client_kw={"backoff_base": 0.01})


def assert_no_duplicates(env: CloseEnv) -> None:
    companies = [lead[env.company_cf] for lead in env.leads()]
    assert len(companies) == len(set(companies)) == 15
    users = [c[env.user_cf] for c in env.sim.contacts()]
    assert len(users) == len(set(users)) == 60


def test_faults_and_lag_change_nothing_in_the_end_state(close: CloseEnv) -> None:
    reqs = workload()
    clean = apply_in_batches(close, reqs)
    assert all(o.kind in ("created", "updated", "unchanged") for o in clean)
    expected = close.projection()

    close.fresh_org()
    close.sim.configure(fault_rate=0.05, ambiguous_rate=0.02, search_lag=LAG, random_seed=11)
    outs = apply_in_batches(close, reqs)
    stats = close.sim.stats()
    assert stats["faults_injected"] > 0 and stats["ambiguous_injected"] > 0
    assert [o.kind for o in outs if o.kind == "failed"] == []  # nothing lost
    assert_no_duplicates(close)
    assert close.projection() == expected


def test_ambiguous_creates_every_time_still_make_one_record_each(close: CloseEnv) -> None:
    close.sim.configure(ambiguous_rate=1.0, search_lag=LAG)
    outs = close.one(
        UpsertRequest(lead_company_id="acme", contact_user_id="u1"),
        UpsertRequest(lead_company_id="acme", contact_user_id="u2"),
        settle_seconds=2 * LAG,
    )
    assert [o.label for o in outs] == ["created", "created"]
    [lead] = close.leads()
    assert sorted(c[close.user_cf] for c in lead["contacts"]) == ["u1", "u2"]


def test_429_storms_are_waited_out_without_losing_requests(close: CloseEnv) -> None:
    close.sim.configure(limits_enabled=True, time_scale=20.0, storm_rate=0.02, storm_seconds=0.2, random_seed=5)
    outs = apply_in_batches(close, workload())
    assert all(o.kind != "failed" for o in outs)
    assert close.sim.stats()["storm_429"] > 0
    assert_no_duplicates(close)
