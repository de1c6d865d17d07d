"""The summary table printed when a local run ends, built from the job's Beam metrics."""

from __future__ import annotations

from typing import Any

from apache_beam.metrics.metric import MetricsFilter
from rich.console import Console
from rich.table import Table

from transforms import metrics as m


def collect(result: Any) -> dict[str, int]:
    """Committed counter values of the close_sync namespace (attempted where a runner has no commits)."""
    out: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(m.NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    for dist in query["distributions"]:
        value = dist.committed if dist.committed is not None else dist.attempted
        if value is not None and value.count:
            out[dist.key.metric.name + "_count"] = value.count
            out[dist.key.metric.name + "_mean"] = int(round(value.mean))
    return out


def _rows(values: dict[str, int]) -> list[tuple[str, str, int]]:
    rows: list[tuple[str, str, int]] = []
    read = values.get(m.EVENTS_READ, 0)
    rows.append(("events", "read", read))
    for name in sorted(k for k in values if k.startswith(m.EVENTS_BY_TYPE)):
        rows.append(("events", "type " + name[len(m.EVENTS_BY_TYPE) :], values[name]))
    for label, key in (
        ("duplicates dropped", m.EVENTS_DUPLICATE),
        ("opted out", m.EVENTS_OPTED_OUT),
        ("no mapping matched", m.EVENTS_FILTERED),
        ("applied", m.EVENTS_APPLIED),
        ("skipped", m.EVENTS_SKIPPED),
        ("dead-lettered", m.EVENTS_DEAD_LETTERED),
    ):
        rows.append(("events", label, values.get(key, 0)))
    for label, key in (
        ("mapped", m.REQUESTS_MAPPED),
        ("collapsed away", m.REQUESTS_COLLAPSED),
        ("identical to last, suppressed", m.REQUESTS_SUPPRESSED),
        ("sent to the engine", m.REQUESTS_SENT),
    ):
        rows.append(("requests", label, values.get(key, 0)))
    for kind in ("created", "updated", "unchanged", "skipped", "failed"):
        rows.append(("outcomes", kind, values.get(m.OUTCOME_PREFIX + kind, 0)))
    calls = 0
    for name in sorted(k for k in values if k.startswith(m.CALLS_PREFIX)):
        calls += values[name]
        rows.append(("Close API", "calls " + name[len(m.CALLS_PREFIX) :], values[name]))
    rows.append(("Close API", "calls total", calls))
    rows.append(("Close API", "429 responses", values.get(m.API_429, 0)))
    rows.append(("Close API", "retries", values.get(m.API_RETRIES, 0)))
    rows.append(("Close API", "throttled seconds", values.get(m.THROTTLED_SECONDS, 0)))
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
