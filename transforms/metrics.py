"""The job's one way to count: every counter and distribution of the job is made here, under NAMESPACE
(or a sub-namespace ``NAMESPACE.<part>``, which ``summary.collect`` reads too), and named below, so the
run summary, the snapshot summary and the live progress line see all of them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

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


# Counts made inside `deferred` or `collected` on this thread, by counter, until the outermost one ends.
_DEFERRED = threading.local()


@contextmanager
def deferred() -> Iterator[None]:
    """Counts made inside are summed here and handed to Beam once each, on the way out.

    A Beam counter update looks up the bundle's metrics container on every call, which costs more
    than the per-event work around it in a bulk fold; the totals a bundle reports are the same. Use
    it only inside one bundle's processing (a DoFn call), so the counts land in that bundle. Inside
    another `deferred` or `collected`, the outer one takes the counts.
    """
    if getattr(_DEFERRED, "pending", None) is not None:
        yield
        return
    pending: dict[_Counter, int] = {}
    _DEFERRED.pending = pending
    try:
        yield
    finally:
        _DEFERRED.pending = None
        for counter, n in pending.items():
            counter._add(n)


@contextmanager
def collected() -> Iterator[dict[str, int]]:
    """Counts made inside go to the dict it yields (by counter name), not to Beam: for work done in
    another process, whose counts the DoFn that asked for it hands on (`count`)."""
    counts: dict[str, int] = {}
    pending: dict[_Counter, int] = {}
    outer = getattr(_DEFERRED, "pending", None)
    _DEFERRED.pending = pending
    try:
        yield counts
    finally:
        _DEFERRED.pending = outer
        for counter, n in pending.items():
            counts[counter._name] = counts.get(counter._name, 0) + n


def count(counts: dict[str, int]) -> None:
    """Hands on counts made elsewhere (`collected`)."""
    for name, n in counts.items():
        counter(name).inc(n)


class _Counter:
    """Beam's counter, also added to the process-local totals."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._beam = Metrics.counter(NAMESPACE, name)

    def inc(self, n: int = 1) -> None:
        pending = getattr(_DEFERRED, "pending", None)
        if pending is not None:
            pending[self] = pending.get(self, 0) + n
            return
        self._add(n)

    def _add(self, n: int) -> None:
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
