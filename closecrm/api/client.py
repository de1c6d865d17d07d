"""CloseClient: one keep-alive httpx client for Close's API, paced per learned rate budget, with bounded retries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiohttp.helpers
import httpx
import yarl

from closecrm.api.budgets import Budgets
from closecrm.api.counters import Totals
from closecrm.api.defaults import DEFAULT_BUDGET_SHARE, DEFAULT_CLOSE_URL
from closecrm.api.pacing import GroupPacer, parse_ratelimit, retry_after_seconds
from closecrm.api.retry import AttemptResult, Backoff, Done, GiveUp, Kind, RetryPolicy, WaitOut
from closecrm.secret import ApiKey

log = logging.getLogger(__name__)

GROUPS = ("search", "lead_write", "contact_write", "read", "other")
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# A 502/504 or a lost connection after the request went out: the write may or may not have happened.
AMBIGUOUS_STATUSES = frozenset({502, 504})
# Names of the client's running totals (CloseClient.totals).
CALLS_IN_GROUP = "calls:"  # + endpoint_group(), a reporting category (pacing learns its own pools)
CALLS_TO_ENDPOINT = "endpoint:"  # + "METHOD /path/{id}/"
RATE_LIMITED = "rate_limited"  # 429 answers
RETRIES = "retries"
THROTTLED_SECONDS = "throttled_seconds"  # waited for the pacer


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport on aiohttp's connection pool and C HTTP parser.

    httpx's own pool (httpcore + h11 + anyio) costs enough CPU per call to cap a client below the
    budget the pacer allows; aiohttp does the same keep-alive HTTP/1.1 for a fraction of that. The httpx API on top is unchanged (auth, base URL,
    timeouts, error classes), so ``transport=httpx.MockTransport(...)`` still works in tests.
    Errors map to httpx's: no connection -> ConnectError/ConnectTimeout (safe to retry anything);
    a timeout or a dropped connection after the request went out -> ReadTimeout/RemoteProtocolError.
    """

    def __init__(self, limits: httpx.Limits, *, trust_env: bool = True) -> None:
        self._limits = limits
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # aiohttp's trust_env looks proxies (and .netrc) up in a thread on every request; httpx
        # reads them once. Same here: the env proxy per origin, looked up once.
        self._proxies: dict[tuple[str, str | None, int | None], tuple[yarl.URL | None, Any]] = {}

    def _proxy_for(self, url: yarl.URL) -> tuple[yarl.URL | None, Any]:
        origin = (url.scheme, url.host, url.port)
        if origin not in self._proxies:
            found: tuple[yarl.URL | None, Any] = (None, None)
            if self._trust_env:
                try:
                    found = aiohttp.helpers.get_env_proxy_for_url(url)
                except LookupError:
                    pass
            self._proxies[origin] = found
        return self._proxies[origin]

    def _session_for_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            limit = self._limits.max_connections or 100
            connector = aiohttp.TCPConnector(
                limit=limit,
                keepalive_timeout=self._limits.keepalive_expiry or 15.0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes Content-Encoding itself
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
                trust_env=False,  # see _proxy_for
                timeout=aiohttp.ClientTimeout(total=None),
            )
            _no_blind_resend(self._session)
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session_for_loop()
        timeouts = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=timeouts.get("connect"),
            connect=timeouts.get("pool"),
            sock_read=timeouts.get("read"),
        )
        body = request.content
        url = yarl.URL(str(request.url), encoded=True)
        proxy, proxy_auth = self._proxy_for(url)
        sent = False
        try:
            async with session.request(
                request.method,
                url,
                proxy=proxy,
                proxy_auth=proxy_auth,
                headers=request.headers.multi_items(),
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
                compress=None,
            ) as resp:
                sent = True
                content = await resp.read()
                return httpx.Response(
                    resp.status,
                    headers=resp.raw_headers,
                    stream=httpx.ByteStream(content),
                    request=request,
                    extensions={"http_version": b"HTTP/1.1"},
                )
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from None
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from None
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from None
        except aiohttp.ClientPayloadError as exc:
            raise httpx.ReadError(str(exc), request=request) from None
        except (aiohttp.ClientError, OSError) as exc:
            if (
                not sent
                and isinstance(exc, aiohttp.ClientConnectionError)
                and not isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
            ):
                raise httpx.ConnectError(str(exc), request=request) from None
            raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request) from None

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            try:
                await self._session.close()
            except RuntimeError:  # its event loop is gone
                pass
        self._session = None


