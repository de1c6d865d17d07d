"""ParseEvents: raw payloads → Segment events, dropping redeliveries and dead-lettering bad input."""

from __future__ import annotations

import hashlib
import pickle
import uuid
import zlib
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from closecrm.events import BadEvent, Event, opted_out, parse_event
from closecrm.model import DeadLetter
from transforms import metrics
from transforms.deadletter import DEAD, internal_error, raw_for_letter
from transforms.dedupe import DropRedeliveriesWithTtl, dedupe_bucket
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


def dead_raw(raw: Any, reason: str) -> list[Any]:
    """The dead letter and the ledger entry of input that did not become an event.

    The ledger key is unique to this read: two identical bad lines are two events read, and the
    ledger folds entries by key.
    """
    try:
        rid, event = raw_id(raw), raw_for_letter(raw)
    except Exception:  # noqa: BLE001 - input that cannot even be shown is still accounted for
        rid, event = "raw:unprintable", None
    return [
        beam.pvalue.TaggedOutput(DEAD, DeadLetter(stage="parse", reason=reason, event=event, event_ids=(rid,))),
        beam.pvalue.TaggedOutput(LEDGER, (f"{rid}:{uuid.uuid4().hex}", LEDGER_DEAD)),
    ]


# Bounded input with dedupe on: events travel to the dedupe in packs, one compressed pickled list per
# shard of messageIds and bundle (the local runner keeps a stage's whole output in memory, and a shuffled
# element per event costs more CPU than the event's own parsing).
DEDUPE_SHARDS = 16
_PACK_LIMIT = 20_000  # events a bundle holds before it ships them


def pack(items: list[Any]) -> bytes:
    return zlib.compress(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpack(blob: bytes) -> list[Any]:
    return pickle.loads(zlib.decompress(blob))


def message_shard(message_id: str) -> int:
    return zlib.crc32(message_id.encode("utf-8", errors="surrogatepass")) % DEDUPE_SHARDS


class _Parse(beam.DoFn):
    """Main output: Event, or with ``packed`` (shard, packed [Event, ...]) per bundle and shard."""

    def __init__(self, max_bytes: int, packed: bool = False) -> None:
        self._max_bytes = max_bytes
        self._packed = packed
        self._read = metrics.counter(metrics.EVENTS_READ)
        self._opted_out = metrics.counter(metrics.EVENTS_OPTED_OUT)

    def setup(self) -> None:
        self._by_type: dict[str, metrics._Counter] = {}

    def start_bundle(self) -> None:
        self._packs: dict[int, list[Event]] = {}
        self._held = 0

    def process(self, raw: Any):
        self._read.inc()
        try:
            event = parse_event(raw, max_bytes=self._max_bytes)
            skip = opted_out(event)
        except BadEvent as exc:
            yield from dead_raw(raw, exc.reason)
            return
        except Exception as exc:  # noqa: BLE001 - bad input must not fail the bundle (and the job)
            yield from dead_raw(raw, internal_error(exc))
            return
        by_type = self._by_type.get(event.type)
        if by_type is None:
            by_type = self._by_type[event.type] = metrics.counter(metrics.EVENTS_BY_TYPE + event.type)
        by_type.inc()
        if skip:
            self._opted_out.inc()
            yield beam.pvalue.TaggedOutput(LEDGER, (event.message_id, SKIPPED))
            return
        if self._packed:
            self._packs.setdefault(message_shard(event.message_id), []).append(event)
            self._held += 1
            if self._held >= _PACK_LIMIT:
                yield from self._ship()
            return
        yield event

    def finish_bundle(self):
        if self._packed:
            for shard_pack in self._ship():
                yield WindowedValue(shard_pack, GlobalWindow().max_timestamp(), (GlobalWindow(),))

    def _ship(self) -> list[tuple[int, bytes]]:
        packs, self._packs, self._held = self._packs, {}, 0
        return [(shard, pack(events)) for shard, events in sorted(packs.items())]


class _FirstOfShard(beam.DoFn):
    """Bounded input, all packs of one messageId shard: the first copy of each messageId passes, later
    copies are dropped. Same result as `DropRedeliveriesWithTtl` with a TTL that lasts until the end of the
    input, without per-key state or a shuffled element per event."""

    def __init__(self) -> None:
        self._dupes = metrics.counter(metrics.EVENTS_DUPLICATE)

    def process(self, item: tuple[int, Iterable[bytes]]):
        _, packs = item
        seen: set[str] = set()
        for blob in packs:
            for event in unpack(blob):
                if event.message_id not in seen:
                    seen.add(event.message_id)
                    yield event
                    continue
                self._dupes.inc()
                # A redelivered copy ends as skipped, under a ledger key of its own.
                yield beam.pvalue.TaggedOutput(
                    LEDGER, (f"dup:{event.message_id}:{uuid.uuid4().hex}", SKIPPED)
                )


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
            # Bounded input: events are grouped by messageId shard in packs, and each shard drops the
            # later copies of a messageId in one pass (no per-key state, no element per event).
            parse = beam.ParDo(_Parse(self._max_bytes, packed=True)).with_output_types(tuple[int, bytes])
            parsed = raw | "Parse" >> parse.with_outputs(DEAD, LEDGER, main="events")
            unique = (
                parsed.events
                | "GroupByMessageShard" >> beam.GroupByKey()
                | "DropRedeliveries" >> beam.ParDo(_FirstOfShard()).with_outputs(LEDGER, main="events")
            )
            ledger = (parsed[LEDGER], unique[LEDGER]) | "MergeLedger" >> beam.Flatten()
            return {"events": unique.events, DEAD: parsed[DEAD], LEDGER: ledger}
        parsed = raw | "Parse" >> beam.ParDo(_Parse(self._max_bytes)).with_outputs(
            DEAD, LEDGER, main="events"
        )
        if self._ttl is None:  # dedupe switched off in the config
            return {"events": parsed.events, DEAD: parsed[DEAD], LEDGER: parsed[LEDGER]}
        # Unbounded input: messageIds in a bounded number of keyed buckets, each pruned at expiry.
        unique = (
            parsed.events
            | "KeyByMessageBucket"
            >> beam.Map(lambda e: (dedupe_bucket(e.message_id), e)).with_output_types(tuple[int, Any])
            | "DropRedeliveries"
            >> beam.ParDo(DropRedeliveriesWithTtl(self._ttl)).with_outputs(LEDGER, main="events")
        )
        ledger = (parsed[LEDGER], unique[LEDGER]) | "MergeLedger" >> beam.Flatten()
        return {"events": unique.events, DEAD: parsed[DEAD], LEDGER: ledger}
