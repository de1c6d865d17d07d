"""Counters of what clients asked for: the ground truth for "API calls per request" in benchmarks."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._groups: Counter[str] = Counter()
            self._endpoints: Counter[str] = Counter()
            self._statuses: Counter[int] = Counter()
            self._events: Counter[str] = Counter()
            self._throttled: Counter[str] = Counter()  # 429s by endpoint group

    def request(self, group: str, endpoint: str) -> None:
        with self._lock:
            self._groups[group] += 1
            self._endpoints[endpoint] += 1

    def response(self, status: int) -> None:
        with self._lock:
            self._statuses[status] += 1

    def throttled(self, group: str) -> None:
        with self._lock:
            self._throttled[group] += 1

    def event(self, name: str) -> None:
        with self._lock:
            self._events[name] += 1

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests_total": sum(self._groups.values()),
                "by_group": dict(self._groups),
                "by_endpoint": dict(self._endpoints),
                "by_status": {str(k): v for k, v in sorted(self._statuses.items())},
                "responses_429": self._statuses[429],
                "429_by_group": dict(self._throttled),
                "rate_limited": self._events["rate_limited"],
                "storm_429": self._events["storm_429"],
                "faults_injected": self._events["faults_injected"],
                "ambiguous_injected": self._events["ambiguous_injected"],
                "unauthorized": self._events["unauthorized"],
            }
