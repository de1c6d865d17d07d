"""Names of the job's Beam counters and distributions, in one place so the summary can find them."""

from __future__ import annotations

from apache_beam.metrics import Metrics

NAMESPACE = "close_sync"


def counter(name: str):  # noqa: ANN201 - Beam's Counter type is private
    return Metrics.counter(NAMESPACE, name)


def distribution(name: str):  # noqa: ANN201
    return Metrics.distribution(NAMESPACE, name)


# events
EVENTS_READ = "events_read"
EVENTS_DUPLICATE = "events_duplicate"
EVENTS_OPTED_OUT = "events_opted_out"
EVENTS_FILTERED = "events_filtered"
EVENTS_DEAD_LETTERED = "events_dead_lettered"
EVENTS_APPLIED = "events_applied"
EVENTS_SKIPPED = "events_skipped"
EVENTS_BY_TYPE = "events_type_"  # + identify, group, ...
# requests
REQUESTS_MAPPED = "requests_mapped"
REQUESTS_COLLAPSED = "requests_collapsed_away"
REQUESTS_SUPPRESSED = "requests_suppressed_identical"
REQUESTS_SENT = "requests_sent"
OUTCOME_PREFIX = "outcome_"  # + created, updated, unchanged, skipped, failed
# Close API
CALLS_PREFIX = "api_calls_"  # + search, lead_write, contact_write, read, other
API_429 = "api_429s"
API_RETRIES = "api_retries"
LATENCY_MS = "api_latency_ms"
BATCH_SIZE = "batch_size"
# Dataflow's autoscaler reads a counter of this exact name (HARD-PARTS 6).
THROTTLED_SECONDS = "cumulativeThrottlingSeconds"
