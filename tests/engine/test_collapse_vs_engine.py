"""Property: collapsing a person's requests leaves Close exactly as applying every request in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closecrm.events.collapse import collapse
from closecrm.model import Flags, UpsertRequest
from tests.engine.conftest import CloseEnv

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)

# One person's traffic: mostly the same identity, sometimes a second email or another company,
# with scalars that change and phones/urls that get appended.
step = st.fixed_dictionaries(
    {
        "company": st.sampled_from(["c0", "c0", "c0", "c1", None]),
        "user": st.sampled_from(["u0", "u0", "u0", None]),
        "emails": st.sampled_from([("ann@x.com",), ("ann@x.com",), ("ANN@x.com",), ("ann2@x.com",), ()]),
        "phones": st.sampled_from([(), (), ("+14155550100",), ("(415) 555-0101",)]),
        "urls": st.sampled_from([(), ("https://ann.example.com",), ("ann.example.com/",)]),
        "name": st.sampled_from([None, "Ann", "Ann B."]),
        "title": st.sampled_from([None, "CTO", "CEO"]),
        "lead_name": st.sampled_from([None, "Acme", "Acme Inc"]),
        "plan": st.sampled_from([None, "free", "pro"]),
        "flags": st.sampled_from([Flags(), Flags(), Flags(allow_creating_duplicate_contacts=False)]),
    }
)


def to_request(env: CloseEnv, n: int, s: dict) -> UpsertRequest:
    return UpsertRequest(
        lead_company_id=s["company"],
        lead_name=s["lead_name"],
        contact_user_id=s["user"],
        contact_emails=s["emails"],
        contact_phones=s["phones"],
        contact_urls=s["urls"],
        contact_name=s["name"],
        contact_title=s["title"],
        contact_custom_fields={env.plan_cf: s["plan"]} if s["plan"] else {},
        flags=s["flags"],
        event_ids=(f"e{n}",),
        timestamp=(T0 + timedelta(seconds=n)).isoformat(),
    )


def fresh(env: CloseEnv) -> None:
    env.fresh_org()
    env.plan_cf = env.sim.create_custom_field("contact", "Plan")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=10))
def test_collapsed_requests_reach_the_same_state_as_every_request_in_order(close: CloseEnv, steps) -> None:
    fresh(close)
    every = [to_request(close, n, s) for n, s in enumerate(steps)]
    close.one(*every)
    expected = close.projection()

    fresh(close)
    # custom-field ids differ between the two orgs; the projection compares by field name
    every = [to_request(close, n, s) for n, s in enumerate(steps)]
    collapsed = collapse(every, by_user_id=True)  # the env's user-id field is configured
    assert len(collapsed) <= len(every)
    close.one(*collapsed)
    assert close.projection() == expected
