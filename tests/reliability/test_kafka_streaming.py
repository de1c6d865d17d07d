"""The streaming Kafka job: Segment-style events through Apache Kafka (3 partitions) into the job under
--streaming, on Prism and on the DirectRunner, polled until Close equals the one-at-a-time reference and
the consumer group's offsets reach the end of every partition (committed once each record settled)."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from closecrm.wiring import KeySource
from pipeline.runjob import RunRequest, launch
from pipeline.sources import SourceOptions
from tests.pipeline.helpers import letters_in, write_jsonl
from tests.pipeline.test_pipeline_streams import wait_for
from tests.pipeline.test_prism_runner import prism_binary  # noqa: F401 - the fixture, for getfixturevalue
from tests.reliability.rel_helpers import duplicates, fresh, projection, run_job, w1_events
from tests.servers import REPO_ROOT, KafkaBroker
from tests.sources.test_pubsub_source import stop_runner_threads

pytestmark = pytest.mark.integration

STREAM = {
    "pipeline": {"batch_size": 20, "flush_seconds": 0.5, "window": {"kind": "processing", "seconds": 1}}
}
PARTITIONS = 3


def publish(broker: KafkaBroker, topic: str, events: list[dict]) -> None:
    """Each user's events to one partition (Kafka orders a partition, not a topic), in event order."""
    by_partition: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for event in events:
        by_partition[int(event["userId"].split("_")[1]) % PARTITIONS].append(json.dumps(event).encode())
    for partition, values in by_partition.items():
        broker.produce(topic, values, partition=partition)


def reference(sim, events: list[dict], tmp_path: Path, monkeypatch) -> dict:  # noqa: ANN001
    """Close's state after the same events through the batch job from a file (one at a time, in effect)."""
    ref_dir = tmp_path / "reference"
    config, cf = fresh(sim, ref_dir)
    run_job(sim, config, SourceOptions(source="files", input=str(write_jsonl(ref_dir / "e.jsonl", events))), ref_dir, monkeypatch)
    return projection(sim, cf)


def streaming_kafka_run(sim, config, broker: KafkaBroker, topic: str, work: Path, beam_args: list[str], until) -> None:  # noqa: ANN001
    request = RunRequest(
        source=SourceOptions(
            source="kafka",
            bootstrap_servers=broker.bootstrap_servers,
            kafka_topic=topic,
            kafka_consumer_config={"group.id": f"close-sync-{topic}"},
        ),
        close_url=sim.base_url,
        key_source=KeySource(),
        dead_letter_dir=str(work / "dead"),
        audit_log=str(work / "audit.jsonl"),
        beam_args=(*beam_args, "--streaming"),
        progress=False,
    )
    threads_before = set(threading.enumerate())
    result = launch(config, request)
    try:
        assert until(), "Close did not reach the reference state"
    finally:
        result.cancel()
        stop_runner_threads(threads_before)
        del result
        gc.collect()


def committed(broker: KafkaBroker, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": f"close-sync-{topic}"})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


@pytest.fixture
def worker_pool(tmp_path) -> Iterator[str]:
    """Beam's SDK worker pool in a process of its own, as Flink on Kubernetes runs Python beside the task
    managers: the job's code reaches it pickled, and shares nothing with the test's process."""
    port = free_port()
    log = (tmp_path / "worker-pool.log").open("w")
    # The pool starts each SDK worker as `python` from PATH: the venv's, with this checkout importable.
    venv_bin = os.path.dirname(sys.executable)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "worker-pool.log").read_text()
            time.sleep(0.1)
        yield f"localhost:{port}"
    finally:
        process.kill()
        process.wait()
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


RUNNERS = {
    "prism": ["--runner=PrismRunner"],
    "direct": ["--runner=DirectRunner"],
    "prism-worker-pool": ["--runner=PrismRunner", "--environment_type=EXTERNAL"],
}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_a_streaming_kafka_job_reaches_the_reference_state(runner, sim, kafka_broker, tmp_path, monkeypatch, request):
    request.getfixturevalue("prism_binary")  # the DirectRunner hands a streaming Kafka run to Prism
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)  # the workers' environment holds the key, as on a cluster
    beam_args = list(RUNNERS[runner])
    if runner == "prism-worker-pool":
        beam_args.append(f"--environment_config={request.getfixturevalue('worker_pool')}")
    events = w1_events(users=30, companies=6, per_user=6)
    expected = reference(sim, events, tmp_path, monkeypatch)

    work = tmp_path / "stream"
    config, cf = fresh(sim, work, STREAM)
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    topic = kafka_broker.create_topic(f"stream-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    publish(kafka_broker, topic, events)

    streaming_kafka_run(
        sim, config, kafka_broker, topic, work, beam_args,
        lambda: wait_for(lambda: projection(sim, cf) == expected, timeout_s=180)
        # every record settled: the job committed each partition's offset up to its end
        and wait_for(lambda: sum(committed(kafka_broker, topic).values()) == len(events), timeout_s=60),
    )  # fmt: skip
    assert duplicates(sim, cf) == {"leads": [], "contacts": []}
    assert not letters_in(work / "dead")
