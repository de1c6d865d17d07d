"""The aiohttp application: Close's routes under /api/v1/, the admin routes under /_sim/, and the request pipeline.

Both take the same HTTP Basic auth: one of the simulator's API keys as the username.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from closesim.config import SimConfig
from closesim.errors import (
    ApiError,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from closesim.faults import Faults
from closesim.groups import close_group
from closesim.ratelimit import RateLimiter, Verdict, header_value
from closesim.search import Query
from closesim.state import ORGANIZATION_ID, USER_ID, Database
from closesim.stats import Stats

API_PREFIX = "/api/v1"
LIST_MAX = 100
WRITE_METHODS = ("POST", "PUT", "DELETE")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Simulator:
    """Everything one simulated organisation holds: config, data, limits, faults and stats."""

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        self.store = Database(self.config)
        self.limiter = RateLimiter(self.config)
        self.faults = Faults(self.config)
        self.stats = Stats()

    def reset(self) -> None:
        """Forget all data, counters, windows and storms (the default statuses come back)."""
        self.store.reset()
        self.limiter.reset()
        self.faults.reset()
        self.stats.reset()

    def configure(self, **knobs: Any) -> None:
        """Apply knobs (ValueError on bad ones); setting random_seed restarts the fault dice from it."""
        self.config.update(**knobs)
        if "random_seed" in knobs:
            self.faults.reseed()

    def search(self, body: Any) -> dict[str, Any]:
        cfg = self.config
        query = Query(
            body,
            self.store.field_types(),
            term_case=cfg.term_case,
            fields_max=cfg.search_fields_max,
            cursor_ttl=cfg.cursor_ttl_seconds,
            cursor_max=cfg.cursor_max_results,
            text_fields=self.store.text_fields(),
            reject=frozenset(cfg.reject_shapes),
        )
        return self.store.search(query.run)


SIM = web.AppKey("sim", Simulator)
_AUTH_CACHE: dict[str, str | None] = {}


def make_app(sim: Simulator) -> web.Application:
    app = web.Application(middlewares=[_api_middleware], client_max_size=16 * 1024 * 1024)
    app[SIM] = sim
    r = app.router
    api = API_PREFIX
    r.add_get(f"{api}/me/", me)
    r.add_get(f"{api}/lead/", list_leads)
    r.add_post(f"{api}/lead/", create_lead)
    r.add_post(f"{api}/lead/merge/", merge_leads)  # before /lead/{id}/, which would take "merge" for an id
    r.add_get(f"{api}/lead/{{id}}/", get_lead)
    r.add_put(f"{api}/lead/{{id}}/", update_lead)
    r.add_delete(f"{api}/lead/{{id}}/", delete_lead)
    r.add_get(f"{api}/contact/", list_contacts)
    r.add_post(f"{api}/contact/", create_contact)
    r.add_get(f"{api}/contact/{{id}}/", get_contact)
    r.add_put(f"{api}/contact/{{id}}/", update_contact)
    r.add_delete(f"{api}/contact/{{id}}/", delete_contact)
    # Shared fields before /custom_field/{object_type}/, which would take "shared" for an object type.
    r.add_get(f"{api}/custom_field/shared/", list_shared_fields)
    r.add_post(f"{api}/custom_field/shared/", create_shared_field)
    r.add_get(f"{api}/custom_field/shared/{{id}}/", get_shared_field)
    r.add_post(f"{api}/custom_field/shared/{{id}}/association/", associate_shared_field)
    r.add_get(f"{api}/custom_field_schema/{{object_type}}/", get_custom_field_schema)
    r.add_get(f"{api}/activity/lead_merge/", list_lead_merges)
    r.add_get(f"{api}/custom_field/{{object_type}}/", list_custom_fields)
    r.add_post(f"{api}/custom_field/{{object_type}}/", create_custom_field)
    r.add_get(f"{api}/custom_field/{{object_type}}/{{id}}/", get_custom_field)
    r.add_delete(f"{api}/custom_field/{{object_type}}/{{id}}/", delete_custom_field)
    r.add_get(f"{api}/status/lead/", list_statuses)
    r.add_post(f"{api}/status/lead/", create_status)
    r.add_get(f"{api}/status/lead/{{id}}/", get_status)
    r.add_post(f"{api}/data/search/", search)
    r.add_get("/_sim/config", admin_get_config)
    r.add_patch("/_sim/config", admin_patch_config)
    r.add_get("/_sim/stats", admin_stats)
    r.add_post("/_sim/reset", admin_reset)
    r.add_post("/_sim/seed", admin_seed)
    r.add_get("/_sim/state", admin_state)
    r.add_post("/_sim/storm", admin_storm)
    r.add_get("/_sim/merges", admin_merges)
    return app


# ------------------------------------------------------------------ pipeline


def _api_key(request: web.Request, keys: list[str]) -> str | None:
    header = request.headers.get("Authorization")
    if not header:
        return None
    if header not in _AUTH_CACHE:
        user: str | None = None
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user = base64.b64decode(token.strip(), validate=True).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                user = None
        if len(_AUTH_CACHE) > 10_000:
            _AUTH_CACHE.clear()
        _AUTH_CACHE[header] = user
    user = _AUTH_CACHE[header]
    return user if user in keys else None


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _error(exc: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return _json(exc.body(), exc.status, headers)


@web.middleware
async def _api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(API_PREFIX + "/"):
        return await _admin(request, handler)
    sim = request.app[SIM]
    cfg = sim.config
    delay = sim.faults.delay()
    if delay:
        await asyncio.sleep(delay)
    method = request.method
    match_info = request.match_info
    http_exc = match_info.http_exception
    resource = match_info.route.resource
    template = resource.canonical[len(API_PREFIX) :] if resource is not None else "<unmatched>"
    endpoint = f"{method} {template}"

    api_key = _api_key(request, cfg.api_keys)
    if api_key is None:
        sim.stats.event("unauthorized")
        sim.stats.response(401)
        return _unauthorized()
    group = sim.limiter.group(method, template)
    sim.stats.request(group, endpoint)

    headers: dict[str, str] = {}
    whole = cfg.time_scale == 1.0
    storm = sim.faults.storm_remaining()
    if storm > 0:
        decision = Verdict(False, sim.limiter.limits(group)[0], 0, storm)
        sim.stats.event("storm_429")
    else:
        decision = sim.limiter.check(api_key, group)
        if not decision.allowed:
            sim.stats.event("rate_limited")
    headers["RateLimit"] = header_value(decision, cfg.ratelimit_separator, whole)
    if not decision.allowed:
        reset = headers["RateLimit"].rpartition("reset=")[2]
        headers["Retry-After"] = reset
        sim.stats.response(429)
        sim.stats.throttled(group)
        body = {
            "error": f"API limit exceeded for endpoint group {group!r}. Retry after {reset} seconds.",
            "rate_reset": round(decision.reset, 3),
            "rate_limit_type": "storm" if storm > 0 else group,
        }
        return _json(body, 429, headers)

    fault = sim.faults.fault_status()
    if fault is not None:
        sim.stats.event("faults_injected")
        sim.stats.response(fault)
        return _json({"error": "Simulated server error."}, fault, headers)

    try:
        if http_exc is not None:
            if http_exc.status == 405:
                allowed = ", ".join(sorted(getattr(http_exc, "allowed_methods", ()) or ()))
                raise MethodNotAllowed(
                    f"Method {method} is not allowed on {request.path} (allowed: {allowed})."
                )
            hint = "" if request.path.endswith("/") else " (Close's paths end with a slash)"
            raise NotFound(f"No such endpoint: {request.path}{hint}.")
        if method in ("POST", "PUT") and request.content_type != "application/json":
            raise UnsupportedMediaType(
                f"Unsupported media type {request.content_type!r}; send application/json."
            )
        response = await handler(request)
    except ApiError as exc:
        sim.stats.response(exc.status)
        return _error(exc, headers)
    response.headers.update(headers)

    if method in WRITE_METHODS and close_group(method, template) in ("lead_write", "contact_write"):
        outcome = sim.faults.ambiguous_outcome()
        if outcome is not None:
            sim.stats.event("ambiguous_injected")
            if outcome == "drop":
                sim.stats.response(0)
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError()
            sim.stats.response(int(outcome))
            return _json(
                {"error": "Simulated gateway error (the write was committed)."}, int(outcome), headers
            )
    sim.stats.response(response.status)
    return response


ADMIN_PREFIX = "/_sim"
_UNAUTHORIZED = "The API key is missing or invalid. Use HTTP Basic auth with the key as username."


def _unauthorized() -> web.Response:
    return _error(Unauthorized(_UNAUTHORIZED), {"WWW-Authenticate": 'Basic realm="Close"'})


async def _admin(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The admin routes reset, seed and dump the organisation, so they take the same key as the API
    # (a simulator bound to a shared interface must not be steerable by anyone who can reach it).
    # They are not counted in the stats and not rate limited: they are the test harness, not Close.
    path = request.path
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        if _api_key(request, request.app[SIM].config.api_keys) is None:
            return _unauthorized()
    if request.match_info.http_exception is not None:
        exc = request.match_info.http_exception
        return _json({"error": exc.reason}, exc.status)
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc)


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise ValidationFailed(["Request body is not valid JSON."]) from None


def _paging(request: web.Request) -> tuple[int, int]:
    try:
        skip = int(request.query.get("_skip", 0))
        limit = int(request.query.get("_limit", LIST_MAX))
    except ValueError:
        raise ValidationFailed(field_errors={"_limit": "_skip and _limit must be integers."}) from None
    if skip < 0 or limit < 0:
        raise ValidationFailed(field_errors={"_limit": "_skip and _limit must be non-negative."})
    return skip, min(limit, LIST_MAX)


def _select(record: dict[str, Any], request: web.Request) -> dict[str, Any]:
    fields = request.query.get("_fields")
    if not fields:
        return record
    wanted = {f.strip() for f in fields.split(",")}
    return {k: v for k, v in record.items() if k in wanted}


def _listing(request: web.Request, records: list[dict[str, Any]], total: int, skip: int) -> web.Response:
    data = [_select(r, request) for r in records]
    return _json({"has_more": skip + len(records) < total, "total_results": total, "data": data})


# ---------------------------------------------------------------- Close API


async def me(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    return _json(
        {
            "id": USER_ID,
            "first_name": "Simulated",
            "last_name": "User",
            "email": "sim@example.com",
            "organizations": [{"id": ORGANIZATION_ID, "name": "Simulated Organization"}],
            "api_key_count": len(sim.config.api_keys),
        }
    )


async def list_leads(request: web.Request) -> web.Response:
    if "query" in request.query:
        raise ValidationFailed(
            ["The simulator does not support ?query= on GET /lead/; use POST /data/search/."]
        )
    skip, limit = _paging(request)
    order = request.query.get("_order_by", "-date_created")
    if order not in ("date_created", "-date_created"):
        raise ValidationFailed(
            field_errors={"_order_by": "Only date_created and -date_created are supported."}
        )
    records, total = request.app[SIM].store.list_leads(skip, limit, descending=order.startswith("-"))
    return _listing(request, records, total, skip)


async def create_lead(request: web.Request) -> web.Response:
    return _json(request.app[SIM].store.create_lead(await _body(request)))


async def get_lead(request: web.Request) -> web.Response:
    return _json(_select(request.app[SIM].store.get_lead(request.match_info["id"]), request))


async def update_lead(request: web.Request) -> web.Response:
    return _json(request.app[SIM].store.update_lead(request.match_info["id"], await _body(request)))


async def delete_lead(request: web.Request) -> web.Response:
    request.app[SIM].store.delete_lead(request.match_info["id"])
    return _json({})


async def merge_leads(request: web.Request) -> web.Response:
    status = request.app[SIM].store.merge_leads(await _body(request))
    return _json({"merge_status": status})


async def list_contacts(request: web.Request) -> web.Response:
    skip, limit = _paging(request)
    records, total = request.app[SIM].store.list_contacts(request.query.get("lead_id"), skip, limit)
    return _listing(request, records, total, skip)


async def create_contact(request: web.Request) -> web.Response:
    return _json(request.app[SIM].store.create_contact(await _body(request)))


async def get_contact(request: web.Request) -> web.Response:
    return _json(_select(request.app[SIM].store.get_contact(request.match_info["id"]), request))


async def update_contact(request: web.Request) -> web.Response:
    return _json(request.app[SIM].store.update_contact(request.match_info["id"], await _body(request)))


async def delete_contact(request: web.Request) -> web.Response:
    request.app[SIM].store.delete_contact(request.match_info["id"])
    return _json({})


async def list_custom_fields(request: web.Request) -> web.Response:
    """Regular fields of one object type, paged with _skip/_limit (100 by default)."""
    return _page(request, request.app[SIM].store.custom_fields(request.match_info["object_type"]))


def _page(request: web.Request, records: list[dict[str, Any]]) -> web.Response:
    skip, limit = _paging(request)
    return _listing(request, records[skip : skip + limit], len(records), skip)


async def list_shared_fields(request: web.Request) -> web.Response:
    return _page(request, request.app[SIM].store.custom_fields("shared"))


async def create_shared_field(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise ValidationFailed(["Expected a JSON object."])
    body.pop("id", None)
    return _json(request.app[SIM].store.create_custom_field("shared", body))


async def get_shared_field(request: web.Request) -> web.Response:
    return _json(request.app[SIM].store.custom_field("shared", request.match_info["id"]))


async def associate_shared_field(request: web.Request) -> web.Response:
    return _json(request.app[SIM].store.associate(request.match_info["id"], await _body(request)))


async def get_custom_field_schema(request: web.Request) -> web.Response:
    """Every field (regular and shared) that can be set on an object type, in one answer."""
    return _json({"fields": request.app[SIM].store.schema(request.match_info["object_type"])})


async def list_lead_merges(request: web.Request) -> web.Response:
    return _page(request, request.app[SIM].store.lead_merge_activities(request.query.get("lead_id")))


async def create_custom_field(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise ValidationFailed(["Expected a JSON object."])
    body.pop("id", None)
    return _json(request.app[SIM].store.create_custom_field(request.match_info["object_type"], body))


async def get_custom_field(request: web.Request) -> web.Response:
    store = request.app[SIM].store
    return _json(store.custom_field(request.match_info["object_type"], request.match_info["id"]))


async def delete_custom_field(request: web.Request) -> web.Response:
    request.app[SIM].store.delete_custom_field(request.match_info["object_type"], request.match_info["id"])
    return _json({})


async def list_statuses(request: web.Request) -> web.Response:
    return _json({"data": request.app[SIM].store.statuses()})


async def create_status(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise ValidationFailed(["Expected a JSON object."])
    body.pop("id", None)
    return _json(request.app[SIM].store.create_status(body))


async def get_status(request: web.Request) -> web.Response:
    return _json(request.app[SIM].store.status(request.match_info["id"]))


async def search(request: web.Request) -> web.Response:
    return _json(request.app[SIM].search(await _body(request)))


# -------------------------------------------------------------------- admin


async def admin_get_config(request: web.Request) -> web.Response:
    return _json(request.app[SIM].config.to_json())


async def admin_patch_config(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise ValidationFailed(["Expected a JSON object of knobs."])
    sim = request.app[SIM]
    try:
        sim.configure(**body)
    except ValueError as exc:
        raise ValidationFailed([str(exc)]) from None
    return _json(sim.config.to_json())


async def admin_stats(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    return _json({**sim.stats.to_json(), **sim.store.counts()})


async def admin_reset(request: web.Request) -> web.Response:
    request.app[SIM].reset()
    return _json({"ok": True})


async def admin_seed(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    sim.store.seed(await _body(request))
    return _json({"ok": True, **sim.store.counts()})


async def admin_state(request: web.Request) -> web.Response:
    return _json(request.app[SIM].store.snapshot())


async def admin_merges(request: web.Request) -> web.Response:
    return _json({"data": request.app[SIM].store.merges()})


async def admin_storm(request: web.Request) -> web.Response:
    body = await _body(request) or {}
    seconds = body.get("seconds") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ValidationFailed(field_errors={"seconds": "A non-negative number is required."})
    request.app[SIM].faults.start_storm(float(seconds))
    return _json({"ok": True, "seconds": seconds})
