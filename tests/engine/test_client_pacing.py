"""CloseClient: error classes, retries, ambiguous writes, pacing under real limits, and the key never leaking."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from closecrm.api.client import AmbiguousWriteError, CloseAPIError, CloseClient, endpoint_group
from closecrm.engine import UpsertEngine
from closecrm.model import UpsertRequest
from tests.engine.conftest import CloseEnv

SECRET = "sk_live_DO_NOT_LEAK_123456"


def mock_client(handler, **kw) -> CloseClient:  # type: ignore[no-untyped-def]
    kw.setdefault("backoff_base", 0.001)
    return CloseClient("http://close.test/api/v1/", SECRET, transport=httpx.MockTransport(handler), **kw)


def ok(payload: object = None, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=payload if payload is not None else {}, headers=headers)


@pytest.mark.parametrize(
    ("method", "path", "group"),
    [
        ("POST", "data/search/", "search"),
        ("GET", "lead/lead_1/", "read"),
        ("POST", "lead/", "lead_write"),
        ("PUT", "contact/cont_1/", "contact_write"),
        ("GET", "me/", "read"),
        ("POST", "status/lead/", "other"),
    ],
)
def test_endpoint_groups_match_closes(method: str, path: str, group: str) -> None:
    assert endpoint_group(method, path) == group


def test_basic_auth_is_the_key_with_an_empty_password() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return ok({"id": "user_1"})

    async def go() -> None:
        async with mock_client(handler) as client:
            await client.get("me/")

    asyncio.run(go())
    assert seen == [httpx.BasicAuth(SECRET, "")._auth_header]


def test_4xx_is_permanent_and_carries_closes_body() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return ok({"errors": [], "field-errors": {"emails": "bad"}}, 400)

    async def go() -> CloseAPIError:
        async with mock_client(handler) as client:
            with pytest.raises(CloseAPIError) as info:
                await client.post("contact/", {"emails": []})
            return info.value

    err = asyncio.run(go())
    assert (err.status, err.method, err.path) == (400, "POST", "/contact/")
    assert err.body["field-errors"] == {"emails": "bad"}
    assert len(calls) == 1


def test_5xx_and_timeouts_retry_with_backoff_then_succeed() -> None:
    answers = iter(["timeout", 503, 500, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if answer == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        return ok({"id": "lead_1"}, answer)  # type: ignore[arg-type]

    async def go() -> tuple[object, int]:
        async with mock_client(handler) as client:
            return await client.get("lead/lead_1/"), client.retries

    body, retries = asyncio.run(go())
    assert body == {"id": "lead_1"} and retries == 3


def test_retries_are_bounded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return ok({"error": "down"}, 500)

    async def go() -> None:
        async with mock_client(handler, max_attempts=3) as client:
            with pytest.raises(CloseAPIError) as info:
                await client.put("lead/lead_1/", {"name": "x"})
            assert info.value.status == 500 and client.retries == 2

    asyncio.run(go())


@pytest.mark.parametrize("failure", [502, 504, "drop", "timeout"])
def test_an_ambiguous_post_is_not_retried_blindly(failure: object) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if failure == "drop":
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        if failure == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        return ok({"error": "gateway"}, failure)  # type: ignore[arg-type]

    async def go() -> None:
        async with mock_client(handler) as client:
            with pytest.raises(AmbiguousWriteError):
                await client.post("lead/", {"name": "x"})

    asyncio.run(go())
    assert len(calls) == 1


def test_a_put_after_a_dropped_connection_is_retried_because_it_is_idempotent() -> None:
    answers = iter(["drop", 200])

    def handler(request: httpx.Request) -> httpx.Response:
        if next(answers) == "drop":
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        return ok({"id": "lead_1"})

    async def go() -> object:
        async with mock_client(handler) as client:
            return await client.put("lead/lead_1/", {"name": "x"})

    assert asyncio.run(go()) == {"id": "lead_1"}


def test_429_waits_as_told_and_counts_throttled_time() -> None:
    answers = iter([429, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        headers = (
            {"ratelimit": "limit=16; remaining=0; reset=0.2", "retry-after": "0.2"} if status == 429 else {}
        )
        return ok({"data": [], "cursor": None}, status, **headers)

    async def go() -> CloseClient:
        async with mock_client(handler) as client:
            await client.post("data/search/", {})
            return client

    client = asyncio.run(go())
    assert client.rate_limited == 1 and client.throttled_seconds >= 0.19
    assert client.calls_by_group["search"] == 2


def test_the_key_never_appears_in_reprs_errors_outcomes_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/lead/"):
            raise httpx.ReadTimeout(f"timed out {request.url}", request=request)
        if request.url.path.endswith("/data/search/"):
            return ok({"data": [], "cursor": None})
        return ok({"error": "nope"}, 401)

    async def go() -> list[str]:
        async with mock_client(handler) as client:
            texts = [repr(client), str(client.counters())]
            for call in (client.get("me/"), client.post("lead/", {})):
                try:
                    await call
                except CloseAPIError as exc:
                    texts += [str(exc), repr(exc), repr(exc.body)]
            engine = UpsertEngine(client, close_settings())
            try:
                await engine.validate_settings()
            except Exception as exc:  # noqa: BLE001
                texts.append(str(exc))
            outcome = await engine.upsert_one(UpsertRequest(contact_emails=("a@b.co",)))
            texts.append(json.dumps(outcome.to_json(), default=str))
            texts.append(repr(engine.__dict__))
            return texts

    texts = asyncio.run(go())
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert not [t for t in texts if SECRET in t]
    assert "****" in texts[0]


def close_settings():  # type: ignore[no-untyped-def]
    from closecrm.model import Settings

    return Settings("cf_company", "cf_user")


# ------------------------------------------------------------ against the sim


@pytest.mark.integration
def test_pacing_keeps_a_run_inside_the_limits_without_429s(close: CloseEnv) -> None:
    """Limits on, scaled 10x: 150 creates and their lookups go through with (almost) no 429s."""
    close.sim.configure(limits_enabled=True, time_scale=10.0)
    reqs = [
        UpsertRequest(lead_company_id=f"co{i % 50}", contact_user_id=f"u{i}", contact_emails=(f"u{i}@x.com",))
        for i in range(150)
    ]

    async def go(engine: UpsertEngine) -> tuple[list[str], int]:
        outs = []
        for i in range(0, len(reqs), 50):
            outs += await engine.upsert_batch(reqs[i : i + 50])
        return [o.kind for o in outs], engine.client.rate_limited

    kinds, client_429s = close.run(go, max_concurrency=16, client_kw={"max_in_flight": 32})
    assert kinds == ["created"] * 150
    assert close.sim.stats()["responses_429"] <= 2
    assert client_429s == close.sim.stats()["responses_429"]
    assert len(close.leads()) == 50


@pytest.mark.integration
def test_a_429_storm_is_waited_out(close: CloseEnv) -> None:
    close.sim.configure(limits_enabled=True)
    close.sim.start_storm(0.5)
    [out] = close.one(UpsertRequest(lead_company_id="acme", contact_user_id="u1"))
    assert out.label == "created"
    assert close.sim.stats()["storm_429"] >= 1
