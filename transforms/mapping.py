"""MapToUpserts: events → "Create or Update Contact and Lead" requests through the user's mappings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from closecrm.events.mapping import MappingSpec, compile_mappings, map_event
from closecrm.events.parse import BadEvent, Event
from closecrm.model import DeadLetter, Received, UpsertRequest
from transforms import metrics
from transforms.deadletter import DEAD, internal_error, letter_event, raw_for_letter
from transforms.kafka_tally import TALLY, expected, is_kafka, settled
from transforms.ledger import DEAD as LEDGER_DEAD
from transforms.ledger import LEDGER, SKIPPED


def person_of(user_id: str | None, anonymous_id: str | None) -> str | None:
    """Who an event with these ids is about, when it says: the user, else the anonymous visitor."""
    if user_id:
        return f"user:{user_id}"
    if anonymous_id:
        return f"anon:{anonymous_id}"
    return None


def event_person(event: Event) -> str | None:
    """Who an event is about, when it says (`person_of` its ids)."""
    return person_of(event.user_id, event.anonymous_id)


def person_key(event: Event, request: UpsertRequest) -> str:
    """Who a request is about: the user, else the anonymous visitor (`event_person`), else the email."""
    return event_person(event) or f"email:{(request.contact_email or '').lower()}"


class EventMapper:
    """An event → its outputs: (person key, (UpsertRequest, the event as read)) per request, or its dead
    letter, or its skipped ledger entry (and, with ``tally``, what becomes of its Kafka record). The
    map DoFn's work, also done inside the bounded per-person fold (`transforms.per_person`)."""

    def __init__(self, specs: Sequence[MappingSpec], tally: bool = False) -> None:
        self._specs = list(specs)
        self._tally = tally  # report what becomes of Kafka records (`transforms.kafka_tally`)
        self._mapped = metrics.counter(metrics.REQUESTS_MAPPED)
        self._filtered = metrics.counter(metrics.EVENTS_FILTERED)
        self._dropped = metrics.counter(metrics.FIELDS_DROPPED)
        self._compiled: list[Any] | None = None

    def setup(self) -> None:
        self._compiled = compile_mappings(self._specs)
        self._dropped_by: dict[str, metrics._Counter] = {}

    def outputs(self, event: Event):
        if self._compiled is None:
            self.setup()
        # Everything that can fail runs before the first output, so a failed event ends as one dead
        # letter and nothing else.
        try:
            shown = carried(event)
            keyed = [(person_key(event, r), (r, shown)) for r in map_event(event, self._compiled)]
        except BadEvent as exc:
            yield from _dead(event, exc.reason)
            return
        except Exception as exc:  # noqa: BLE001 - one bad event must not fail the bundle (and the job)
            yield from _dead(event, internal_error(exc))
            return
        if not keyed:
            self._filtered.inc()
            yield beam.pvalue.TaggedOutput(LEDGER, (event.message_id, SKIPPED))
            if self._tally and is_kafka(event.origin):
                yield settled(event.origin)
            return
        if self._tally and is_kafka(event.origin):
            yield expected(event.message_id, event.origin, len(keyed))
        self._mapped.inc(len(keyed))
        for _, (request, _) in keyed:
            self._count_dropped(request)
        yield from keyed

    def _count_dropped(self, request: UpsertRequest) -> None:
        """The run's own record of each value left out: a total, and one counter per field and reason."""
        if not request.dropped:
            return
        self._dropped.inc(len(request.dropped))
        for dropped in request.dropped:
            # custom-field keys can come from the event: they are named in the audit log, not in a
            # counter's name, so the number of counters stays bounded
            action_field = dropped.field.split(".", 1)[0]
            name = f"{metrics.FIELDS_DROPPED_PREFIX}{action_field}:{dropped.reason}"
            counter = self._dropped_by.get(name)
            if counter is None:
                counter = self._dropped_by[name] = metrics.counter(name)
            counter.inc()


class _Map(beam.DoFn):
    def __init__(self, specs: Sequence[MappingSpec], tally: bool = False) -> None:
        self._mapper = EventMapper(specs, tally)

    def setup(self) -> None:
        self._mapper.setup()

    def process(self, event: Event):
        return self._mapper.outputs(event)


def carried(event: Event) -> Any:
    """What a request carries of its event, for a dead letter at a later stage: the payload as it was
    read and where (`Received`; JSON text stays text, which packs smaller than the parsed object), or
    the parsed event when it was not read from a source."""
    if event.received is None:
        return event.raw
    return Received(event.received, event.origin)


def _dead(event: Event, reason: str) -> list[beam.pvalue.TaggedOutput]:
    try:
        shown, source = letter_event(carried(event))
    except Exception:  # noqa: BLE001 - the parsed event then; the letter must be written
        shown, source = raw_for_letter(event.raw), None
    letter = DeadLetter(stage="map", reason=reason, event=shown, event_ids=(event.message_id,), source=source)
    return [
        beam.pvalue.TaggedOutput(DEAD, letter),
        beam.pvalue.TaggedOutput(LEDGER, (event.message_id, LEDGER_DEAD)),
    ]


class MapToUpserts(beam.PTransform):
    """Main output: (person key, (UpsertRequest, the event as read, see `carried`)). Tagged outputs:
    DEAD, LEDGER, TALLY (`transforms.kafka_tally`)."""

    def __init__(self, specs: Sequence[MappingSpec], tally: bool = False) -> None:
        super().__init__()
        self._specs = list(specs)
        self._tally = tally

    def expand(self, events):
        return events | "Map" >> beam.ParDo(_Map(self._specs, self._tally)).with_outputs(DEAD, LEDGER, TALLY, main="requests")