def _no_blind_resend(session: aiohttp.ClientSession) -> None:
    """aiohttp sends an idempotent request (DELETE among them) again by itself when a kept-alive
    connection drops before the answer. A delete whose answer is lost must be looked at before it
    is sent again (engine/ambiguity.py), and every other retry is this client's own, so that resend
    is off. aiohttp 3 has no public switch for it: the private flag is checked, loudly."""
    if not isinstance(getattr(session, "_retry_connection", None), bool):
        raise RuntimeError(
            f"aiohttp {aiohttp.__version__}: ClientSession._retry_connection is gone; check how this "
            "version re-sends a request when a kept-alive connection drops, before using it"
        )
    session._retry_connection = False


class CloseAPIError(Exception):
    """A request Close refused (4xx other than 429) or that kept failing after the retries."""

    def __init__(
        self,
        status: int | None,
        body: Any,
        method: str,
        path: str,
        message: str | None = None,
        *,
        attempts: int = 1,
    ) -> None:
        self.status = status
        self.body = body
        self.method = method
        self.path = path
        self.attempts = attempts  # times the call was sent (retries and waits after a 429 included)
        super().__init__(
            message or f"{method} {path} -> {status if status is not None else 'no response'}: {body!r}"
        )


class AmbiguousWriteError(CloseAPIError):
    """A POST or DELETE whose outcome is unknown (timeout, dropped connection, 502/504): look before sending again."""


# Writes a lost answer leaves in doubt and that are not sent again blindly: a create could be
# made twice; a delete or a lead merge is looked at first (engine/ambiguity.py).
_AMBIGUOUS_METHODS = frozenset({"POST", "DELETE"})


def endpoint_group(method: str, path: str) -> str:
    """The category a call is counted under in the job's figures (search, read, lead_write,
    contact_write, other). Pacing does not use it: Close's real groups are learned (closecrm/api/budgets.py)."""
    p = "/" + path.strip("/") + "/"
    method = method.upper()
    if p.startswith("/data/search/"):
        return "search"
    if method == "GET":
        return "read"
    if p.startswith("/lead/"):
        return "lead_write"
    if p.startswith("/contact/"):
        return "contact_write"
    return "other"


