"""Injected failures: random 5xx before handling, ambiguous failures after a committed write, 429 storms."""

from __future__ import annotations

import os
import random
import threading
import time

from closesim.config import SimConfig

FAULT_STATUSES = (500, 502, 503)
AMBIGUOUS_OUTCOMES = (502, 504, "drop")


class Faults:
    """Dice for the realism knobs; seeded by ``config.random_seed`` so runs can be repeated."""

    def __init__(self, config: SimConfig):
        self.config = config
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.reseed()
        self._storm_until = 0.0

    def reseed(self) -> None:
        """Restart the dice from ``config.random_seed`` so a run that sets it is repeatable."""
        seed = self.config.random_seed
        with self._lock:
            self._rng.seed(seed if seed is not None else os.urandom(16))

    def reset(self) -> None:
        with self._lock:
            self._storm_until = 0.0

    def start_storm(self, seconds: float) -> None:
        """Every API request gets a 429 for the next ``seconds``."""
        with self._lock:
            self._storm_until = max(self._storm_until, time.monotonic() + seconds)

    def storm_remaining(self) -> float:
        """Seconds left in the current storm (0 when there is none); may start one at ``storm_rate``."""
        now = time.monotonic()
        with self._lock:
            if (
                self._storm_until <= now
                and self.config.storm_rate
                and self._rng.random() < self.config.storm_rate
            ):
                self._storm_until = now + self.config.storm_seconds
            return max(0.0, self._storm_until - now)

    def fault_status(self) -> int | None:
        """A 5xx to answer with before doing anything, or None."""
        if not self.config.fault_rate:
            return None
        with self._lock:
            if self._rng.random() < self.config.fault_rate:
                return self._rng.choice(FAULT_STATUSES)
        return None

    def ambiguous_outcome(self) -> int | str | None:
        """After a committed write: 502, 504, "drop" (abort the connection), or None."""
        if not self.config.ambiguous_rate:
            return None
        with self._lock:
            if self._rng.random() < self.config.ambiguous_rate:
                return self._rng.choice(AMBIGUOUS_OUTCOMES)
        return None

    def delay(self) -> float:
        """Seconds of simulated latency for one request."""
        cfg = self.config
        if not cfg.latency_ms and not cfg.jitter_ms:
            return 0.0
        with self._lock:
            jitter = self._rng.uniform(0, cfg.jitter_ms) if cfg.jitter_ms else 0.0
        return (cfg.latency_ms + jitter) / 1000.0
