"""The summary table printed when a local run ends, built from the job's Beam metrics."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from transforms import metrics as m


def collect(result: Any) -> dict[str, int]:
    """Committed counter values of the job's namespaces (attempted where a runner has no commits): the
    close_sync namespace and every one under it (close_sync.sources, ...)."""
    out: dict[str, int] = {}
    query = result.metrics().query()
    for counter in query["counters"]:
        if not m.in_job_namespace(counter.key.metric.namespace):
            continue
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    for dist in query["distributions"]:
        if not m.in_job_namespace(dist.key.metric.namespace):
            continue
        value = dist.committed if dist.committed is not None else dist.attempted
        if value is not None and value.count:
            out[dist.key.metric.name + "_count"] = value.count
            out[dist.key.metric.name + "_mean"] = int(round(value.mean))
    return out


def _rows(values: dict[str, int]) -> list[tuple[str, str, int]]:
    rows: list[tuple[str, str, int]] = []
    shown: set[str] = set()

    def row(stage: str, label: str, key: str, *, if_any: bool = False) -> None:
        shown.add(key)
        if values.get(key) or not if_any:
            rows.append((stage, label, values.get(key, 0)))

    # only when it happened: most inputs have none of these
    row("input", "unreadable files", m.FILES_UNREADABLE, if_any=True)
    row("input", "files of no known format, skipped", m.FILES_SKIPPED, if_any=True)
    row("input", "Kafka tombstones, skipped", m.KAFKA_TOMBSTONES, if_any=True)
    row("events", "read", m.EVENTS_READ)
    for name in sorted(k for k in values if k.startswith(m.EVENTS_BY_TYPE)):
        row("events", "type " + name[len(m.EVENTS_BY_TYPE) :], name)
    row("events", "duplicates dropped", m.EVENTS_DUPLICATE)
    row("events", "opted out", m.EVENTS_OPTED_OUT)
    row("events", "no mapping matched", m.EVENTS_FILTERED)
    row("events", "applied", m.EVENTS_APPLIED)
    row("events", "skipped", m.EVENTS_SKIPPED)
    row("events", "dead-lettered", m.EVENTS_DEAD_LETTERED)
    row("requests", "mapped", m.REQUESTS_MAPPED)
    row("requests", "collapsed away", m.REQUESTS_COLLAPSED)
    row("requests", "identical to last, suppressed", m.REQUESTS_SUPPRESSED)
    row("requests", "sent to the engine", m.REQUESTS_SENT)
    for kind in ("created", "updated", "unchanged", "skipped", "failed"):
        row("outcomes", kind, m.OUTCOME_PREFIX + kind)
    calls = 0
    for name in sorted(k for k in values if k.startswith(m.CALLS_PREFIX)):
        calls += values[name]
        row("Close API", "calls " + name[len(m.CALLS_PREFIX) :], name)
    rows.append(("Close API", "calls total", calls))
    row("Close API", "429 responses", m.API_429)
    row("Close API", "retries", m.API_RETRIES)
    row("Close API", "throttled seconds", m.THROTTLED_SECONDS)
    # Every other value collected, under its metric name: no counter the job increments goes unseen.
    for name in sorted(set(values) - shown):
        rows.append(("other", name, values[name]))
    return rows


def render(values: dict[str, int], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="close-sync run summary")
    table.add_column("stage")
    table.add_column("measure")
    table.add_column("count", justify="right")
    for stage, label, value in _rows(values):
        table.add_row(stage, label, f"{value:,}")
    read = values.get(m.EVENTS_READ, 0)
    calls = sum(v for k, v in values.items() if k.startswith(m.CALLS_PREFIX))
    if read:
        table.caption = f"{calls / read:.3f} API calls per event read"
    console.print(table)
