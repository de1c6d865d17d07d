"""Close's `ratelimit` header, and a pacer per endpoint group that keeps a client inside its budget."""

from __future__ import annotations

import asyncio
import re
import time
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


class GroupPacer:
    """Paces one endpoint group: a token bucket at `share` of the announced rate, guarded by `remaining`.

    The bucket refills at ``factor * share * limit / window`` (window = the longest `reset` seen)
    and holds at most ``share * limit`` tokens, so idle time can be used in a burst. The guard stops
    sending when the server says the window is used up (minus what we have in flight) until it resets,
    which is what matters when several workers share one key. ``factor`` is the adaptive part (the
    idea of Beam's AdaptiveThrottler, done as AIMD): a 429 cuts it, every success grows it back.
    """

    SAFETY = 0.97  # aim just under the announced rate: clocks and windows never line up exactly
    MIN_FACTOR = 0.1

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
        self.in_flight = 0
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float | None:
        """Requests per second this pacer aims at, once the server has told us its limit."""
        if not self._limit or not self._window:
            return None
        return self.factor * self.share * self.SAFETY * self._limit / self._window

    def _refill(self, now: float) -> None:
        rate = self.rate
        if rate is not None and self._limit:
            cap = max(1.0, self.share * self._limit)
            self._tokens = min(cap, self._tokens + (now - self._stamp) * rate)
        self._stamp = now

    def _wait_needed(self, now: float) -> float:
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
        waited = 0.0
        async with self._lock:  # one waiter at a time keeps the order fair and the arithmetic simple
            while True:
                now = self._clock()
                if self._remaining is not None and now >= self._reset_at:
                    self._remaining = None  # a new window; the next response tells us where we are
                self._refill(now)
                wait = self._wait_needed(now)
                if wait <= 0:
                    break
                await self._sleep(wait)
                waited += wait
            if self.rate is not None:
                self._tokens -= 1
            if self._remaining is not None:
                self._remaining -= 1
            self.in_flight += 1
        return waited

    def done(self, rl: RateLimit | None, *, throttled: bool = False, retry_after: float = 0.0) -> None:
        """Record a response: its header, and whether it was a 429 (then wait `retry_after`)."""
        self.in_flight = max(0, self.in_flight - 1)
        now = self._clock()
        if rl is not None and rl.limit > 0:
            self._limit = rl.limit
            if rl.reset > 0:
                self._window = max(self._window or 0.0, rl.reset)
            reset_at = now + rl.reset
            if reset_at > self._reset_at + 1e-3 or self._remaining is None:
                self._reset_at = reset_at
                self._remaining = rl.remaining - self.in_flight
            else:
                self._remaining = min(self._remaining, rl.remaining - self.in_flight)
        if throttled:
            self.factor = max(self.MIN_FACTOR, self.factor * 0.7)
            self._blocked_until = max(self._blocked_until, now + retry_after)
            self._tokens = min(self._tokens, 0.0)
        else:
            self.factor = min(1.0, self.factor + 0.01)

    def cancelled(self) -> None:
        """A request that got no response at all (timeout, dropped connection)."""
        self.in_flight = max(0, self.in_flight - 1)
