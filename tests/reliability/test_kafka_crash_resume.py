"""A streaming Kafka job killed with SIGKILL halfway and started again with the same consumer group
resumes from the offsets it committed: nothing published is lost and nothing is created twice in Close.

The job runs as `close-sync run --source kafka --streaming` in a process group of its own, with Prism
its child; the kill is a SIGKILL of the whole group, so nothing flushes or finalizes on the way out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.pipeline.helpers import letters_in
from tests.pipeline.test_pipeline_streams import wait_for
from tests.pipeline.test_prism_runner import prism_binary  # noqa: F401 - the fixture
from tests.reliability.rel_helpers import applied_ids, duplicates, fresh, projection, w1_events
from tests.reliability.test_kafka_streaming import PARTITIONS, STREAM, publish, reference
from tests.servers import REPO_ROOT, KafkaBroker

pytestmark = pytest.mark.integration

GROUP = "close-sync"  # the group a run without consumer settings joins (each test has its own topic)
USERS = 30
CLOSE_SYNC = str(Path(sys.executable).with_name("close-sync"))


def start_job(sim, work: Path, run: str, broker: KafkaBroker, topic: str, runner: str) -> subprocess.Popen:  # noqa: ANN001
    """The job in a process group of its own (Prism, its child, in it too); stdout and stderr to a log."""
    log = (work / f"{run}.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CLOSE_API_KEY": sim.api_key}
    command = [
        CLOSE_SYNC, "run", "--config", str(work / "config.yaml"), "--source", "kafka",
        "--bootstrap-servers", broker.bootstrap_servers, "--kafka-topic", topic,
        "--close-url", sim.base_url, "--dead-letter", str(work / "dead"),
        "--audit-log", str(work / f"{run}" / "audit.jsonl"), "--quiet",
        f"--runner={runner}", "--streaming",
    ]  # fmt: skip
    (work / run).mkdir()
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(work), start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def committed(broker: KafkaBroker, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": GROUP})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in found}
    finally:
        consumer.close()


def by_partition(events: list[dict]) -> dict[int, list[str]]:
    """The messageIds at each partition's offsets 0, 1, … as `publish` sends them to a new topic."""
    out: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for event in events:
        out[int(event["userId"].split("_")[1]) % PARTITIONS].append(event["messageId"])
    return out


def writing(process: subprocess.Popen, run: Path) -> bool:
    """The job has applied a request (and is still running)."""
    assert process.poll() is None, (run.parent / f"{run.name}.log").read_text()[-3000:]
    return bool(applied_ids(run))


def committing(process: subprocess.Popen, log: Path, broker: KafkaBroker, topic: str) -> bool:
    """The job has committed offsets (and is still running)."""
    assert process.poll() is None, log.read_text()[-3000:]
    return sum(committed(broker, topic).values()) > 0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("runner", ["PrismRunner", "DirectRunner"])
def test_a_streaming_kafka_job_killed_halfway_resumes_without_loss_or_duplicates(
    runner, sim, kafka_broker, tmp_path, monkeypatch, prism_binary  # noqa: F811
):
    events = w1_events(users=USERS, companies=6, per_user=8)
    expected = reference(sim, events, tmp_path, monkeypatch)

    work = tmp_path / "stream"
    _, cf = fresh(sim, work, STREAM)
    topic = kafka_broker.create_topic(f"crash-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    message_ids = {e["messageId"] for e in events}
    rounds = [events[i : i + USERS] for i in range(0, len(events), USERS)]  # w1_events: round by round

    first = start_job(sim, work, "run1", kafka_broker, topic, runner)
    try:
        # events keep coming while the job runs; it is killed once it has committed something
        publish(kafka_broker, topic, rounds[0])
        assert wait_for(lambda: writing(first, work / "run1"), timeout_s=180), (work / "run1.log").read_text()[-3000:]
        published = 1
        while published < len(rounds):
            publish(kafka_broker, topic, rounds[published])
            published += 1
            if wait_for(lambda: committing(first, work / "run1.log", kafka_broker, topic), timeout_s=1):
                break
        assert published < len(rounds), "the job committed nothing while the events came"
    finally:
        kill_group(first)
    for batch in rounds[published:]:
        publish(kafka_broker, topic, batch)
    assert wait_for(lambda: not group_alive(first.pid), timeout_s=10), "Prism outlived the SIGKILL"
    applied_before = set(applied_ids(work / "run1"))
    offsets = committed(kafka_broker, topic)
    committed_before = sum(offsets.values())
    assert len(applied_before) < len(message_ids), "the job had applied every event before it was killed"
    # the group's offsets are past only records whose requests Close had taken when the job died
    for partition, ids in by_partition(events).items():
        lost = set(ids[: offsets[partition]]) - applied_before
        assert not lost, f"partition {partition}: committed at {offsets[partition]} before {sorted(lost)} were applied"

    started = time.monotonic()
    second = start_job(sim, work, "run2", kafka_broker, topic, runner)
    try:
        reached = wait_for(lambda: projection(sim, cf) == expected, timeout_s=180)
        took = time.monotonic() - started
        assert reached, (work / "run2.log").read_text()[-3000:]
        # every published event ended applied, in one run or the other
        assert wait_for(lambda: message_ids <= applied_before | set(applied_ids(work / "run2")), timeout_s=30)
    finally:
        kill_group(second)
    assert duplicates(sim, cf) == {"leads": [], "contacts": []}
    assert not letters_in(work / "dead")
    print(
        json.dumps(
            {
                "runner": runner,
                "events": len(events),
                "committed_before_kill": committed_before,
                "applied_before_kill": len(applied_before),
                "published_before_kill": sum(len(r) for r in rounds[:published]),
                # at most: what the first run may have read and the second read again
                "read_again_after_restart": sum(len(r) for r in rounds[:published]) - committed_before,
                "restart_to_reference_s": round(took, 1),
            }
        )
    )
