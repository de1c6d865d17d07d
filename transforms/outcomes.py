"""What an outcome becomes: a ledger entry per event, a dead letter when it failed, and itself for the audit."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import apache_beam as beam

from closecrm.model import DeadLetter, Outcome, UpsertRequest, utc_now_text
from transforms import metrics
from transforms.collapse import Pending
from transforms.deadletter import DEAD, letter_event
from transforms.ledger import APPLIED, LEDGER, SKIPPED
from transforms.ledger import DEAD as LEDGER_DEAD


def ledger_status(outcome: Outcome) -> str:
    if outcome.kind == "failed":
        return LEDGER_DEAD
    if outcome.kind == "skipped":
        return SKIPPED
    return APPLIED


def letter_for(pending: Pending, outcome: Outcome) -> DeadLetter:
    """The failed request's letter: its events as they were received and where each was read (one
    of each, or lists in the same order), the request, and Close's answer."""
    shown = [letter_event(carried) for carried in pending.events]
    events = [event for event, _ in shown]
    sources = [source for _, source in shown]
    return DeadLetter(
        stage="upsert",
        reason=outcome.reason or "failed",
        event=events[0] if len(events) == 1 else events,
        request=pending.request.to_json(),
        error={"http_status": outcome.http_status, "body": outcome.error_body, "outcome": outcome.label},
        attempts=outcome.attempts,
        event_ids=pending.request.event_ids,
        source=(sources[0] if len(sources) == 1 else sources) if any(sources) else None,
    )


def audit_record(
    pending: Pending, outcome: Outcome, *, run_id: str | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """The audit log's line for one request: when, which run and mappings, how it ended, what it
    changed (each change marked applied or not), and the values the mapper left out of it."""
    request = pending.request
    return {
        "time": utc_now_text(),
        "run_id": run_id,
        "person": pending.person,
        "event_ids": list(request.event_ids),
        "mappings": list(request.mappings),
        "outcome": outcome.label,
        "branch": outcome.branch,
        "lead_ids": list(outcome.lead_ids),
        "contact_ids": list(outcome.contact_ids),
        "calls": outcome.calls,
        "attempts": outcome.attempts,
        "http_status": outcome.http_status,
        "changes": audited_changes(outcome, dry_run),
        "dropped": [d.to_json() for d in request.dropped],
    }


def audit_line(item: tuple[Pending, Outcome], run_id: str | None = None, dry_run: bool = False) -> str:
    """`audit_record` as the JSON line the audit log holds."""
    pending, outcome = item
    return json.dumps(audit_record(pending, outcome, run_id=run_id, dry_run=dry_run), sort_keys=True, default=str)


def intent_line(request: UpsertRequest, change: dict[str, Any], run_id: str | None = None) -> str:
    """The audit log's line for a lead merge or a contact deletion about to be sent: the change as
    the request's own line lists it, under ``intent``. The request's line follows when it ends and
    says whether it was applied; an intent without one may or may not have been made (a killed run)."""
    record = {
        "time": utc_now_text(),
        "run_id": run_id,
        "intent": dict(change),
        "user_id": request.contact_user_id,
        "previous_id": request.alias_previous_id,
        "event_ids": list(request.event_ids),
        "mappings": list(request.mappings),
    }
    return json.dumps(record, sort_keys=True, default=str)


def audited_changes(outcome: Outcome, dry_run: bool) -> list[dict[str, Any]]:
    """The outcome's field changes, each with ``applied``: whether Close holds it.

    The engine records a write's changes just before it sends the write and stops at the first error,
    so in a failed request every write but the last went through, and the last one did not (``null``
    after an ambiguous write, which Close may or may not have made). A dry run applies nothing.
    """
    changes = [dict(change) for change in outcome.changes]
    if dry_run:
        applied_until, last_write = 0, False
    elif outcome.kind != "failed":
        applied_until, last_write = len(changes), True
    else:
        applied_until = _last_write_starts(changes)
        last_write = None if (outcome.reason or "").startswith("ambiguous") else False
    for i, change in enumerate(changes):
        change["applied"] = True if i < applied_until else last_write
    return changes


def _last_write_starts(changes: list[dict[str, Any]]) -> int:
    """Where the changes of the last write begin: a create (no id yet, a lead's nested contact with it),
    or an update of one record."""
    if not changes:
        return 0
    last = changes[-1]
    if last.get("action") == "create" and last.get("id") is None:
        same = lambda c: c.get("action") == "create" and c.get("id") is None  # noqa: E731
    else:
        key = (last.get("object"), last.get("id"), last.get("action"))
        same = lambda c: (c.get("object"), c.get("id"), c.get("action")) == key  # noqa: E731
    start = len(changes)
    while start > 0 and same(changes[start - 1]):
        start -= 1
    return start


def emit_outcome(pending: Pending, outcome: Outcome) -> Iterable[Any]:
    """Counts the outcome; yields LEDGER entries, a DEAD letter if it failed, then (pending, outcome)."""
    metrics.counter(metrics.OUTCOME_PREFIX + outcome.kind).inc()
    status = ledger_status(outcome)
    for event_id in pending.request.event_ids:
        yield beam.pvalue.TaggedOutput(LEDGER, (event_id, status))
    if outcome.kind == "failed":
        yield beam.pvalue.TaggedOutput(DEAD, letter_for(pending, outcome))
    yield (pending, outcome)


class EmitOutcomes(beam.DoFn):
    """(Pending, Outcome) → what `emit_outcome` makes of it."""

    def process(self, item):
        yield from emit_outcome(*item)


class SettleSuppressed(beam.PTransform):
    """Suppressed requests end like applied ones: an `unchanged` outcome, no API call."""

    def expand(self, suppressed):
        return suppressed | "Emit" >> beam.ParDo(EmitOutcomes()).with_outputs(DEAD, LEDGER, main="outcomes")
