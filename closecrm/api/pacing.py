"""Close's `ratelimit` header, and a pacer per endpoint group that keeps a client inside its budget."""

from __future__ import annotations

import asyncio
import re
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

_PAIR = re.compile(r"\s*([A-Za-z_-]+)\s*=\s*([0-9]+(?:\.[0-9]+)?)\s*")


@dataclass(frozen=True)
class RateLimit:
    """One reading of the header: `limit` requests per window, `remaining` now, window ends in `reset` s."""

    limit: int
    remaining: int
    reset: float


def parse_ratelimit(value: str | None) -> RateLimit | None:
    """`limit=160, remaining=159, reset=8` (Close separates with `,` or `;`); None when unreadable."""
    if not value:
        return None
    found: dict[str, float] = {}
    for part in re.split(r"[,;]", value):
        m = _PAIR.fullmatch(part)
        if m:
            found.setdefault(m.group(1).lower(), float(m.group(2)))
    if not {"limit", "remaining", "reset"} <= found.keys():
        return None
    return RateLimit(
        limit=int(found["limit"]), remaining=int(found["remaining"]), reset=max(0.0, found["reset"])
    )


def retry_after_seconds(headers: Mapping[str, str], default: float = 1.0) -> float:
    """How long a 429 tells us to wait: Retry-After, else the ratelimit header's reset, else `default`.

    `headers` must look names up case-insensitively (httpx.Headers does).
    """
    raw = headers.get("retry-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
    rl = parse_ratelimit(headers.get("ratelimit"))
    if rl is not None and rl.reset > 0:
        return rl.reset
    return default


PROBE_POLL = 0.002  # seconds between looks while the first request of a group is out


class GroupPacer:
    """Paces one endpoint group: a token bucket at `share` of the announced rate, guarded by `remaining`.

    The bucket refills at ``factor * share * limit / window`` (window = the longest `reset` seen)
    and holds at most ``BURST * share * limit`` tokens, so idle time can be used in a small burst. The guard stops
    sending when the server says the window is used up (minus what we have in flight) until it resets,
    which is what matters when several workers share one key. ``factor`` is the adaptive part (the
    idea of Beam's AdaptiveThrottler, done as AIMD): a 429 cuts it, at most once a window (a burst
    of 429s is one event, not thirty), and every success grows it back.
    """

    SAFETY = 0.97  # aim just under the announced rate: clocks and windows never line up exactly
    MIN_FACTOR = 0.1
    # The bucket holds a quarter of a window, not a full one: when the client stalls (a long GC pause,
    # a busy worker) the server keeps counting what was in flight in its window, the bucket refills
    # meanwhile, and a full window's burst would then meet that count as a burst of 429s.
    BURST = 0.25

    def __init__(
        self,
        share: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self.factor = 1.0
        self._clock = clock
        self._sleep = sleep
        self._limit: int | None = None
        self._window: float | None = None
        self._tokens = 0.0
        self._stamp = clock()
        self._remaining: float | None = None  # the server's count minus what we sent since
        self._reset_at = 0.0
        self._blocked_until = 0.0  # set by a 429
        self._last_cut = float("-inf")  # when a 429 last cut `factor`
        self._seq = 0
        self._answered = False  # any answer (or failure) seen yet
        self.answers = 0  # answers and failures seen
        self._flying: dict[int, float] = {}  # tickets of requests sent and not answered yet -> sent at
        # The same tickets in ascending order: each answer asks how many were sent after it, and a
        # count over every request in flight, per answer, was a visible share of a large run's CPU.
        self._order: list[int] = []
        self._win_ticket = 0  # the earliest request known to be in the current window
        self._win_low: int | None = None  # the lowest `remaining` the server gave in the current window
        self._fine = False  # the server sends fractional resets (a time-scaled simulator): trust them
        self._lock = asyncio.Lock()

    @property
    def in_flight(self) -> int:
        return len(self._flying)

    @property
    def rate(self) -> float | None:
        """Requests per second this pacer aims at, once the server has told us its limit."""
        if not self._limit or not self._window:
            return None
        return self.factor * self.share * self.SAFETY * self._limit / self._window

    def _refill(self, now: float) -> None:
        rate = self.rate
        if rate is not None and self._limit:
            cap = max(1.0, self.BURST * self.share * self._limit)
            self._tokens = min(cap, self._tokens + (now - self._stamp) * rate)
        self._stamp = now

    def _wait_needed(self, now: float) -> float:
        if not self._answered and self._flying:
            # Nothing is known about the budget until the first answer: send one request and wait
            # for it, rather than let every waiting request through unpaced (each a likely 429).
            return PROBE_POLL
        if now < self._blocked_until:
            return self._blocked_until - now
        if self._remaining is not None and self._remaining < 1 and now < self._reset_at:
            return self._reset_at - now
        rate = self.rate
        if rate is not None and self._tokens < 1 - 1e-9:  # float dust must not turn into endless tiny sleeps
            return max(1e-4, (1 - self._tokens) / rate)
        return 0.0

    async def acquire(self) -> float:
        """Wait for a slot; returns the seconds spent waiting (throttled time)."""
        return (await self.acquire_ticket())[0]

    async def acquire_ticket(self) -> tuple[float, int]:
        """Wait for a slot; returns the seconds spent waiting and a ticket to hand back to ``done``."""
        waited = 0.0
        window_used_up = False
        async with self._lock:  # one waiter at a time keeps the order fair and the arithmetic simple
            while True:
                now = self._clock()
                if self._remaining is not None and now >= self._reset_at:
                    self._remaining = None  # a new window; the next response tells us where we are
                self._refill(now)
                wait = self._wait_needed(now)
                if wait <= 0:
                    break
                if self._remaining is not None and self._remaining < 1 and now < self._reset_at:
                    window_used_up = True
                await self._sleep(wait)
                waited += wait
            if window_used_up:
                # Waiting out a used-up window must not fill the bucket: the burst it would allow
                # when the window resets uses that window up early too, so the client bursts and
                # stalls every window, losing each time the gap between its estimate of the reset
                # (taken when an answer arrives) and the real one. Resume at the steady rate instead.
                self._tokens = min(self._tokens, 1.0)
            if self.rate is not None:
                self._tokens -= 1
            if self._remaining is not None:
                self._remaining -= 1
            self._seq += 1
            self._flying[self._seq] = self._clock()
            self._order.append(self._seq)  # tickets only grow: the list stays sorted
        return waited, self._seq

    def sending(self, ticket: int) -> None:
        """The request behind `ticket` leaves now (it may have waited for a connection since its ticket)."""
        if ticket in self._flying:
            self._flying[ticket] = self._clock()

    def _land(self, ticket: int | None) -> tuple[int, float | None]:
        """Forget an answered request; returns how many requests sent after it are still unanswered,
        and when it was sent (None when unknown).

        The server counted a request, and (nearly always) the ones sent before it, when it answered
        with `remaining`; only those sent after it may still be uncounted. Subtracting every request
        in flight would count some twice and stop a busy client short of each window.
        Without a ticket (old callers), the oldest request is taken and all others count.
        """
        self._answered = True
        self.answers += 1
        if not self._flying:
            return 0, None
        if ticket is None or ticket not in self._flying:
            sent = self._flying.pop(self._order.pop(0))
            return len(self._flying), sent
        sent = self._flying.pop(ticket)
        at = bisect_left(self._order, ticket)
        del self._order[at]
        return len(self._order) - at, sent

    def done(
        self,
        rl: RateLimit | None,
        *,
        throttled: bool = False,
        retry_after: float = 0.0,
        ticket: int | None = None,
    ) -> None:
        """Record a response: its header, and whether it was a 429 (then wait `retry_after`)."""
        uncounted, sent = self._land(ticket)
        now = self._clock()
        if rl is not None and rl.limit > 0:
            self._window_news(rl, now if sent is None else sent, now, uncounted, ticket)
        if throttled:
            if now - self._last_cut >= (self._window or retry_after or 1.0):
                self.factor = max(self.MIN_FACTOR, self.factor * 0.7)
                self._last_cut = now
            self._blocked_until = max(self._blocked_until, now + retry_after)
            self._tokens = min(self._tokens, 0.0)
        else:
            self.factor = min(1.0, self.factor + 0.01)

    def cancelled(self, ticket: int | None = None) -> None:
        """A request that got no response at all (timeout, dropped connection)."""
        self._land(ticket)

    def _window_news(
        self, rl: RateLimit, sent: float, now: float, uncounted: int, ticket: int | None
    ) -> None:
        """Place an answer in the server's windows and update where the current one ends and what is left.

        Answers arrive late and out of order: one sent near the end of the last window can land after
        the next began, and taking its small `remaining` for the new window would stop a busy client
        until the new window's end. Two clues say which window an answer is about:
        - the order of sending: a request sent before the first known request of the current window
          belongs to an older one;
        - the request that opened a window is answered with ``remaining = limit - 1``; the server counted
          it between its sending and its answer, so the window ends one window after the middle of that.
        A fractional `reset` (a time-scaled simulator) also places the end to the millisecond. Close
        rounds `reset` up to whole seconds, which says nothing within a one-second window: a pacer that
        took ``answer + reset`` for the end (or moved the end whenever ``answer + reset`` passed it) would
        idle for most of a window whenever its estimate ran late.
        """
        self._limit = rl.limit
        if rl.reset > 0:
            self._window = max(self._window or 0.0, rl.reset)
            self._fine = self._fine or not float(rl.reset).is_integer()
        seen = (sent + now) / 2  # when the server most likely counted it
        newest = ticket is None or ticket >= self._win_ticket
        if not newest:
            return  # from a window that has ended
        opener = rl.remaining == rl.limit - 1
        if opener and self._window:
            self._start_window(seen + (rl.reset if self._fine else self._window), rl, uncounted, ticket)
            return
        if not self._reset_at:
            self._start_window(seen + rl.reset, rl, uncounted, ticket)  # the first answer
            return
        if self._fine:
            newer = seen + rl.reset > self._reset_at + 0.5 * (self._window or rl.reset)
        else:  # a much larger `remaining` than the window has shown: the server started counting again
            newer = self._win_low is not None and rl.remaining > self._win_low + max(2, rl.limit // 4)
        if newer:
            # A window whose opening answer we missed. With whole-second resets its end is within a
            # second before `seen + reset`: take the middle.
            self._start_window(seen + rl.reset - (0.0 if self._fine else 0.5), rl, uncounted, ticket)
            return
        self._win_low = rl.remaining if self._win_low is None else min(self._win_low, rl.remaining)
        if self._remaining is not None:  # the current window (None: it has ended, ignore)
            self._remaining = min(self._remaining, rl.remaining - uncounted)

    def _start_window(self, ends: float, rl: RateLimit, uncounted: int, ticket: int | None) -> None:
        self._reset_at = ends
        self._remaining = rl.remaining - uncounted
        self._win_low = rl.remaining
        if ticket is not None:
            self._win_ticket = ticket
