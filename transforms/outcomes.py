"""What an outcome becomes: a ledger entry per event, a dead letter when it failed, and itself for the audit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import apache_beam as beam

from closecrm.model import DeadLetter, Outcome
from transforms import metrics
from transforms.collapse import Pending
from transforms.deadletter import DEAD
from transforms.ledger import APPLIED, LEDGER, SKIPPED
from transforms.ledger import DEAD as LEDGER_DEAD


def ledger_status(outcome: Outcome) -> str:
    if outcome.kind == "failed":
        return LEDGER_DEAD
    if outcome.kind == "skipped":
        return SKIPPED
    return APPLIED


def letter_for(pending: Pending, outcome: Outcome) -> DeadLetter:
    events = list(pending.events)
    return DeadLetter(
        stage="upsert",
        reason=outcome.reason or "failed",
        event=events[0] if len(events) == 1 else events,
        request=pending.request.to_json(),
        error={"http_status": outcome.http_status, "body": outcome.error_body, "outcome": outcome.label},
        attempts=outcome.attempts,
        event_ids=pending.request.event_ids,
    )


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