class CloseClient:
    """Async Close API client.

    Each endpoint is paced by the pool of endpoints its answers show to share one rate budget
    (closecrm/api/budgets.py). ``budget_share`` is the fraction of each budget this client may use (N workers
    sharing one key: 1/N). ``max_in_flight`` bounds concurrent requests (Little's law: Close's
    default budgets, ~100 calls/s over all groups, at ~0.3 s per call need ~30 in flight). 429s wait as told and
    retry; 5xx and timeouts retry with jittered exponential back-off up to ``max_attempts``; an
    ambiguous POST raises :class:`AmbiguousWriteError`; any other 4xx raises :class:`CloseAPIError`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_CLOSE_URL,
        api_key: ApiKey | str | None = None,
        *,
        budget_share: float = DEFAULT_BUDGET_SHARE,
        max_in_flight: int = 32,
        max_attempts: int = 5,
        max_rate_limited_waits: int = 30,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_backend: str = "aiohttp",
    ) -> None:
        if api_key is None:
            raise ValueError("CloseClient needs an API key")
        key = api_key if isinstance(api_key, ApiKey) else ApiKey(api_key)
        self.base_url = base_url.rstrip("/") + "/"
        self.budget_share = budget_share
        self.retry = RetryPolicy(max_attempts, max_rate_limited_waits, backoff_base, backoff_max)
        limits = limits or httpx.Limits(
            max_connections=max_in_flight, max_keepalive_connections=max_in_flight, keepalive_expiry=30.0
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            auth=httpx.BasicAuth(key.reveal(), ""),
            timeout=timeout,
            limits=limits,
            # "aiohttp" (default): httpx's API on aiohttp's pool (less CPU per call; see
            # AiohttpTransport). "httpx": httpx's own pool.
            transport=transport
            if transport is not None or http_backend != "aiohttp"
            else AiohttpTransport(limits),
            headers={"accept": "application/json"},
        )
        del key  # the only copy now lives in the auth header httpx builds
        self._slots = asyncio.Semaphore(max_in_flight)
        self._budgets = Budgets(budget_share)
        # Running totals: added on the thread of the event loop this client runs on, read by the job's
        # metrics from another thread, so always through `totals` (thread-safe; see closecrm/api/counters.py).
        self.totals = Totals()
        # Latency samples, drained by the one owner that reports them (deque append/popleft are atomic).
        self.latencies_ms: deque[float] = deque(maxlen=10_000)

    def __repr__(self) -> str:
        return f"CloseClient(base_url={self.base_url!r}, api_key=****)"

    @property
    def calls_by_group(self) -> Counter[str]:
        return Counter({group: int(n) for group, n in self.totals.snapshot(CALLS_IN_GROUP).items()})

    @property
    def calls_by_endpoint(self) -> Counter[str]:
        return Counter({shape: int(n) for shape, n in self.totals.snapshot(CALLS_TO_ENDPOINT).items()})

    @property
    def calls(self) -> int:
        return sum(self.calls_by_group.values())

    @property
    def rate_limited(self) -> int:
        return int(self.totals.get(RATE_LIMITED))

    @property
    def retries(self) -> int:
        return int(self.totals.get(RETRIES))

    @property
    def throttled_seconds(self) -> float:
        return self.totals.get(THROTTLED_SECONDS)

    def pacer(self, method: str, path: str) -> GroupPacer:
        """The pacer of the budget an endpoint is known to share (its own until the headers say more)."""
        return self._budgets.pacer(f"{method.upper()} /{_shape(path.lstrip('/'))}")

    def budget_pools(self) -> list[list[str]]:
        """Endpoints that share one rate budget, as learned from the headers so far."""
        return self._budgets.pools()

    def counters(self) -> dict[str, Any]:
        """The running totals, all read at one instant."""
        totals = self.totals.snapshot()
        by_group = {
            name[len(CALLS_IN_GROUP) :]: int(n)
            for name, n in totals.items()
            if name.startswith(CALLS_IN_GROUP)
        }
        return {
            "calls": sum(by_group.values()),
            "calls_by_group": by_group,
            "rate_limited": int(totals.get(RATE_LIMITED, 0)),
            "retries": int(totals.get(RETRIES, 0)),
            "throttled_seconds": round(totals.get(THROTTLED_SECONDS, 0.0), 3),
        }

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> CloseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ verbs

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, json=body)

    async def put(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, json=body)

    async def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """One logical call, paced and retried; returns the decoded JSON body.

        A chain of short steps: `_attempt` (a pacer ticket and a slot around one send, its answer
        classified), then `retry` decides: the body, an error raised, or another attempt.
        """
        call = Call(method.upper(), path.lstrip("/"), json, params)
        attempt, rate_limited = 1, 0
        while True:
            call.sent += 1
            outcome = await self._attempt(call)
            match self.retry.decide(outcome, attempt, rate_limited):
                case Done(body):
                    return body
                case GiveUp(error):
                    raise error
                case WaitOut():
                    rate_limited += 1
                case Backoff(delay):
                    await self._back_off(call, outcome, attempt, delay)
                    attempt += 1

    async def _attempt(self, call: Call) -> AttemptResult:
        """One send, paced by the budget its endpoint shares; what came back, classified."""
        pacer = self._budgets.pacer(call.endpoint)  # pools may merge or split between attempts
        waited, ticket = await pacer.acquire_ticket()
        if waited:
            self.totals.add(THROTTLED_SECONDS, waited)
        started = time.monotonic()
        try:
            response, sent_at = await self._send(call, pacer, ticket)
        except httpx.TransportError as exc:
            pacer.cancelled(ticket)
            return classify_lost(call, exc)
        except BaseException:
            # Not an HTTP failure (a body that cannot be encoded, a cancelled task): the call
            # never got an answer, and a ticket left in flight would hold the pacer's probe forever.
            pacer.cancelled(ticket)
            raise
        self.latencies_ms.append((time.monotonic() - started) * 1000)
        retry_after = self._settle(call, pacer, ticket, response, sent_at)
        return classify_answer(call, response, retry_after)

    async def _send(self, call: Call, pacer: GroupPacer, ticket: int) -> tuple[httpx.Response, float]:
        """One HTTP request in one of the in-flight slots, counted as a call; and when it went out."""
        async with self._slots:
            pacer.sending(ticket)
            sent_at = time.monotonic()
            self.totals.add(CALLS_IN_GROUP + call.group)
            self.totals.add(CALLS_TO_ENDPOINT + call.endpoint)
            response = await self._http.request(call.method, call.path, json=call.json, params=call.params)
        return response, sent_at

    def _settle(
        self, call: Call, pacer: GroupPacer, ticket: int, response: httpx.Response, sent_at: float
    ) -> float | None:
        """What an answer tells pacing (its budget, a 429's wait, its endpoint's pool); the 429's wait."""
        rl = parse_ratelimit(response.headers.get("ratelimit"))
        if response.status_code != 429:
            pacer.done(rl, ticket=ticket)
            self._budgets.observe(call.endpoint, rl, sent_at)
            return None
        wait = retry_after_seconds(response.headers)
        pacer.done(rl, throttled=True, retry_after=wait, ticket=ticket)
        self.totals.add(RATE_LIMITED)
        return wait

    async def _back_off(self, call: Call, outcome: AttemptResult, attempt: int, delay: float) -> None:
        self.totals.add(RETRIES)
        log.debug(
            "retrying %s /%s after %s (attempt %d)", call.method, _shape(call.path), outcome.reason, attempt
        )
        await asyncio.sleep(delay)


