"""The summary table printed when a local run ends, built from the job's Beam metrics, and the line that
says where the dead letters are and why they failed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from transforms import metrics as m

OUTCOME_KINDS = ("created", "updated", "unchanged", "skipped", "failed")
# Each outcome's row: (label in a run, label in a dry run, which writes nothing).
_OUTCOME_LABELS = {
    "created": ("created", "would create"),
    "updated": ("updated", "would update"),
    "unchanged": ("unchanged (Close had it all)", "would leave unchanged"),
    "skipped": ("skipped (a flag forbids it, or no identity)", "would skip (a flag, or no identity)"),
    "failed": ("failed (dead-lettered)", "failed (dead-lettered)"),
}


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


def job_calls(values: dict[str, int]) -> int:
    """Close API calls the job's workers made (every attempt, retries included)."""
    return sum(v for k, v in values.items() if k.startswith(m.CALLS_PREFIX))


def _rows(values: dict[str, int], dry_run: bool = False) -> list[tuple[str, str, int]]:
    rows: list[tuple[str, str, int]] = []
    shown: set[str] = set()

    def row(stage: str, label: str, key: str, *, if_any: bool = False) -> None:
        shown.add(key)
        if values.get(key) or not if_any:
            rows.append((stage, label, values.get(key, 0)))

    # only when it happened: most inputs have none of these
    row("input", "unreadable files", m.FILES_UNREADABLE, if_any=True)
    row("input", "files of no known format, not read", m.FILES_SKIPPED, if_any=True)
    row("input", "Kafka tombstones, not read", m.KAFKA_TOMBSTONES, if_any=True)
    row("events", "read", m.EVENTS_READ)
    for name in sorted(k for k in values if k.startswith(m.EVENTS_BY_TYPE)):
        row("events", "of type " + name[len(m.EVENTS_BY_TYPE) :], name)
    row("events", "duplicates dropped (same messageId)", m.EVENTS_DUPLICATE)
    row("events", "opted out (integrations)", m.EVENTS_OPTED_OUT)
    row("events", "no mapping matched", m.EVENTS_FILTERED)
    # every event read ends exactly once, in one of these three
    row("events", "ended planned (nothing written)" if dry_run else "ended applied", m.EVENTS_APPLIED)
    row("events", "ended not sent (the 3 above, or request skipped)", m.EVENTS_SKIPPED)
    row("events", "ended dead-lettered", m.EVENTS_DEAD_LETTERED)
    row("requests", "made by the mappings", m.REQUESTS_MAPPED)
    row("requests", "merged into a later one of the person", m.REQUESTS_COLLAPSED)
    row("requests", "identical to the last applied, not sent", m.REQUESTS_SUPPRESSED)
    row("requests", "planned (dry run, not sent)" if dry_run else "sent to Close", m.REQUESTS_SENT)
    for kind in OUTCOME_KINDS:
        row("outcomes", _OUTCOME_LABELS[kind][1 if dry_run else 0], m.OUTCOME_PREFIX + kind)
    for name in sorted(k for k in values if k.startswith(m.CALLS_PREFIX)):
        row("Close API", "calls " + name[len(m.CALLS_PREFIX) :], name)
    rows.append(("Close API", "calls total (the job's)", job_calls(values)))
    row("Close API", "429 responses (over Close's limit)", m.API_429)
    row("Close API", "retries (429s, 5xx, timeouts)", m.API_RETRIES)
    # waits of every call in flight added up, so it can exceed the run's duration; no 429 is needed
    row("Close API", "seconds paced under the limit (all calls)", m.THROTTLED_SECONDS)
    row("Close API", "latency, mean ms", m.LATENCY_MS + "_mean", if_any=True)
    shown.add(m.LATENCY_MS + "_count")  # one per call: the calls above
    row("requests", "writer flushes", m.BATCH_SIZE + "_count", if_any=True)
    row("requests", "requests per flush, mean", m.BATCH_SIZE + "_mean", if_any=True)
    # Every other value collected, under its metric name: no counter the job increments goes unseen.
    for name in sorted(set(values) - shown):
        rows.append(("other", name, values[name]))
    return rows


def render(values: dict[str, int], console: Console | None = None, *, dry_run: bool = False) -> None:
    console = console or Console()
    title = "close-sync run summary" + (" (dry run: nothing was written to Close)" if dry_run else "")
    table = Table(title=title)
    table.add_column("stage", no_wrap=True)
    table.add_column("measure")
    table.add_column("count", justify="right", no_wrap=True)
    for stage, label, value in _rows(values, dry_run):
        table.add_row(stage, label, f"{value:,}")
    read = values.get(m.EVENTS_READ, 0)
    notes = ["Each event read ends once: applied, not sent, or dead-lettered."]
    if read:
        notes.append(f"{job_calls(values) / read:.3f} API calls per event read.")
    table.caption = " ".join(notes)
    console.print(table)


# --------------------------------------------------------------------------------- dead letters


def dead_letter_files(where: str | Path) -> list[Path]:
    """The dead-letter files at ``where``: that file, or the ``dead-letters*.jsonl`` of a directory."""
    path = Path(where)
    if path.is_file():
        return [path]
    return sorted(path.glob("dead-letters*.jsonl"))


def dead_letter_reasons(where: str | Path) -> Counter[str]:
    """``stage:reason`` → letters, over the dead-letter files at ``where`` (a local file or directory)."""
    reasons: Counter[str] = Counter()
    for path in dead_letter_files(where):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    letter = json.loads(line)
                    reasons[f"{letter.get('stage')}:{letter.get('reason')}"] += 1
    return reasons


def reasons_text(reasons: Counter[str]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


def dead_letters_line(dead: int, where: str | None) -> str:
    """The run's last line when events were dead-lettered: how many, why, where (``where``: the
    dead-letter file or directory; None when none was kept), and what to do about them."""
    head = f"{dead:,} event(s) were dead-lettered"
    if not where:
        return f"{head} and not kept: run again with --dead-letter DIR to keep each with its reason."
    if "://" in where:
        return f"{head}; see {where} for each event and its reason, then close-sync replay --dead-letter FILE."
    files = dead_letter_files(where)
    reasons = dead_letter_reasons(where)
    found = ", ".join(str(f) for f in files) or where
    why = f" ({reasons_text(reasons)})" if reasons else ""
    return f"{head}{why}; they are in {found}: fix the cause, then close-sync replay --dead-letter FILE."
