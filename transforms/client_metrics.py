"""The Close client's running totals and latency samples, reported as the job's Beam metrics."""

from __future__ import annotations

from typing import Any

from transforms import metrics


def client_counters(client: Any) -> dict[str, float]:
    """The client's running totals under the job's metric names."""
    out: dict[str, float] = {}
    for group, n in dict(getattr(client, "calls_by_group", {}) or {}).items():
        out[metrics.CALLS_PREFIX + group] = n
    out[metrics.API_429] = getattr(client, "rate_limited", 0)
    out[metrics.API_RETRIES] = getattr(client, "retries", 0)
    out[metrics.THROTTLED_SECONDS] = int(getattr(client, "throttled_seconds", 0.0))
    return out


class ClientMetrics:
    """Reports one client's totals as Beam counter increments (what grew since the last report), and
    moves its latency samples into a Beam distribution. Only the owner of the client may report: the
    samples leave the client as they are reported."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._seen: dict[str, float] = {}

    def report(self) -> None:
        for name, value in client_counters(self._client).items():
            delta = value - self._seen.get(name, 0)
            if delta:
                metrics.counter(name).inc(int(delta))
            self._seen[name] = value
        samples = getattr(self._client, "latencies_ms", None)
        latency = metrics.distribution(metrics.LATENCY_MS)
        while samples:
            latency.update(int(samples.popleft()))
