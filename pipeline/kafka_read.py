"""Kafka read in Python: a splittable DoFn per partition, bounded to the end offsets seen at start for a
batch run, unbounded under streaming, with offsets committed on bundle finalization.

Each partition is one element whose restriction is an offset range: ``[start, end)`` for a bounded read,
``[start, MAX)`` for an unbounded one. An unbounded call reads what the broker has, claims each offset,
then returns ``ProcessContinuation.resume()``; the runner checkpoints the rest of the range and calls again.
The watermark of a partition follows its records' timestamps (less ``max_delay``); a partition with nothing
to read holds the job's watermark back by at most ``idle_seconds`` behind the wall clock.

Offsets are committed to the consumer group in bundle finalization, which a runner calls once the
bundle's output is durably committed (Dataflow; Flink after a checkpoint), or, on Prism, which finalizes
right after the bundle and keeps its output in memory, by the job's commit stage once every earlier
record's outcome is settled (``commit="settled"``: each call hands on a `KafkaClaim`). Delivery is at least once: after a restart the job reads again from the committed
offsets, and its dedupe and created-id ledger keep what it re-reads from being created twice.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import ProcessContinuation, RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from closecrm.model import Origin, Received
from transforms.kafka_tally import KafkaClaim

_LOG = logging.getLogger(__name__)

UNBOUNDED_END = sys.maxsize  # the end of an unbounded partition's offset range

# A producer may stamp a message with any int64 of milliseconds (nanoseconds by mistake, say); Beam's
# timestamps are int64 microseconds and end with the global window, and an element stamped later fails
# the bundle, so a later message keeps the time of its read, like one without a timestamp.
LATEST_KAFKA_MILLIS = GlobalWindow().max_timestamp().micros // 1000


@dataclass(frozen=True)
class KafkaPartitionRange:
    """Offsets [start, end) of one partition; ``end`` None: unbounded (read until the job stops)."""

    topic: str
    partition: int
    start: int
    end: int | None

    @property
    def bounded(self) -> bool:
        return self.end is not None


@dataclass(frozen=True)
class KafkaReadSettings:
    """How the Python reader reads. ``unbounded``: read forever, starting from the consumer group's
    committed offsets (else ``auto.offset.reset``), and commit on bundle finalization; bounded: read up
    to the end offsets seen at start, from each partition's start (or ``start_offsets``), commit nothing."""

    unbounded: bool = False
    start_offsets: Mapping[int, int] | None = None
    batch: int = 500  # messages per consume() call
    poll_seconds: float = 1.0  # how long one consume() waits for messages
    resume_seconds: float = 0.5  # an unbounded call that found nothing resumes after this
    max_delay_seconds: float = 5.0  # the watermark trails the newest record time by this
    idle_seconds: float = 10.0  # an idle partition holds the watermark back by at most this
    idle_timeout_seconds: float = 30.0  # a bounded read that gets nothing for this long fails
    # How an unbounded call asks to be called again: "defer" (the tracker's self-checkpoint, which
    # portable runners honour) or "yield" (a ProcessContinuation, which the DirectRunner's SDF runner reads).
    continuation: str = "defer"
    # When an unbounded read commits: "finalize" (bundle finalization, durable on Dataflow and Flink) or
    # "settled" (never here: each call hands on a `KafkaClaim`, and `pipeline.kafka_commit` commits once
    # the records' outcomes are settled; Prism finalizes in memory).
    commit: str = "finalize"


class PlanKafkaPartitions(beam.DoFn):
    """The topic's partitions, each with the offset to start at and, for a bounded read, the end offset
    (the high watermark now)."""

    def __init__(self, consumer_config: Mapping[str, str], settings: KafkaReadSettings, timeout_s: float = 30.0):
        self._config = dict(consumer_config)
        self._settings = settings
        self._timeout_s = timeout_s

    def process(self, topic: str) -> Iterator[KafkaPartitionRange]:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        consumer = Consumer(self._config)
        try:
            metadata = consumer.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
            if metadata is None or metadata.error is not None:
                raise KafkaException(f"topic {topic!r} unavailable: {metadata.error if metadata else 'missing'}")
            starts = dict(self._settings.start_offsets or {})
            unknown = set(starts) - set(metadata.partitions)
            if unknown:
                raise ValueError(f"topic {topic!r} has no partition(s) {sorted(unknown)}")
            partitions = sorted(metadata.partitions)
            committed = self._committed(consumer, topic, partitions) if self._settings.unbounded else {}
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self._timeout_s)
                if self._settings.unbounded:
                    start = committed.get(partition)
                    if start is None:
                        start = high if self._config.get("auto.offset.reset") == "latest" else low
                    yield KafkaPartitionRange(topic, partition, max(low, start), None)
                    continue
                start = max(low, starts.get(partition, low))
                if start < high:
                    yield KafkaPartitionRange(topic, partition, start, high)
        finally:
            consumer.close()

    def _committed(self, consumer: Any, topic: str, partitions: list[int]) -> dict[int, int]:
        """The group's committed offsets; retried while the broker is still electing the group's
        coordinator (a new group's offsets topic is created on first use)."""
        from confluent_kafka import KafkaException, TopicPartition

        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=self._timeout_s)
                return {tp.partition: tp.offset for tp in found if tp.offset >= 0}
            except KafkaException as error:
                code = error.args[0].code()
                waiting = code in _COORDINATOR_NOT_READY or error.args[0].retriable()
                if not waiting or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _coordinator_not_ready() -> frozenset[int]:
    from confluent_kafka import KafkaError

    return frozenset(
        {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS}
    )


