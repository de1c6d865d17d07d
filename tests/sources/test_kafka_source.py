"""ReadEvents over Kafka on the DirectRunner: a bounded read of a real Apache Kafka broker; each value with
the topic, partition and offset it was read at."""

from __future__ import annotations

import uuid

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from closecrm.model import Received
from pipeline.sources import ReadEvents, SourceOptions
from tests.servers import KafkaBroker

pytestmark = pytest.mark.integration


def payload(n: int) -> bytes:
    return f'{{"type": "identify", "messageId": "k{n}", "userId": "u{n}"}}'.encode()


def options(broker: KafkaBroker, topic: str, **extra: object) -> SourceOptions:
    return SourceOptions(
        source="kafka",
        bootstrap_servers=broker.bootstrap_servers,
        kafka_topic=topic,

        **extra,
    )


def new_topic(broker: KafkaBroker, partitions: int) -> str:
    return broker.create_topic(f"events-{uuid.uuid4().hex[:8]}", partitions=partitions)


def read(pipeline: BeamTestPipeline, source: SourceOptions) -> beam.PCollection:
    """The values read, each unwrapped from its `Received`."""
    return pipeline | ReadEvents(source) | beam.Map(_value)


def _value(received: Received) -> bytes:
    assert isinstance(received, Received) and received.origin.kind == "kafka", received
    return received.payload


def _where(received: Received) -> tuple[bytes, int | None, int | None]:
    return received.payload, received.origin.partition, received.origin.position


def test_every_message_of_every_partition_is_read_exactly_once(kafka_broker: KafkaBroker) -> None:
    topic = new_topic(kafka_broker, partitions=3)
    # Each partition gets its share explicitly: librdkafka's sticky partitioner may put a fast
    # keyless burst into one partition, which would not test reading several.
    delivered = [
        where
        for partition in range(3)
        for where in kafka_broker.produce(topic, (payload(n) for n in range(partition, 60, 3)), partition=partition)
    ]
    assert len({p for p, _ in delivered}) == 3
    pipeline = BeamTestPipeline(runner="DirectRunner")
    values = read(pipeline, options(kafka_broker, topic))
    assert_that(values, equal_to([payload(n) for n in range(60)]))  # a multiset: duplicates would fail
    pipeline.run()


def test_each_value_says_its_topic_partition_and_offset(kafka_broker: KafkaBroker) -> None:
    topic = new_topic(kafka_broker, partitions=2)
    kafka_broker.produce(topic, (payload(n) for n in range(3)), partition=0)
    kafka_broker.produce(topic, (payload(n) for n in range(3, 5)), partition=1)
    pipeline = BeamTestPipeline(runner="DirectRunner")
    received = pipeline | ReadEvents(options(kafka_broker, topic))
    assert_that(received | beam.Map(lambda r: r.origin.name), equal_to([topic] * 5), label="topic")
    expected = [(payload(n), 0, n) for n in range(3)] + [(payload(n), 1, n - 3) for n in range(3, 5)]
    assert_that(received | beam.Map(_where), equal_to(expected), label="where")
    pipeline.run()


def test_start_offsets_are_honoured_per_partition(kafka_broker: KafkaBroker) -> None:
    topic = new_topic(kafka_broker, partitions=2)
    kafka_broker.produce(topic, (payload(n) for n in range(10)), partition=0)
    kafka_broker.produce(topic, (payload(n) for n in range(10, 20)), partition=1)
    pipeline = BeamTestPipeline(runner="DirectRunner")
    values = read(pipeline, options(kafka_broker, topic, kafka_partitions_offsets={0: 7}))
    assert_that(values, equal_to([payload(n) for n in [7, 8, 9, *range(10, 20)]]))
    pipeline.run()


def test_read_stops_at_the_end_offsets_seen_at_start_and_skips_tombstones(kafka_broker: KafkaBroker) -> None:
    topic = new_topic(kafka_broker, partitions=1)
    kafka_broker.produce(topic, [payload(0), None, payload(1)])
    pipeline = BeamTestPipeline(runner="DirectRunner")
    values = read(pipeline, options(kafka_broker, topic))
    assert_that(values, equal_to([payload(0), payload(1)]))
    result = pipeline.run()
    result.wait_until_finish()
    only_tombstones = beam.metrics.MetricsFilter().with_name("kafka_tombstones")
    tombstones = result.metrics().query(only_tombstones)["counters"]
    assert sum(c.committed for c in tombstones) == 1


def test_empty_topic_reads_nothing_and_ends(kafka_broker: KafkaBroker) -> None:
    topic = new_topic(kafka_broker, partitions=2)
    pipeline = BeamTestPipeline(runner="DirectRunner")
    assert_that(pipeline | ReadEvents(options(kafka_broker, topic)), equal_to([]))
    pipeline.run()


def test_missing_topic_fails_the_job(kafka_broker: KafkaBroker) -> None:
    pipeline = BeamTestPipeline(runner="DirectRunner")
    _ = pipeline | ReadEvents(options(kafka_broker, "no-such-topic-" + uuid.uuid4().hex[:6]))
    with pytest.raises(Exception, match="no-such-topic|unavailable|UNKNOWN_TOPIC"):
        pipeline.run()


@pytest.mark.parametrize("extra", [{"kafka_reader": "java"}, {"streaming": True}])
def test_start_offsets_are_refused_but_for_a_bounded_python_read(extra: dict) -> None:
    with pytest.raises(ValueError, match="bounded"):
        SourceOptions(
            source="kafka", bootstrap_servers="b:9092", kafka_topic="t", kafka_partitions_offsets={0: 1}, **extra
        )
