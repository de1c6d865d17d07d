"""The job's one way to count: every counter and distribution of the job is made here, under NAMESPACE
(or a sub-namespace ``NAMESPACE.<part>``, which ``summary.collect`` reads too), and named below, so the
run summary, the snapshot summary and the live progress line see all of them."""

from __future__ import annotations

import threading

from apache_beam.metrics import Metrics

NAMESPACE = "close_sync"


# A process-local running total of every counter, for the live progress line of local runs: the
# DirectRunner's workers run in this process, while Beam's own metrics are only harvested per bundle.
_LOCAL_LOCK = threading.Lock()
_LOCAL: dict[str, int] = {}


def local_totals() -> dict[str, int]:
    """Counter totals so far in this process (empty on remote workers' launchers)."""
    with _LOCAL_LOCK:
        return dict(_LOCAL)


def reset_local_totals() -> None:
    with _LOCAL_LOCK:
        _LOCAL.clear()


class _Counter:
    """Beam's counter, also added to the process-local totals."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._beam = Metrics.counter(NAMESPACE, name)

    def inc(self, n: int = 1) -> None:
        self._beam.inc(n)
        with _LOCAL_LOCK:
            _LOCAL[self._name] = _LOCAL.get(self._name, 0) + n

    def dec(self, n: int = 1) -> None:
        self.inc(-n)


def counter(name: str) -> _Counter:
    return _Counter(name)


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
# values the mapper left out of a request (the request went on without them)
FIELDS_DROPPED = "fields_dropped"
FIELDS_DROPPED_PREFIX = "fields_dropped:"  # + <field>:<reason>, e.g. fields_dropped:contact_phone:invalid_phone
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
# Dataflow's autoscaler reads a counter of this exact name (see docs/DESIGN.md).
THROTTLED_SECONDS = "cumulativeThrottlingSeconds"
# input
FILES_UNREADABLE = "unreadable_files"
FILES_SKIPPED = "skipped_files"  # matched, of no known format
KAFKA_TOMBSTONES = "kafka_tombstones"


def in_job_namespace(namespace: str) -> bool:
    """Whether a metric's namespace is the job's (NAMESPACE itself or one under it)."""
    return namespace == NAMESPACE or namespace.startswith(NAMESPACE + ".")
