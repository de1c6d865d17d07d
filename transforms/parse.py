"""ParseEvents: raw payloads → Segment events, dropping redeliveries and dead-lettering bad input."""

from __future__ import annotations

import hashlib
import pickle
import uuid
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from closecrm.events import BadEvent, Event, opted_out, parse_event
from closecrm.model import DeadLetter
from transforms import metrics
from transforms.deadletter import DEAD, raw_for_letter
from transforms.ledger import DEAD as LEDGER_DEAD
from transforms.ledger import LEDGER, SKIPPED


def raw_id(raw: Any) -> str:
    """A stable id for input that never became an event (so the ledger can still count it)."""
    blob = raw if isinstance(raw, bytes) else repr(raw).encode("utf-8", errors="replace")
    return "raw:" + hashlib.sha256(blob).hexdigest()[:24]


class _Parse(beam.DoFn):
    """Main output: Event, or with ``keyed`` (bounded input, dedupe on) (messageId, pickled Event):
    the grouping buffer of the local runner then holds bytes, not decoded events, and the events
    are pickled once instead of once per encoding on the way through the shuffle."""

    def __init__(self, max_bytes: int, keyed: bool = False) -> None:
        self._max_bytes = max_bytes
        self._keyed = keyed
        self._read = metrics.counter(metrics.EVENTS_READ)
        self._opted_out = metrics.counter(metrics.EVENTS_OPTED_OUT)

    def process(self, raw: Any):
        self._read.inc()
        try:
            event = parse_event(raw, max_bytes=self._max_bytes)
        except BadEvent as exc:
            rid = raw_id(raw)
            yield beam.pvalue.TaggedOutput(
                DEAD,
                DeadLetter(stage="parse", reason=exc.reason, event=raw_for_letter(raw), event_ids=(rid,)),
            )
            yield beam.pvalue.TaggedOutput(LEDGER, (rid, LEDGER_DEAD))
            return
        metrics.counter(metrics.EVENTS_BY_TYPE + event.type).inc()
        if opted_out(event):
            self._opted_out.inc()
            yield beam.pvalue.TaggedOutput(LEDGER, (event.message_id, SKIPPED))
            return
        if self._keyed:
            yield (event.message_id, pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL))
            return
        yield event


class _DropRedeliveries(beam.DoFn):
    """Keyed by messageId: the first copy passes, later copies are dropped (the state-based form;
    bounded input uses `_FirstOfGroup`, unbounded input the TTL subclass)."""

    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._dupes = metrics.counter(metrics.EVENTS_DUPLICATE)

    def process(self, item: tuple[str, Event], seen=beam.DoFn.StateParam(SEEN)):
        yield from self._first_copy_only(item, seen)

    def _first_copy_only(self, item: tuple[str, Event], seen) -> Iterable[Any]:
        if seen.read():
            self._dupes.inc()
            # A redelivered copy ends as skipped, under a ledger key of its own.
            yield beam.pvalue.TaggedOutput(LEDGER, (f"dup:{item[0]}:{uuid.uuid4().hex}", SKIPPED))
            return
        seen.write(True)
        yield item[1]


class _FirstOfGroup(beam.DoFn):
    """Bounded input, after a GroupByKey on messageId: the first copy passes, later copies are dropped.

    Same result as `_DropRedeliveries` on bounded input (state that lives until the end of the
    input), without per-key state reads, writes and commits.
    """

    def __init__(self) -> None:
        self._dupes = metrics.counter(metrics.EVENTS_DUPLICATE)

    def process(self, item: tuple[str, Iterable[bytes]]):
        message_id, copies = item
        first = True
        for blob in copies:
            if first:
                first = False
                yield pickle.loads(blob)
                continue
            self._dupes.inc()
            # A redelivered copy ends as skipped, under a ledger key of its own.
            yield beam.pvalue.TaggedOutput(LEDGER, (f"dup:{message_id}:{uuid.uuid4().hex}", SKIPPED))


class _DropRedeliveriesWithTtl(_DropRedeliveries):
    """Unbounded input: a messageId is remembered for the TTL, then its state is cleared."""

    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def process(
        self,
        item: tuple[str, Event],
        seen=beam.DoFn.StateParam(_DropRedeliveries.SEEN),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ):
        first = seen.read() is None
        yield from self._first_copy_only(item, seen)
        if first:
            expiry.set(Timestamp.now() + Duration(seconds=self._ttl))

    @on_timer(EXPIRY)
    def expire(self, seen=beam.DoFn.StateParam(_DropRedeliveries.SEEN)):
        seen.clear()


class ParseEvents(beam.PTransform):
    """Main output: Event. Tagged outputs: DEAD (DeadLetter), LEDGER ((event_id, status))."""

    def __init__(
        self, max_bytes: int = 64 * 1024, dedupe_ttl_seconds: float | None = 600.0, streaming: bool = False
    ) -> None:
        super().__init__()
        self._max_bytes = max_bytes
        self._ttl = dedupe_ttl_seconds
        self._streaming = streaming

    def expand(self, raw):
        if self._ttl is not None and not self._streaming:
            # Bounded input: the copies of each messageId are grouped once (no per-key state), the
            # parser emitting (messageId, pickled event) straight into the grouping.
            parse = beam.ParDo(_Parse(self._max_bytes, keyed=True)).with_output_types(tuple[str, bytes])
            parsed = raw | "Parse" >> parse.with_outputs(DEAD, LEDGER, main="events")
            unique = (
                parsed.events
                | "GroupByMessageId" >> beam.GroupByKey()
                | "DropRedeliveries" >> beam.ParDo(_FirstOfGroup()).with_outputs(LEDGER, main="events")
            )
            ledger = (parsed[LEDGER], unique[LEDGER]) | "MergeLedger" >> beam.Flatten()
            return {"events": unique.events, DEAD: parsed[DEAD], LEDGER: ledger}
        parsed = raw | "Parse" >> beam.ParDo(_Parse(self._max_bytes)).with_outputs(
            DEAD, LEDGER, main="events"
        )
        if self._ttl is None:  # dedupe switched off in the config
            return {"events": parsed.events, DEAD: parsed[DEAD], LEDGER: parsed[LEDGER]}
        unique = (
            parsed.events
            | "KeyByMessageId" >> beam.Map(lambda e: (e.message_id, e)).with_output_types(tuple[str, Any])
            | "DropRedeliveries"
            >> beam.ParDo(_DropRedeliveriesWithTtl(self._ttl)).with_outputs(LEDGER, main="events")
        )
        ledger = (parsed[LEDGER], unique[LEDGER]) | "MergeLedger" >> beam.Flatten()
        return {"events": unique.events, DEAD: parsed[DEAD], LEDGER: ledger}
