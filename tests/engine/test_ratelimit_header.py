"""The ratelimit header parser and the per-group pacer, with a fake clock (no server)."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from closecrm.api.pacing import GroupPacer, RateLimit, parse_ratelimit, retry_after_seconds


@pytest.mark.parametrize(
    "value",
    [
        "limit=160, remaining=159, reset=8",
        "limit=160; remaining=159; reset=8",
        "limit=160,remaining=159,reset=8.0",
    ],
)
def test_header_parses_with_either_separator(value: str) -> None:
    assert parse_ratelimit(value) == RateLimit(limit=160, remaining=159, reset=8.0)


def test_header_keeps_fractional_resets_of_a_scaled_simulator() -> None:
    assert parse_ratelimit("limit=16; remaining=0; reset=0.025") == RateLimit(16, 0, 0.025)


@pytest.mark.parametrize("value", [None, "", "garbage", "limit=10, remaining=3"])
def test_unreadable_header_is_none(value: str | None) -> None:
    assert parse_ratelimit(value) is None


def test_retry_after_prefers_the_header_then_the_reset() -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": "2.5"})) == 2.5
    assert retry_after_seconds(httpx.Headers({"RateLimit": "limit=1; remaining=0; reset=3"})) == 3.0
    assert retry_after_seconds(httpx.Headers({}), default=0.7) == 0.7


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def sent_in(pacer: GroupPacer, clock: FakeClock, seconds: float, header: callable) -> int:  # type: ignore[valid-type]
    """Requests the pacer lets through in `seconds` of fake time; `header(n)` answers each one."""

    async def go() -> int:
        n = 0
        while True:
            await pacer.acquire()
            if clock.now >= seconds:
                return n
            n += 1
            pacer.done(header(n))

    return asyncio.run(go())


def test_pacer_holds_a_share_of_the_announced_rate() -> None:
    clock = FakeClock()
    pacer = GroupPacer(0.25, clock=clock, sleep=clock.sleep)
    n = sent_in(pacer, clock, 10.0, lambda n: RateLimit(40, 39, 1.0))
    assert 0.2 * 40 * 10 <= n <= 0.25 * 40 * 10 + 10


def fixed_window_server(clock: FakeClock, limit: int, *, whole_seconds: bool = False) -> callable:  # type: ignore[valid-type]
    """A server with `limit` requests per 1 s fixed window (opened by the first request after the last
    one ended); `reset` exact, or rounded up to whole seconds as Close sends it."""
    window_start = [0.0]
    used = [0]

    def server(_: int) -> RateLimit:
        if clock.now >= window_start[0] + 1.0:
            window_start[0], used[0] = clock.now, 0
        used[0] += 1
        assert used[0] <= limit, "the pacer went over the window"
        left = window_start[0] + 1.0 - clock.now
        return RateLimit(limit, limit - used[0], float(max(1, math.ceil(left - 1e-9))) if whole_seconds else left)

    return server


def test_pacer_waits_for_the_reset_when_the_window_is_used_up() -> None:
    clock = FakeClock()
    pacer = GroupPacer(1.0, clock=clock, sleep=clock.sleep)
    n = sent_in(pacer, clock, 5.0, fixed_window_server(clock, 10))
    assert n >= 40


def test_a_429_cuts_the_rate_and_blocks_until_retry_after() -> None:
    clock = FakeClock()
    pacer = GroupPacer(1.0, clock=clock, sleep=clock.sleep)

    async def go() -> float:
        await pacer.acquire()
        pacer.done(RateLimit(40, 0, 1.0), throttled=True, retry_after=2.0)
        return await pacer.acquire()

    waited = asyncio.run(go())
    assert waited >= 2.0
    assert pacer.factor < 1.0


def test_share_must_be_a_fraction() -> None:
    with pytest.raises(ValueError):
        GroupPacer(0)


def test_a_late_answer_from_the_last_window_does_not_stall_the_new_one() -> None:
    clock = FakeClock()
    pacer = GroupPacer(1.0, clock=clock, sleep=clock.sleep)

    async def go() -> float:
        _, first = await pacer.acquire_ticket()
        pacer.done(RateLimit(40, 39, 0.1), ticket=first)  # window 1 ends at 0.1
        _, late = await pacer.acquire_ticket()  # sent at the end of window 1, answered after 0.1
        clock.now = 0.12
        _, fresh = await pacer.acquire_ticket()
        pacer.done(RateLimit(40, 39, 0.1), ticket=fresh)  # window 2 (ends at 0.22) has room
        pacer.done(RateLimit(40, 0, 0.001), ticket=late)  # window 1 was full: old news
        start = clock.now
        await pacer.acquire()
        return clock.now - start

    assert asyncio.run(go()) < 0.01


def test_only_requests_sent_after_an_answer_are_taken_off_its_remaining() -> None:
    clock = FakeClock()
    pacer = GroupPacer(1.0, clock=clock, sleep=clock.sleep)

    async def go() -> float | None:
        _, first = await pacer.acquire_ticket()
        pacer.done(RateLimit(40, 39, 1.0), ticket=first)
        tickets = [(await pacer.acquire_ticket())[1] for _ in range(5)]
        # the server counted the first four (remaining 40 - 4); two sent after the fourth are in flight
        pacer.done(RateLimit(40, 36, 1.0), ticket=tickets[2])
        return pacer._remaining

    assert asyncio.run(go()) == 34  # subtracting all in flight would say 32


def test_a_burst_of_429s_cuts_the_rate_once_a_window() -> None:
    clock = FakeClock()
    pacer = GroupPacer(1.0, clock=clock, sleep=clock.sleep)
    pacer.done(RateLimit(40, 39, 1.0))  # window 1 s
    for _ in range(30):  # one burst: thirty answers of the same window
        pacer.done(RateLimit(40, 0, 0.5), throttled=True, retry_after=0.5)
    assert pacer.factor == pytest.approx(0.7)
    clock.now = 1.2  # a 429 in a later window is a new event
    pacer.done(RateLimit(40, 0, 0.5), throttled=True, retry_after=0.5)
    assert pacer.factor == pytest.approx(0.49)


def test_after_a_stall_the_pacer_bursts_a_quarter_window_not_a_whole_one() -> None:
    clock = FakeClock()
    pacer = GroupPacer(1.0, clock=clock, sleep=clock.sleep)

    async def go() -> int:
        _, ticket = await pacer.acquire_ticket()
        pacer.done(RateLimit(40, 39, 1.0), ticket=ticket)
        clock.now = 10.0  # the client stalled (a GC pause, a busy worker): the bucket refills
        start, sent = clock.now, 0
        while clock.now == start:  # what goes out at once, before any wait
            await pacer.acquire()
            sent += 1
        return sent - 1

    assert asyncio.run(go()) == int(GroupPacer.BURST * 40)


def test_whole_second_resets_do_not_idle_the_pacer_for_a_window() -> None:
    """Close rounds `reset` up to whole seconds: `now + reset` overshoots the window's end by up to a second."""
    clock = FakeClock()
    pacer = GroupPacer(1.0, clock=clock, sleep=clock.sleep)
    n = sent_in(pacer, clock, 30.0, fixed_window_server(clock, 40, whole_seconds=True))
    assert n >= 0.9 * 40 * 30


def test_a_window_is_placed_by_when_its_opener_left_not_when_it_got_its_ticket() -> None:
    clock = FakeClock()
    pacer = GroupPacer(1.0, clock=clock, sleep=clock.sleep)

    async def go() -> float:
        _, ticket = await pacer.acquire_ticket()
        clock.now = 0.5  # it waited for a free connection
        pacer.sending(ticket)
        clock.now = 0.6
        pacer.done(RateLimit(40, 39, 1.0), ticket=ticket)  # the server counted it at about 0.55
        return pacer._reset_at

    assert asyncio.run(go()) == pytest.approx(1.55)