_COORDINATOR_NOT_READY = _coordinator_not_ready()


class _Offsets(RestrictionProvider):
    """A partition's restriction: its offset range."""

    def initial_restriction(self, span: KafkaPartitionRange) -> OffsetRange:
        return OffsetRange(span.start, span.end if span.end is not None else UNBOUNDED_END)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return _PartitionTracker(restriction)

    def split(self, span: KafkaPartitionRange, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction  # one reader per partition

    def restriction_size(self, span: KafkaPartitionRange, restriction: OffsetRange) -> int:
        # An unbounded range would report sys.maxsize; runners only compare sizes, so keep it modest.
        return min(restriction.size(), 1 << 20)

    def truncate(self, span: KafkaPartitionRange, restriction: OffsetRange) -> OffsetRange | None:
        # Draining an unbounded read stops where it is; a bounded one is read to its end.
        return restriction if span.bounded else None


class _PartitionTracker(OffsetRestrictionTracker):
    """An offset range; an unbounded one splits only to checkpoint (a partition is read by one reader:
    a split in the middle of offsets no message has yet would hand the reader a range it cannot seek to)."""

    def is_bounded(self) -> bool:
        return self.current_restriction().stop != UNBOUNDED_END

    def try_split(self, fraction_of_remainder: float):  # noqa: ANN201
        if fraction_of_remainder > 0 and not self.is_bounded():
            return None
        return super().try_split(fraction_of_remainder)


class _PartitionWatermarks(WatermarkEstimatorProvider):
    """A manual watermark per partition, kept across checkpoints as its estimator state."""

    def initial_estimator_state(self, span: KafkaPartitionRange, restriction: OffsetRange) -> Timestamp | None:
        return None

    def create_watermark_estimator(self, state: Timestamp | None) -> ManualWatermarkEstimator:
        return ManualWatermarkEstimator(state)


_OFFSETS = _Offsets()
_WATERMARKS = _PartitionWatermarks()


class ReadKafkaPartition(beam.DoFn):
    """The values of one partition, with their topic, partition and offset, stamped with their Kafka
    timestamps; tombstones are skipped. Bounded ranges are read to their end in one call."""

    def __init__(self, consumer_config: Mapping[str, str], settings: KafkaReadSettings | None = None):
        self._config = dict(consumer_config)
        self._settings = settings or KafkaReadSettings()
        self._consumer: Any = None
        self._tombstones = Metrics.counter("close_sync.sources", "kafka_tombstones")
        self._commits = Metrics.counter("close_sync.sources", "kafka_offset_commits")

    def setup(self) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer({**self._config, "enable.partition.eof": "true"})

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def process(
        self,
        span: KafkaPartitionRange,
        tracker=beam.DoFn.RestrictionParam(_OFFSETS),
        watermark=beam.DoFn.WatermarkEstimatorParam(_WATERMARKS),
    ) -> Iterator[Any]:
        yield from self._read_to_end(span, tracker)

    def _read_to_end(self, span: KafkaPartitionRange, tracker: Any) -> Iterator[Any]:
        from confluent_kafka import TopicPartition

        start = next_offset = tracker.current_restriction().start
        self._consumer.assign([TopicPartition(span.topic, span.partition, start)])
        try:
            last_progress = time.monotonic()
            while next_offset < tracker.current_restriction().stop:
                messages = self._consumer.consume(self._settings.batch, timeout=self._settings.poll_seconds)
                for message in messages:
                    if _end_of_partition(message):
                        # Offsets up to the end that were never delivered were compacted away or are
                        # transaction markers: the range is done.
                        end = tracker.current_restriction().stop
                        if next_offset < end:
                            tracker.try_claim(end - 1)
                        return
                    if not tracker.try_claim(message.offset()):
                        return
                    next_offset = message.offset() + 1
                    yield from self._payload(message, span)
                if messages:
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > self._settings.idle_timeout_seconds:
                    raise TimeoutError(
                        f"{span.topic}[{span.partition}]: no message for {self._settings.idle_timeout_seconds}s "
                        f"at offset {next_offset} of [{start}, {tracker.current_restriction().stop})"
                    )
        finally:
            self._consumer.unassign()

    def _payload(self, message: Any, span: KafkaPartitionRange) -> Iterator[TimestampedValue | Received]:
        value = message.value()
        if value is None:
            self._tombstones.inc()
            return
        received = Received(value, Origin("kafka", span.topic, message.offset(), span.partition))
        millis = _usable_millis(message)
        yield TimestampedValue(received, millis / 1000.0) if millis is not None else received

    def _commit(self, topic: str, partition: int, read: _ReadUpTo) -> None:
        """Commits the next offset to read for the consumer group, once the bundle that claimed the
        offsets before it is committed; a failed commit only means those records are read again after a
        restart."""
        from confluent_kafka import KafkaException, TopicPartition

        offset = read.next_offset
        if offset <= read.start or self._settings.commit != "finalize":
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
            self._commits.inc()
        except KafkaException as error:
            _LOG.warning("%s[%d]: offset %d not committed (%s); it will be read again", topic, partition, offset, error)


class ReadKafkaPartitionUnbounded(ReadKafkaPartition):
    """An unbounded partition: what the broker has now, then resume; offsets committed on finalization."""

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        span: KafkaPartitionRange,
        # Before the SDF parameters: Beam passes the others by position and those two by name.
        finalizer=beam.DoFn.BundleFinalizerParam,
        tracker=beam.DoFn.RestrictionParam(_OFFSETS),
        watermark=beam.DoFn.WatermarkEstimatorParam(_WATERMARKS),
    ) -> Iterator[Any]:
        from confluent_kafka import TopicPartition

        start = tracker.current_restriction().start
        read = _ReadUpTo(start)
        # Registered before reading, for every call: a runner that asks to finalize a bundle without a
        # callback gets an error from the SDK harness, and a call may end early on a split.
        finalizer.register(partial(self._commit, span.topic, span.partition, read))
        self._consumer.assign([TopicPartition(span.topic, span.partition, start)])
        newest: float | None = None
        records: list[int] = []
        try:
            messages = self._consumer.consume(self._settings.batch, timeout=self._settings.poll_seconds)
            for message in messages:
                if _end_of_partition(message) or message.offset() < start:
                    continue
                if not tracker.try_claim(message.offset()):
                    yield from self._claim(span, read, records)
                    return
                read.next_offset = message.offset() + 1
                for value in self._payload(message, span):
                    records.append(message.offset())
                    yield value
                millis = _usable_millis(message)
                if millis is not None:
                    newest = max(newest or millis / 1000.0, millis / 1000.0)
        finally:
            self._consumer.unassign()
        yield from self._claim(span, read, records)
        self._advance(watermark, newest)
        got = any(not _end_of_partition(m) for m in messages)
        delay = 0.0 if got else self._settings.resume_seconds
        if self._settings.continuation == "yield":
            yield ProcessContinuation.resume(delay)  # the DirectRunner's own SDF runner
        else:
            tracker.defer_remainder(Duration.of(delay))  # portable runners: Prism, Dataflow, Flink

    def _claim(self, span: KafkaPartitionRange, read: _ReadUpTo, records: list[int]) -> Iterator[KafkaClaim]:
        """What this call claimed, for the commit stage, when offsets are committed once settled."""
        if self._settings.commit == "settled" and read.next_offset > read.start:
            yield KafkaClaim(span.topic, span.partition, span.start, read.start, read.next_offset, tuple(records))

    def _advance(self, watermark: ManualWatermarkEstimator, newest: float | None) -> None:
        """Newest record time less max_delay; without records, no further back than idle_seconds ago."""
        candidate = (
            Timestamp.of(newest - self._settings.max_delay_seconds)
            if newest is not None
            else Timestamp.of(time.time() - self._settings.idle_seconds)
        )
        current = watermark.current_watermark()
        if current is None or candidate > current:
            watermark.set_watermark(candidate)