@dataclass
class Call:
    """One logical call, across its attempts."""

    method: str
    path: str
    json: Any
    params: dict[str, Any] | None
    sent: int = 0  # times sent so far (429 waits included)
    group: str = field(init=False)  # endpoint_group(): what the figures count it under
    endpoint: str = field(init=False)  # "METHOD /path/{id}/": what pacing learns budgets for
    # A write whose lost answer leaves it in doubt (a search is a POST that writes nothing).
    may_be_ambiguous: bool = field(init=False)

    def __post_init__(self) -> None:
        self.group = endpoint_group(self.method, self.path)
        self.endpoint = f"{self.method} /{_shape(self.path)}"
        self.may_be_ambiguous = self.method in _AMBIGUOUS_METHODS and self.group != "search"

    @property
    def where(self) -> str:
        return "/" + self.path


# No connection was made: the request never reached Close, so any method is safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def classify_answer(call: Call, response: httpx.Response, retry_after: float | None) -> AttemptResult:
    """An answer: its body, a 429 to wait out, a 5xx to retry, or a refusal (4xx, a write in doubt)."""
    status = response.status_code
    if status < 400:
        return AttemptResult(Kind.OK, body=_body(response))
    if status == 429:
        kind = Kind.RATE_LIMITED
    elif status < 500:
        kind = Kind.FATAL
    elif call.may_be_ambiguous and status in AMBIGUOUS_STATUSES:
        kind = Kind.AMBIGUOUS
    else:
        kind = Kind.TRANSIENT
    error = (AmbiguousWriteError if kind is Kind.AMBIGUOUS else CloseAPIError)(
        status, _body(response), call.method, call.where, attempts=call.sent
    )
    return AttemptResult(kind, error=error, retry_after=retry_after, reason=str(status))


def classify_lost(call: Call, exc: httpx.TransportError) -> AttemptResult:
    """No answer. Never sent: safe to send again. Lost after sending: a write is in doubt."""
    name = type(exc).__name__
    in_doubt = call.may_be_ambiguous and not isinstance(exc, _NOT_SENT)
    error = (AmbiguousWriteError if in_doubt else CloseAPIError)(
        None, name, call.method, call.where, attempts=call.sent
    )
    return AttemptResult(Kind.AMBIGUOUS if in_doubt else Kind.TRANSIENT, error=error, reason=name)


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _shape(path: str) -> str:
    """`lead/lead_abc/` -> `lead/{id}/`, for per-endpoint counters."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    names = ("custom_field", "custom_field_schema", "lead_merge")  # path words with an underscore, not ids
    return "".join(("{id}" if "_" in p and p not in names else p) + "/" for p in parts)
