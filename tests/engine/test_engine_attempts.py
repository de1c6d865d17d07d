"""A failed request says how many times its failing call was sent: the outcome, the dead letter, the audit line."""

from __future__ import annotations

import pytest

from closecrm.engine import MAX_CREATE_ATTEMPTS
from closecrm.model import UpsertRequest
from pipeline.assemble import audit_line
from tests.engine.conftest import CloseEnv
from transforms.collapse import Pending
from transforms.outcomes import letter_for

pytestmark = pytest.mark.integration


def test_an_ambiguous_create_tried_three_times_says_three_attempts(close: CloseEnv) -> None:
    # Every POST is answered 502/504/dropped after it committed, and search lags far behind the
    # engine's settle bound: no attempt can be confirmed, so the create is sent three times.
    close.sim.configure(ambiguous_rate=1.0, search_lag=30.0)
    req = UpsertRequest(lead_company_id="acme", contact_user_id="u1", event_ids=("e1",))
    [out] = close.one(req, settle_seconds=0.05)
    assert out.label == "failed:ambiguous_write"
    assert out.attempts == MAX_CREATE_ATTEMPTS == 3
    assert close.sim.stats()["by_endpoint"]["POST /lead/"] == 3

    letter = letter_for(Pending("user:u1", req, ({"messageId": "e1"},)), out)
    assert letter.to_json()["attempts"] == 3
    assert '"attempts": 3' in audit_line((Pending("user:u1", req, ()), out))


def test_a_call_that_kept_failing_says_how_many_times_it_was_sent(close: CloseEnv) -> None:
    close.sim.configure(fault_rate=1.0)
    [out] = close.one(
        UpsertRequest(lead_company_id="acme", contact_user_id="u1"),
        client_kw={"max_attempts": 4, "backoff_base": 0.001, "backoff_max": 0.002},
    )
    assert out.kind == "failed" and out.reason in ("http_500", "http_502", "http_503")
    assert out.attempts == 4


def test_a_refused_request_was_sent_once(close: CloseEnv) -> None:
    [out] = close.one(
        UpsertRequest(lead_company_id="bad", contact_user_id="u1", contact_emails=("not an email",))
    )
    assert out.label == "failed:http_400" and out.attempts == 1
