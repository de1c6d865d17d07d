"""A Kafka message's timestamp stamps its payload only when Beam can hold it (no broker needed)."""

from __future__ import annotations

from typing import Any

import pytest
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.windowed_value import WindowedValue

from closecrm.model import Origin, Received
from pipeline.kafka_read import LATEST_KAFKA_MILLIS, KafkaPartitionRange, ReadKafkaPartition

CREATE_TIME = 1
NOW_MS = 1_767_225_600_000  # 2026-01-01


class Message:
    def __init__(self, millis: int, kind: int = CREATE_TIME) -> None:
        self._timestamp = (kind, millis)

    def value(self) -> bytes:
        return b'{"type":"identify","userId":"u1"}'

    def offset(self) -> int:
        return 41

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp


SPAN = KafkaPartitionRange("events", 2, 0, 100)
RECEIVED = Received(Message(0).value(), Origin("kafka", "events", 41, 2))  # the value and where it was


def payload(message: Message) -> Any:
    (out,) = ReadKafkaPartition({})._payload(message, SPAN)
    return out


def as_runner_stamps_it(out: Any) -> WindowedValue:
    """What Beam's output handler builds from a DoFn's output (it raises for a time Beam cannot hold)."""
    if isinstance(out, TimestampedValue):
        return WindowedValue(out.value, out.timestamp, (GlobalWindow(),))
    return WindowedValue(out, GlobalWindow().max_timestamp(), (GlobalWindow(),))


def test_a_message_of_an_ordinary_time_is_stamped_with_it() -> None:
    out = payload(Message(NOW_MS))
    assert isinstance(out, TimestampedValue) and out.timestamp.micros == NOW_MS * 1000
    assert out.value == RECEIVED
    assert isinstance(payload(Message(LATEST_KAFKA_MILLIS)), TimestampedValue)


@pytest.mark.parametrize(
    "millis",
    [
        NOW_MS * 1_000_000,  # nanoseconds given as milliseconds
        2**63 - 1,
        LATEST_KAFKA_MILLIS + 1,
    ],
)
def test_a_message_stamped_beyond_beams_last_timestamp_keeps_the_time_of_its_read(millis: int) -> None:
    out = payload(Message(millis))
    assert out == RECEIVED
    as_runner_stamps_it(out)


@pytest.mark.parametrize(("millis", "kind"), [(-1, CREATE_TIME), (NOW_MS, 0)])
def test_a_message_without_a_usable_timestamp_is_not_stamped(millis: int, kind: int) -> None:
    assert payload(Message(millis, kind)) == RECEIVED