@dataclass
class _ReadUpTo:
    """The offsets one unbounded call claimed: [start, next_offset)."""

    start: int
    next_offset: int = -1

    def __post_init__(self) -> None:
        self.next_offset = self.start


def _end_of_partition(message: Any) -> bool:
    from confluent_kafka import KafkaError, KafkaException

    error = message.error()
    if error is None:
        return False
    if error.code() == KafkaError._PARTITION_EOF:
        return True
    raise KafkaException(error)


def _usable_millis(message: Any) -> int | None:
    kind, millis = message.timestamp()
    return millis if kind and 0 <= millis <= LATEST_KAFKA_MILLIS else None


class ReadKafkaPython(beam.PTransform):
    """Every message of a topic through the Python reader: bounded or unbounded (`KafkaReadSettings`)."""

    def __init__(self, consumer_config: Mapping[str, str], topic: str, settings: KafkaReadSettings) -> None:
        super().__init__()
        self._config = dict(consumer_config)
        self._topic = topic
        self._settings = settings

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        reader = ReadKafkaPartitionUnbounded if self._settings.unbounded else ReadKafkaPartition
        return (
            pbegin
            | "Topic" >> beam.Create([self._topic])
            | "Plan partitions" >> beam.ParDo(PlanKafkaPartitions(self._config, self._settings))
            | "Spread partitions" >> beam.Reshuffle()
            | "Read partition" >> beam.ParDo(reader(self._config, self._settings))
        )
