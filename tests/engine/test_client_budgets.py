"""Pacing without a group table: the client learns which endpoints share a budget from the headers,
against a simulator whose grouping and windows differ from anything the client assumes."""

from __future__ import annotations

import asyncio
import time

import pytest

from closecrm.api.budgets import VOTES, Budgets
from closecrm.api.client import CloseClient
from closecrm.api.pacing import RateLimit
from closesim import SimServer

pytestmark = pytest.mark.integration


def foreign(sim: SimServer, time_scale: float) -> None:
    """The simulator's "foreign" grouping: lead and contact writes share one budget (120 per 2 s),
    GETs of records another (40 per 1 s), /me/ and the definitions a third with an 8 s window."""
    sim.configure(limits_enabled=True, rate_groups="foreign", time_scale=time_scale)


async def _writes(client: CloseClient, n: int, workers: int = 32) -> float:
    """n writes, half lead creations and half contact creations, from `workers` tasks; seconds taken."""
    lead = await client.post("lead/", {"name": "base"})
    jobs = iter(range(n))

    async def worker() -> None:
        for i in jobs:
            if i % 2:
                await client.post("contact/", {"lead_id": lead["id"], "name": f"c{i}"})
            else:
                await client.post("lead/", {"name": f"l{i}"})

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.monotonic() - started


def test_writes_that_share_a_foreign_group_stay_within_it(sim: SimServer) -> None:
    """The client's old groups paced lead and contact writes apart, each at the whole budget; here
    they share one, so the client must find that out from the headers and pace them as one."""
    time_scale = 2.0
    foreign(sim, time_scale)
    n = 960

    async def go() -> tuple[float, CloseClient]:
        async with CloseClient(sim.base_url, sim.api_key) as client:
            return await _writes(client, n), client

    seconds, client = asyncio.run(go())
    stats = sim.stats()
    # Paced apart, each at the whole budget, the two endpoints draw 429s; paced as one, next to none.
    assert stats["responses_429"] <= 0.005 * stats["requests_total"], stats
    budget = 120 / 2.0 * time_scale  # the shared write group, per second
    bound = n / budget
    # Budget use: bench/pipeline_budget.py measures it; here only a floor a busy 2-core machine keeps.
    assert bound / seconds >= 0.6, (seconds, bound)
    assert ["POST /contact/", "POST /lead/"] in client.budget_pools()


def test_a_long_window_on_one_endpoint_does_not_slow_the_others(sim: SimServer) -> None:
    """/me/ answers with an 8 s window; reading records (a 1 s window) must still go at its own rate,
    not at the rate of the longest window any GET has shown."""
    time_scale = 2.0
    foreign(sim, time_scale)
    n = 240

    async def go() -> float:
        async with CloseClient(sim.base_url, sim.api_key) as client:
            lead = await client.post("lead/", {"name": "read me"})
            await client.get("me/")
            jobs = iter(range(n))

            async def worker() -> None:
                for _ in jobs:
                    await client.get(f"lead/{lead['id']}/")

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(16)))
            return time.monotonic() - started

    seconds = asyncio.run(go())
    bound = n / (40 / 1.0 * time_scale)
    assert seconds <= 2 * bound + 1.0, (seconds, bound)
    assert sim.stats()["responses_429"] <= 0.01 * n


