"""ParseEvents (unbounded input): raw payloads → Segment events, dropping redeliveries and dead-lettering bad
input; `EventParser`, the parse of one payload, is shared with the bounded per-person fold."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from closecrm.events.parse import BadEvent, opted_out, parse_event
from closecrm.model import DeadLetter, Origin, Received
from transforms import metrics
from transforms.deadletter import DEAD, internal_error, raw_for_letter
from transforms.dedupe import DropRedeliveriesWithTtl, dedupe_bucket
from transforms.kafka_tally import TALLY, KafkaClaim, claimed, is_kafka, settled
from transforms.ledger import DEAD as LEDGER_DEAD
from transforms.ledger import LEDGER, SKIPPED


def raw_id(raw: Any) -> str:
    """A stable id for input that never became an event (it names the input in its dead letter)."""
    if isinstance(raw, bytes):
        blob = raw
    else:
        try:
            text = repr(raw)
        except RecursionError:  # a row nested too deep to print: named by its clipped form
            text = repr(raw_for_letter(raw))
        blob = text.encode("utf-8", errors="replace")
    return "raw:" + hashlib.sha256(blob).hexdigest()[:24]


def readable_message_id(raw: Any) -> str | None:
    """The top-level ``messageId`` of input that did not become an event, when it can be read: the
    input is a JSON object (or a row) whose messageId is non-empty text. Producers know their events by
    it, so a dead letter is easier to trace by it than by a hash of the line."""
    obj = raw
    if isinstance(raw, bytes | bytearray | memoryview | str):
        try:
            obj = json.loads(bytes(raw) if not isinstance(raw, str) else raw)
        except (ValueError, RecursionError, UnicodeDecodeError):
            return None
    if not isinstance(obj, dict):
        return None
    message_id = obj.get("messageId")
    if not isinstance(message_id, str) or not message_id.strip():
        return None
    try:
        message_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not something to name a letter by
        return None
    return message_id


def dead_raw(raw: Any, reason: str, origin: Origin | None = None) -> list[Any]:
    """The dead letter and the ledger entry of input that did not become an event.

    The letter is named by the input's messageId when one can be read, else by a hash of the input,
    and says where the input was read (``origin``). The ledger key is unique to this read: two
    identical bad lines are two events read, and the ledger folds entries by key.
    """
    try:
        rid, event = raw_id(raw), raw_for_letter(raw)
    except Exception:  # noqa: BLE001 - input that cannot even be shown is still accounted for
        rid, event = "raw:unprintable", None
    try:
        letter_id = readable_message_id(raw) or rid
    except Exception:  # noqa: BLE001 - the hash names it then
        letter_id = rid
    letter = DeadLetter(
        stage="parse",
        reason=reason,
        event=event,
        event_ids=(letter_id,),
        source=origin.to_json() if origin is not None else None,
    )
    return [
        beam.pvalue.TaggedOutput(DEAD, letter),
        beam.pvalue.TaggedOutput(LEDGER, (f"{rid}:{uuid.uuid4().hex}", LEDGER_DEAD)),
    ]


class EventParser:
    """A payload → its Event, or its dead letter and ledger entry, or (opted out of Close) its skipped
    ledger entry; ``tally`` also settles an opted-out Kafka record. The parse DoFn's work, also done
    inside the bounded per-person fold (`transforms.per_person`)."""

    def __init__(self, max_bytes: int, tally: bool = False) -> None:
        self._max_bytes = max_bytes
        self._tally = tally
        self._opted_out = metrics.counter(metrics.EVENTS_OPTED_OUT)
        self._by_type: dict[str, metrics._Counter] = {}

    def outputs(self, raw: Any, origin: Origin | None) -> Iterator[Any]:
        try:
            event = parse_event(raw, max_bytes=self._max_bytes, origin=origin)
            skip = opted_out(event)
        except BadEvent as exc:
            yield from dead_raw(raw, exc.reason, origin)
            return
        except Exception as exc:  # noqa: BLE001 - bad input must not fail the bundle (and the job)
            yield from dead_raw(raw, internal_error(exc), origin)
            return
        by_type = self._by_type.get(event.type)
        if by_type is None:
            by_type = self._by_type[event.type] = metrics.counter(metrics.EVENTS_BY_TYPE + event.type)
        by_type.inc()
        if skip:
            self._opted_out.inc()
            yield beam.pvalue.TaggedOutput(LEDGER, (event.message_id, SKIPPED))
            if self._tally and is_kafka(origin):
                yield settled(origin)
            return
        yield event


def received(raw: Any) -> tuple[Any, Origin | None]:
    """(payload, where it was read): sources hand on a `Received`; tests and rows hand on the payload."""
    if isinstance(raw, Received):
        return raw.payload, raw.origin
    return raw, None


class _Parse(beam.DoFn):
    """Payload (or `Received` payload) → Event, carrying the payload as read and its origin."""

    def __init__(self, max_bytes: int, tally: bool = False) -> None:
        self._parser = EventParser(max_bytes, tally)
        self._read = metrics.counter(metrics.EVENTS_READ)

    def process(self, raw: Any):
        if isinstance(raw, KafkaClaim):  # the reader's account of its offsets, for the commit stage
            yield claimed(raw)
            return
        self._read.inc()
        yield from self._parser.outputs(*received(raw))


class ParseEvents(beam.PTransform):
    """Main output: Event. Tagged outputs: DEAD (DeadLetter), LEDGER ((event_id, status)), and TALLY
    (`transforms.kafka_tally`: the records it settles, and the reader's claims).

    Unbounded input only: bounded input is parsed, and its redeliveries dropped, in the per-person
    shuffle (`transforms.per_person.PerPerson`). ``dedupe_ttl_seconds``: how long a messageId is
    remembered to drop its redeliveries (None: dedupe switched off in the config)."""

    def __init__(self, max_bytes: int, dedupe_ttl_seconds: float | None, tally: bool = False) -> None:
        super().__init__()
        self._tally = tally
        self._max_bytes = max_bytes
        self._ttl = dedupe_ttl_seconds

    def expand(self, raw):
        parsed = raw | "Parse" >> beam.ParDo(_Parse(self._max_bytes, self._tally)).with_outputs(
            DEAD, LEDGER, TALLY, main="events"
        )
        if self._ttl is None:  # dedupe switched off in the config
            return {"events": parsed.events, DEAD: parsed[DEAD], LEDGER: parsed[LEDGER], TALLY: [parsed[TALLY]]}
        # MessageIds in a bounded number of keyed buckets, each pruned at expiry.
        unique = (
            parsed.events
            | "KeyByMessageBucket"
            >> beam.Map(lambda e: (dedupe_bucket(e.message_id), e)).with_output_types(tuple[int, Any])
            | "DropRedeliveries"
            >> beam.ParDo(DropRedeliveriesWithTtl(self._ttl, self._tally)).with_outputs(LEDGER, TALLY, main="events")
        )
        ledger = (parsed[LEDGER], unique[LEDGER]) | "MergeLedger" >> beam.Flatten()
        return {"events": unique.events, DEAD: parsed[DEAD], LEDGER: ledger, TALLY: [parsed[TALLY], unique[TALLY]]}
