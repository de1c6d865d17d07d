"""Close-style rate limits: fixed windows per (API key, endpoint group), plus an organisation-wide budget.

The grouping and each group's window come from ``SimConfig.rate_groups`` (closesim/groups.py).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from closesim.config import SimConfig
from closesim.groups import OTHER, GroupRule, close_group, parse_rules

GROUPS = ("search", "lead_write", "contact_write", "read", "other")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the binding window resets


class RateLimiter:
    """Counts requests in fixed windows; limits are read from the live config on every request.

    A rate R (per second, times ``time_scale``) becomes ``max(1, round(R))`` requests per window
    of ``limit / (R * time_scale)`` seconds, so a window is 1 s at time_scale 1 and shrinks as it grows.
    """

    def __init__(self, config: SimConfig):
        self.config = config
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], list[float]] = {}
        self._parsed: tuple[object, tuple[GroupRule, ...] | None] | None = None

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()

    def _rules(self) -> tuple[GroupRule, ...] | None:
        value = self.config.rate_groups
        if self._parsed is None or self._parsed[0] is not value:
            self._parsed = (value, parse_rules(value))
        return self._parsed[1]

    def group(self, method: str, template: str) -> str:
        """The rate-limit group of an endpoint (``template`` as routed, e.g. ``/lead/{id}/``)."""
        rules = self._rules()
        if rules is None:
            return close_group(method, template)
        return next((r.name for r in rules if r.matches(method, template)), OTHER)

    def limits(self, group: str) -> tuple[int, int, float]:
        """(per-key limit, organisation limit, window seconds) for a group."""
        cfg = self.config
        rule = next((r for r in self._rules() or () if r.name == group), None)
        if rule is not None:
            limit, window = rule.limit, rule.window / cfg.time_scale
        else:
            rate = cfg.search_rate if group == "search" else cfg.write_rate
            limit = max(1, round(rate))
            window = limit / (rate * cfg.time_scale)
        return limit, max(1, round(limit * cfg.org_limit_factor)), window

    def check(self, api_key: str, group: str) -> Verdict:
        limit, org_limit, window = self.limits(group)
        if not self.config.limits_enabled:
            return Verdict(True, limit, limit, window)
        now = time.monotonic()
        with self._lock:
            key_window = self._window(("key:" + api_key, group), now, window)
            org_window = self._window(("org", group), now, window)
            key_left = limit - key_window[1]
            org_left = org_limit - org_window[1]
            key_reset = key_window[0] + window - now
            org_reset = org_window[0] + window - now
            if key_left <= 0 or org_left <= 0:
                waits = [r for left, r in ((key_left, key_reset), (org_left, org_reset)) if left <= 0]
                return Verdict(False, limit, 0, max(waits))
            key_window[1] += 1
            org_window[1] += 1
            remaining = min(key_left, org_left) - 1
            return Verdict(True, limit, remaining, key_reset if key_left <= org_left else org_reset)

    def _window(self, bucket: tuple[str, str], now: float, window: float) -> list[float]:
        state = self._windows.get(bucket)
        if state is None or now >= state[0] + window:
            state = [now, 0]
            self._windows[bucket] = state
        return state


def format_seconds(seconds: float, whole: bool) -> str:
    """Seconds for headers: whole seconds rounded up (as Close sends), or milliseconds rounded up when scaled."""
    if whole:
        return str(max(1, math.ceil(seconds - 1e-9)))
    value = max(0.001, math.ceil(seconds * 1000) / 1000)
    return f"{value:.3f}".rstrip("0").rstrip(".")


def header_value(decision: Verdict, separator: str, whole: bool) -> str:
    sep = separator + " "
    reset = format_seconds(decision.reset, whole)
    return f"limit={decision.limit}{sep}remaining={decision.remaining}{sep}reset={reset}"