def test_endpoints_with_their_own_counters_are_kept_apart(sim: SimServer) -> None:
    """Close's grouping as the simulator knows it: lead and contact writes have a budget each, so
    learning must not merge them (that would halve the write rate)."""
    sim.configure(limits_enabled=True, time_scale=2.0)

    async def go() -> list[list[str]]:
        async with CloseClient(sim.base_url, sim.api_key) as client:
            await _writes(client, 400)
            return client.budget_pools()

    pools = asyncio.run(go())
    assert ["POST /contact/"] in pools and ["POST /lead/"] in pools
    assert sim.stats()["responses_429"] <= 4


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_shared_counter_merges_and_a_second_counter_splits() -> None:
    """The rule on its own: a remaining that goes down across two endpoints is a vote; one that does
    not is proof of two counters."""
    clock = Clock()
    budgets = Budgets(1.0, clock=clock)
    a, b = budgets.pacer("POST /lead/"), budgets.pacer("POST /contact/")
    assert a is not b
    remaining = 100
    for i in range(2 * VOTES + 1):
        endpoint = ("POST /lead/", "POST /contact/")[i % 2]
        sent = clock.now + 0.001
        clock.now += 0.01
        remaining -= 1
        budgets.observe(endpoint, RateLimit(120, remaining, 2.0), sent)
    assert budgets.pacer("POST /lead/") is budgets.pacer("POST /contact/")
    # A third endpoint with the same limit whose remaining is higher: its own counter.
    sent = clock.now + 0.001
    clock.now += 0.01
    budgets.observe("PUT /lead/{id}/", RateLimit(120, 119, 2.0), sent)
    assert budgets.pools() == [["POST /contact/", "POST /lead/"], ["PUT /lead/{id}/"]]
    # Proof against a merged pair splits it.
    sent = clock.now + 0.001
    clock.now += 0.01
    budgets.observe("POST /contact/", RateLimit(120, 119, 2.0), sent)
    assert ["POST /contact/"] in budgets.pools() and ["POST /lead/"] in budgets.pools()


def _alternate(budgets: Budgets, clock: Clock, remainings: list[int], gap: float) -> None:
    for i, remaining in enumerate(remainings):
        sent = clock.now + 0.001
        clock.now += gap
        budgets.observe(("POST /lead/", "PUT /lead/{id}/")[i % 2], RateLimit(40, remaining, 1.0), sent)


def test_whole_second_resets_merge_on_votes_both_ways_despite_a_window_turning() -> None:
    """Close's resets are whole seconds: no window end is sure, so close answers are tallied, and a
    window that turns between two of them (a higher remaining) does not keep a shared counter apart."""
    clock = Clock()
    budgets = Budgets(1.0, clock=clock)
    _alternate(budgets, clock, [30, 29, 28, 39, 38, 37, 36, 35, 34, 33], gap=0.01)
    assert budgets.pools() == [["POST /lead/", "PUT /lead/{id}/"]]


def test_whole_second_answers_far_apart_are_no_evidence() -> None:
    clock = Clock()
    budgets = Budgets(1.0, clock=clock)
    _alternate(budgets, clock, list(range(39, 19, -1)), gap=0.5)
    assert budgets.pools() == [["POST /lead/"], ["PUT /lead/{id}/"]]


def test_two_counters_in_whole_seconds_stay_apart() -> None:
    """A busy endpoint and a quiet one, each with its own counter: the quiet one's answers keep
    showing more left than the busy one's, which is proof against sharing."""
    clock = Clock()
    budgets = Budgets(1.0, clock=clock)
    busy, quiet = 39, 39
    for i in range(60):
        sent = clock.now + 0.001
        clock.now += 0.01
        if i % 4 == 3:
            quiet -= 1
            budgets.observe("POST /lead/", RateLimit(40, quiet, 1.0), sent)
        else:
            busy = busy - 1 if busy > 0 else 39
            budgets.observe("POST /contact/", RateLimit(40, busy, 1.0), sent)
    assert budgets.pools() == [["POST /contact/"], ["POST /lead/"]]


def test_a_shared_close_group_is_learned_with_whole_second_resets(sim: SimServer) -> None:
    """Close's grouping at its own speed (whole-second resets): lead creations and lead updates share
    lead_write, which the client finds out without being told."""
    sim.configure(limits_enabled=True, time_scale=1.0)

    async def go() -> CloseClient:
        async with CloseClient(sim.base_url, sim.api_key) as client:
            lead = await client.post("lead/", {"name": "base"})
            jobs = iter(range(120))

            async def worker() -> None:
                for i in jobs:
                    if i % 2:
                        await client.put(f"lead/{lead['id']}/", {"description": f"d{i}"})
                    else:
                        await client.post("lead/", {"name": f"l{i}"})

            await asyncio.gather(*(worker() for _ in range(16)))
            return client

    client = asyncio.run(go())
    assert ["POST /lead/", "PUT /lead/{id}/"] in client.budget_pools()
    assert sim.stats()["responses_429"] <= 0.03 * sim.stats()["requests_total"]
