"""ReadEvents over Pub/Sub: a streaming DirectRunner pipeline against the real Pub/Sub emulator.

The streaming DirectRunner never finishes by itself and does not support wait_until_finish(duration),
so each test runs the pipeline, polls what it wrote to a file, then cancels it.
"""

from __future__ import annotations

import gc
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from closecrm.model import Received
from pipeline.sources import ReadEvents, SourceOptions
from tests.servers import PubSubEmulator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("pubsub_short_pulls")]

POLL_TIMEOUT_S = 60.0


class AppendToFile(beam.DoFn):
    """Appends each payload with its event timestamp and where it was read (the message id) as one JSON
    line: the test's observable sink."""

    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, received: Received, timestamp: float = beam.DoFn.TimestampParam) -> Iterator[None]:
        row = {
            "payload": received.payload.decode(),
            "timestamp": float(timestamp),
            "source": received.origin.to_json(),
        }
        with open(self._path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        return iter(())


def run_until(
    options: SourceOptions, sink: Path, expected: int, publish: Callable[[], object] | None = None
) -> list[dict[str, Any]]:
    """Start the streaming pipeline, optionally publish once it runs, poll the sink, then cancel."""
    sink.touch()
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True, runner="DirectRunner"))
    _ = pipeline | ReadEvents(options) | beam.ParDo(AppendToFile(str(sink)))
    threads_before = set(threading.enumerate())
    result = pipeline.run()
    try:
        if publish is not None:
            publish()
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while time.monotonic() < deadline:
            if len(sink.read_text().splitlines()) >= expected:
                time.sleep(1.0)  # let a duplicate, if any, arrive before we look
                return [json.loads(line) for line in sink.read_text().splitlines()]
            time.sleep(0.1)
        pytest.fail(f"read {len(sink.read_text().splitlines())} of {expected} messages in {POLL_TIMEOUT_S}s")
    finally:
        result.cancel()
        stop_runner_threads(threads_before)
        del pipeline, result
        gc.collect()  # runs Beam's finalizer that deletes a topic read's temporary subscription


def stop_runner_threads(threads_before: set[threading.Thread], timeout_s: float = 10.0) -> None:
    """cancel() only asks the runner's threads to stop; wait for them so they cannot leak into later tests."""
    deadline = time.monotonic() + timeout_s
    for thread in set(threading.enumerate()) - threads_before:
        if not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))


def payload(n: int) -> bytes:
    return json.dumps({"type": "identify", "messageId": f"p{n}", "userId": f"u{n}"}).encode()


def test_messages_of_a_subscription_are_read_once_each(
    pubsub_emulator: PubSubEmulator, tmp_path: Path
) -> None:
    name = f"events-{uuid.uuid4().hex[:8]}"
    pubsub_emulator.create_topic(name)
    subscription = pubsub_emulator.create_subscription(name, name)
    pubsub_emulator.publish(name, [payload(n) for n in range(25)])
    options = SourceOptions(source="pubsub", subscription=subscription)
    rows = run_until(options, tmp_path / "sink.jsonl", expected=25)
    assert sorted(r["payload"] for r in rows) == sorted(payload(n).decode() for n in range(25))
    # each payload names the message it came in: the id a dead letter gives to trace it
    ids = [r["source"]["pubsub_message_id"] for r in rows]
    assert len(set(ids)) == 25 and all(ids)


def test_timestamp_attribute_sets_the_event_time(pubsub_emulator: PubSubEmulator, tmp_path: Path) -> None:
    name = f"events-{uuid.uuid4().hex[:8]}"
    pubsub_emulator.create_topic(name)
    subscription = pubsub_emulator.create_subscription(name, name)
    pubsub_emulator.publish(name, [payload(1)], ts="2024-05-01T10:00:00Z")
    options = SourceOptions(source="pubsub", subscription=subscription, timestamp_attribute="ts")
    [row] = run_until(options, tmp_path / "sink.jsonl", expected=1)
    assert row["timestamp"] == 1714557600.0


def test_reading_a_topic_uses_a_subscription_made_for_the_run(
    pubsub_emulator: PubSubEmulator, tmp_path: Path
) -> None:
    name = f"events-{uuid.uuid4().hex[:8]}"
    topic = pubsub_emulator.create_topic(name)
    options = SourceOptions(source="pubsub", topic=topic)

    def publish_after_subscribing() -> None:
        time.sleep(
            2
        )  # the runner creates its subscription when the read starts; earlier messages are not in it
        pubsub_emulator.publish(name, [payload(n) for n in range(5)])

    rows = run_until(options, tmp_path / "sink.jsonl", expected=5, publish=publish_after_subscribing)
    assert sorted(r["payload"] for r in rows) == sorted(payload(n).decode() for n in range(5))


def test_pubsub_source_needs_exactly_one_of_subscription_or_topic() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SourceOptions(source="pubsub")
    with pytest.raises(ValueError, match="exactly one"):
        SourceOptions(source="pubsub", subscription="projects/p/subscriptions/s", topic="projects/p/topics/t")
