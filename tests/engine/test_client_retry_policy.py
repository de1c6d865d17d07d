"""The client's steps on their own: one attempt's answer classified, and the retry policy's decision on it."""

from __future__ import annotations

import httpx
import pytest

from closecrm.api.client import (
    AmbiguousWriteError,
    Call,
    CloseAPIError,
    CloseClient,
    classify_answer,
    classify_lost,
)
from closecrm.api.pacing import retry_after_seconds
from closecrm.api.retry import Backoff, Done, GiveUp, Kind, RetryPolicy, WaitOut

POLICY = RetryPolicy(max_attempts=4, max_rate_limited_waits=2, backoff_base=0.5, backoff_max=1.5)


def sent(method: str, path: str, times: int = 1) -> Call:
    call = Call(method, path, None, None)
    call.sent = times
    return call


def answer(status: int, payload: object, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=payload, headers=headers)


def test_an_answer_below_400_is_its_body() -> None:
    outcome = classify_answer(sent("GET", "lead/lead_1/"), answer(200, {"id": "lead_1"}), None)
    assert outcome.kind is Kind.OK
    assert POLICY.decide(outcome, 1, 0) == Done({"id": "lead_1"})


def test_a_429_waits_as_told_without_using_up_an_attempt() -> None:
    response = answer(
        429, {"error": "slow down"}, **{"retry-after": "2", "ratelimit": "limit=16; remaining=0; reset=2"}
    )
    outcome = classify_answer(sent("POST", "lead/", times=3), response, retry_after_seconds(response.headers))
    assert (outcome.kind, outcome.retry_after) == (Kind.RATE_LIMITED, 2.0)
    assert POLICY.decide(outcome, 1, 0) == WaitOut(2.0)
    # the last attempt allowed: a 429 still waits, as it is not a failed attempt
    assert POLICY.decide(outcome, 4, 1) == WaitOut(2.0)
    gave_up = POLICY.decide(outcome, 1, 2)
    assert isinstance(gave_up, GiveUp) and type(gave_up.error) is CloseAPIError
    assert str(gave_up.error) == "POST /lead/ -> 429: {'error': 'slow down'}"
    assert (gave_up.error.status, gave_up.error.attempts) == (429, 3)


def test_a_5xx_on_a_get_backs_off_exponentially_then_gives_up() -> None:
    outcome = classify_answer(sent("GET", "lead/lead_1/", times=4), answer(503, {"error": "busy"}), None)
    assert (outcome.kind, outcome.reason) == (Kind.TRANSIENT, "503")
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 1.5)]:  # base * 2**(n-1), capped at backoff_max
        decision = POLICY.decide(outcome, attempt, 0)
        assert isinstance(decision, Backoff) and ceiling / 2 <= decision.delay <= ceiling
    gave_up = POLICY.decide(outcome, 4, 0)
    assert isinstance(gave_up, GiveUp) and type(gave_up.error) is CloseAPIError
    assert (gave_up.error.status, gave_up.error.body, gave_up.error.attempts) == (503, {"error": "busy"}, 4)


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_error_leaves_a_write_in_doubt_but_not_a_read_or_a_search(status: int) -> None:
    write = classify_answer(sent("POST", "lead/"), answer(status, {"error": "gateway"}), None)
    assert write.kind is Kind.AMBIGUOUS
    decision = POLICY.decide(write, 1, 0)
    assert isinstance(decision, GiveUp) and isinstance(decision.error, AmbiguousWriteError)
    for method, path in [("GET", "lead/lead_1/"), ("POST", "data/search/"), ("PUT", "lead/lead_1/")]:
        outcome = classify_answer(sent(method, path), answer(status, {}), None)
        assert outcome.kind is Kind.TRANSIENT and isinstance(POLICY.decide(outcome, 1, 0), Backoff)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_a_write_whose_answer_was_lost_is_ambiguous_not_sent_again(method: str) -> None:
    request = httpx.Request(method, "http://close.test/api/v1/lead/lead_1/")
    for lost in (
        httpx.ReadTimeout("slow", request=request),
        httpx.RemoteProtocolError("gone", request=request),
    ):
        outcome = classify_lost(sent(method, "lead/lead_1/", times=2), lost)
        assert outcome.kind is Kind.AMBIGUOUS
        decision = POLICY.decide(outcome, 1, 0)
        assert isinstance(decision, GiveUp) and isinstance(decision.error, AmbiguousWriteError)
        assert decision.error.status is None and decision.error.attempts == 2
        assert str(decision.error) == f"{method} /lead/lead_1/ -> no response: '{type(lost).__name__}'"


def test_a_request_that_never_left_or_an_idempotent_one_is_sent_again() -> None:
    request = httpx.Request("POST", "http://close.test/api/v1/lead/")
    never_sent = classify_lost(sent("POST", "lead/"), httpx.ConnectError("refused", request=request))
    dropped_put = classify_lost(
        sent("PUT", "lead/lead_1/"), httpx.RemoteProtocolError("gone", request=request)
    )
    for outcome in (never_sent, dropped_put):
        assert outcome.kind is Kind.TRANSIENT and isinstance(POLICY.decide(outcome, 1, 0), Backoff)
    gave_up = POLICY.decide(dropped_put, 4, 0)
    assert isinstance(gave_up, GiveUp) and type(gave_up.error) is CloseAPIError
    assert str(gave_up.error) == "PUT /lead/lead_1/ -> no response: 'RemoteProtocolError'"


@pytest.mark.parametrize(("method", "status"), [("POST", 400), ("GET", 404), ("PUT", 403)])
def test_a_4xx_is_fatal_on_the_first_attempt(method: str, status: int) -> None:
    outcome = classify_answer(
        sent(method, "contact/"), answer(status, {"field-errors": {"emails": "bad"}}), None
    )
    assert outcome.kind is Kind.FATAL
    decision = POLICY.decide(outcome, 1, 0)
    assert isinstance(decision, GiveUp) and type(decision.error) is CloseAPIError
    assert (decision.error.status, decision.error.body) == (status, {"field-errors": {"emails": "bad"}})


def test_the_client_holds_one_policy_built_from_its_options() -> None:
    client = CloseClient(
        "http://close.test/api/v1/",
        "key",
        max_attempts=3,
        max_rate_limited_waits=7,
        backoff_base=0.1,
        backoff_max=2.0,
        http_backend="httpx",
    )
    assert client.retry == RetryPolicy(3, 7, 0.1, 2.0)
