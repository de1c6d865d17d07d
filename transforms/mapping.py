"""MapToUpserts: events → "Create or Update Contact and Lead" requests through the user's mappings."""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam

from closecrm.events import BadEvent, Event
from closecrm.mapping import MappingSpec, compile_mappings, map_event
from closecrm.model import DeadLetter, UpsertRequest
from transforms import metrics
from transforms.deadletter import DEAD, internal_error, raw_for_letter
from transforms.ledger import DEAD as LEDGER_DEAD
from transforms.ledger import LEDGER, SKIPPED


def person_key(event: Event, request: UpsertRequest) -> str:
    """Who a request is about: the user, else the anonymous visitor, else the email."""
    if event.user_id:
        return f"user:{event.user_id}"
    if event.anonymous_id:
        return f"anon:{event.anonymous_id}"
    return f"email:{(request.contact_email or '').lower()}"


class _Map(beam.DoFn):
    def __init__(self, specs: Sequence[MappingSpec]) -> None:
        self._specs = list(specs)
        self._mapped = metrics.counter(metrics.REQUESTS_MAPPED)
        self._filtered = metrics.counter(metrics.EVENTS_FILTERED)

    def setup(self) -> None:
        self._compiled = compile_mappings(self._specs)

    def process(self, event: Event):
        # Everything that can fail runs before the first output, so a failed event ends as one dead
        # letter and nothing else.
        try:
            keyed = [(person_key(event, r), (r, event.raw)) for r in map_event(event, self._compiled)]
        except BadEvent as exc:
            yield from _dead(event, exc.reason)
            return
        except Exception as exc:  # noqa: BLE001 - one bad event must not fail the bundle (and the job)
            yield from _dead(event, internal_error(exc))
            return
        if not keyed:
            self._filtered.inc()
            yield beam.pvalue.TaggedOutput(LEDGER, (event.message_id, SKIPPED))
            return
        self._mapped.inc(len(keyed))
        yield from keyed


def _dead(event: Event, reason: str) -> list[beam.pvalue.TaggedOutput]:
    letter = DeadLetter(
        stage="map", reason=reason, event=raw_for_letter(event.raw), event_ids=(event.message_id,)
    )
    return [
        beam.pvalue.TaggedOutput(DEAD, letter),
        beam.pvalue.TaggedOutput(LEDGER, (event.message_id, LEDGER_DEAD)),
    ]


class MapToUpserts(beam.PTransform):
    """Main output: (person key, (UpsertRequest, original event)). Tagged outputs: DEAD, LEDGER."""

    def __init__(self, specs: Sequence[MappingSpec]) -> None:
        super().__init__()
        self._specs = list(specs)

    def expand(self, events):
        return events | "Map" >> beam.ParDo(_Map(self._specs)).with_outputs(DEAD, LEDGER, main="requests")
