"""The pacer against a fixed-window server over a network with latency, in virtual time.

The event loop's clock jumps to the next timer whenever nothing is ready, so a minute of traffic
(thousands of requests, dozens in flight, each with its own latency) runs in well under a second
and the same seed gives the same run. The server is Close's: `limit` requests per 1 s window, the
window opened by the first request after the last one ended, `reset` rounded up to whole seconds
(or to the millisecond, as the time-scaled simulator sends it).
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass

import pytest

from closecrm.api.pacing import GroupPacer, RateLimit


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        if not self._ready and self._scheduled:  # idle: jump to the next timer
            self._now = max(self._now, self._scheduled[0]._when)
        super()._run_once()


@dataclass
class Run:
    per_second: list[int]  # requests the server accepted in each second
    throttled: int  # 429s

    @property
    def share(self) -> float:
        return sum(self.per_second) / (40 * len(self.per_second))


def run(
    *,
    seconds: float = 60.0,
    whole_seconds: bool = True,
    one_way: tuple[float, float] = (0.01, 0.06),
    in_flight: int = 32,
    clients: int = 1,
    share: float = 1.0,
    seed: int = 1,
) -> Run:
    """`clients` pacers (each `in_flight` workers) share one API key of 40 requests per second."""
    limit = 40
    loop = VirtualTimeLoop()
    rnd = random.Random(seed)
    window_start, used = [-10.0], [0]
    accepted: list[float] = []
    throttled = [0]

    def server() -> tuple[RateLimit, bool]:
        now = loop.time()
        if now >= window_start[0] + 1.0:
            window_start[0], used[0] = now, 0
        left = window_start[0] + 1.0 - now
        reset = (
            float(max(1, math.ceil(left - 1e-9)))
            if whole_seconds
            else max(0.001, math.ceil(left * 1000) / 1000)
        )
        if used[0] >= limit:
            throttled[0] += 1
            return RateLimit(limit, 0, reset), True
        used[0] += 1
        accepted.append(now)
        return RateLimit(limit, limit - used[0], reset), False

    async def worker(pacer: GroupPacer) -> None:
        while loop.time() < seconds:
            _, ticket = await pacer.acquire_ticket()
            await asyncio.sleep(rnd.uniform(*one_way))
            rl, was_429 = server()
            await asyncio.sleep(rnd.uniform(*one_way))
            pacer.done(rl, throttled=was_429, retry_after=rl.reset if was_429 else 0.0, ticket=ticket)

    async def main() -> None:
        pacers = [GroupPacer(share, clock=loop.time, sleep=asyncio.sleep) for _ in range(clients)]
        await asyncio.gather(*(worker(p) for p in pacers for _ in range(in_flight)))

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    per_second = [0] * int(seconds)
    for t in accepted:
        if t < seconds:
            per_second[int(t)] += 1
    return Run(per_second, throttled[0])


@pytest.mark.parametrize("whole_seconds", [True, False], ids=["whole-second resets", "millisecond resets"])
def test_one_client_on_a_near_server_uses_the_budget_without_429s(whole_seconds: bool) -> None:
    # Windows are placed by the answers' sending order and the window opener's round trip: an estimated
    # end that ran late would idle most of every other window.
    result = run(whole_seconds=whole_seconds, one_way=(0.001, 0.01))
    assert result.share >= 0.95, result
    assert result.throttled == 0
    assert min(result.per_second[1:]) >= 0.85 * 40, "no second may lose a large part of its window"


@pytest.mark.parametrize("whole_seconds", [True, False], ids=["whole-second resets", "millisecond resets"])
def test_one_client_on_a_far_jittery_server_uses_most_of_the_budget(whole_seconds: bool) -> None:
    # 20-120 ms round trips: the window's end is known to within the jitter, so a rare 429 at a window's
    # boundary is the price of not idling a round trip in every window.
    result = run(whole_seconds=whole_seconds, one_way=(0.01, 0.06))
    assert result.share >= 0.9, result
    assert result.throttled <= 3


def test_two_workers_on_one_key_at_half_share_each_use_it_without_429s() -> None:
    result = run(clients=2, share=0.5, in_flight=16)
    assert result.share >= 0.9, result
    assert result.throttled <= 5


def test_virtual_time_runs_are_repeatable() -> None:
    assert run(seconds=10, seed=7) == run(seconds=10, seed=7)
