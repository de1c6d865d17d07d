"""Commits a local streaming Kafka run's offsets once every earlier record's outcome is settled.

Prism (and so the DirectRunner, which hands streaming Kafka to it) finalizes the read's bundle right
after it and keeps everything in memory: committing there would let a killed run lose what was read
but not yet written. Here the stages' `transforms.kafka_tally` signals are joined per messageId (how
many requests each event became, how many ended) and per partition (which offsets were claimed, which
are settled); a partition's book commits, on a processing-time timer, the first offset whose record is
not settled yet, with a consumer of the same group. Runners that finalize durably (Dataflow, Flink)
keep the reader's own commit in bundle finalization.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.kafka_tally import EventTally, OffsetBook
from transforms.sharded import stable_shard

_LOG = logging.getLogger(__name__)

EVENT_BUCKETS = 256  # messageIds are joined in this many keyed buckets, so keys stay bounded
EVENTS = "events"


def route(signal: tuple[Any, ...]) -> Iterator[Any]:
    """A partition's signals keyed by (topic, partition); an event's by its messageId's bucket."""
    kind = signal[0]
    if kind == "claim":
        _, topic, partition, first, start, stop, records = signal
        yield ((topic, partition), ("claim", first, start, stop, records))
    elif kind == "settled":
        _, topic, partition, offset = signal
        yield ((topic, partition), ("settled", offset))
    else:
        yield beam.pvalue.TaggedOutput(EVENTS, (stable_shard(signal[1], EVENT_BUCKETS), signal))


class SettleEvents(beam.DoFn):
    """(bucket, signal of an event) → ((topic, partition), ("settled", offset)) for each record of an
    event all of whose requests have ended; the event is then forgotten."""

    TALLIES = ReadModifyWriteStateSpec("tallies", PickleCoder())  # {event_id: EventTally}

    def process(self, item: tuple[int, tuple[Any, ...]], tallies=beam.DoFn.StateParam(TALLIES)) -> Iterator[Any]:
        signal = item[1]
        held: dict[str, EventTally] = tallies.read() or {}
        tally = held.get(signal[1])
        if tally is None:
            tally = held[signal[1]] = EventTally()
        tally.add(signal)
        if tally.complete:
            del held[signal[1]]
            for topic, partition, offset in tally.origins:
                yield ((topic, partition), ("settled", offset))
        if held:
            tallies.write(held)
        else:
            tallies.clear()


class CommitSettledOffsets(beam.DoFn):
    """((topic, partition), claim or settled offset) → nothing: keeps the partition's `OffsetBook` and,
    a second after it can move, commits the first offset not settled to the consumer group."""

    BOOK = ReadModifyWriteStateSpec("book", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)

    def __init__(self, consumer_config: Mapping[str, str], interval_seconds: float = 1.0) -> None:
        self._config = dict(consumer_config)
        self._interval = interval_seconds
        self._consumer: Any = None
        self._commits = Metrics.counter("close_sync.sources", "kafka_offset_commits")

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def process(
        self,
        item: tuple[tuple[str, int], tuple[Any, ...]],
        book=beam.DoFn.StateParam(BOOK),
        flush=beam.DoFn.TimerParam(FLUSH),
    ) -> None:
        (topic, partition), signal = item
        current: OffsetBook = book.read() or OffsetBook(topic, partition)
        if signal[0] == "claim":
            current.claim(*signal[1:])
        else:
            current.settle(signal[1])
        if not current.flush_set and current.advanced():
            current.flush_set = True
            flush.set(Timestamp.now() + Duration(seconds=self._interval))
        book.write(current)

    @on_timer(FLUSH)
    def commit(self, book=beam.DoFn.StateParam(BOOK), flush=beam.DoFn.TimerParam(FLUSH)) -> None:
        current: OffsetBook | None = book.read()
        if current is None:
            return
        current.flush_set = False
        point = current.point()
        if point is not None and current.advanced():
            if self._commit(current.topic, current.partition, point):
                current.commit(point)
            else:  # tried again a little later, even if nothing else arrives
                current.flush_set = True
                flush.set(Timestamp.now() + Duration(seconds=self._interval * 5))
        book.write(current)

    def _commit(self, topic: str, partition: int, offset: int) -> bool:
        """A failed commit is retried with the next one; until then a restart reads those records again."""
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        try:
            if self._consumer is None:
                self._consumer = Consumer(self._config)
            self._consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
        except KafkaException as error:
            _LOG.warning("%s[%d]: offset %d not committed (%s); it will be read again", topic, partition, offset, error)
            return False
        self._commits.inc()
        return True


class CommitWhenSettled(beam.PTransform):
    """Every stage's tally signals → offsets committed per partition once their records are settled."""

    def __init__(self, consumer_config: Mapping[str, str], interval_seconds: float = 1.0) -> None:
        super().__init__()
        self._config = dict(consumer_config)
        self._interval = interval_seconds

    def expand(self, tallies):
        signals = [
            t | f"Window{i}" >> beam.WindowInto(beam.window.GlobalWindows()) for i, t in enumerate(tallies)
        ]
        routed = (
            signals | "AllTallies" >> beam.Flatten()
            | "Route" >> beam.FlatMap(route).with_outputs(EVENTS, main="partitions")
        )  # fmt: skip
        by_event = routed[EVENTS] | "SettleEvents" >> beam.ParDo(SettleEvents())
        return (
            (routed.partitions, by_event)
            | "PartitionSignals" >> beam.Flatten()
            | "CommitOffsets" >> beam.ParDo(CommitSettledOffsets(self._config, self._interval))
        )
