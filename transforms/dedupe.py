"""Unbounded input: drop redelivered copies of a messageId seen within the TTL, in bounded memory.

Keying the state by messageId gives one key per event. Dataflow collects a key's state once it is
cleared, but the local DirectRunner keeps every key it ever saw (its keyed-state table never drops an
entry), so a long local stream would grow by every messageId it ever read. Here messageIds are spread
over ``DEDUPE_BUCKETS`` keys; each bucket holds
{messageId: expiry} and a processing-time timer prunes it at its earliest expiry. Keys stay bounded
on every runner, and a bucket holds rate × TTL / buckets ids (12 at 20 events/s and a 600 s TTL).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from closecrm.events.parse import Event
from transforms import metrics
from transforms.kafka_tally import is_kafka, settled
from transforms.ledger import LEDGER, SKIPPED
from transforms.sharded import stable_shard

DEDUPE_BUCKETS = 1024


def dedupe_bucket(message_id: str) -> int:
    return stable_shard(message_id, DEDUPE_BUCKETS)


class DropRedeliveriesWithTtl(beam.DoFn):
    """(bucket, Event) → Event for the first copy of a messageId within ``ttl_seconds``; a later copy
    ends as skipped in the ledger, under a key of its own."""

    SEEN = ReadModifyWriteStateSpec("seen_ids", PickleCoder())  # {message_id: expiry, epoch seconds}
    PRUNE = TimerSpec("prune", TimeDomain.REAL_TIME)

    def __init__(self, ttl_seconds: float, tally: bool = False) -> None:
        self._ttl = ttl_seconds
        self._tally = tally  # report settled Kafka records (`transforms.kafka_tally`)
        self._dupes = metrics.counter(metrics.EVENTS_DUPLICATE)

    def process(
        self,
        item: tuple[int, Event],
        seen=beam.DoFn.StateParam(SEEN),
        prune=beam.DoFn.TimerParam(PRUNE),
    ) -> Iterable[Any]:
        event = item[1]
        now = time.time()
        ids: dict[str, float] = seen.read() or {}
        expiry = ids.get(event.message_id)
        if expiry is not None and expiry > now:
            self._dupes.inc()
            yield beam.pvalue.TaggedOutput(LEDGER, (f"dup:{event.message_id}:{uuid.uuid4().hex}", SKIPPED))
            if self._tally and is_kafka(event.origin):
                yield settled(event.origin)
            return
        if not ids:  # the bucket was empty: nothing is due before this id
            prune.set(Timestamp.of(now + self._ttl))
        ids[event.message_id] = now + self._ttl
        seen.write(ids)
        yield event

    @on_timer(PRUNE)
    def prune_expired(self, seen=beam.DoFn.StateParam(SEEN), prune=beam.DoFn.TimerParam(PRUNE)) -> None:
        now = time.time()
        kept = {k: v for k, v in (seen.read() or {}).items() if v > now}
        if kept:
            seen.write(kept)
            prune.set(Timestamp.of(min(kept.values())))
        else:
            seen.clear()
