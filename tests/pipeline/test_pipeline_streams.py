"""End to end from real brokers: Pub/Sub (streaming, emulator) and Kafka (bounded, Apache Kafka), into the simulator."""

from __future__ import annotations

import gc
import json
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest

from closecrm.wiring import KeySource
from pipeline.runjob import RunRequest, launch, run
from pipeline.sources import SourceOptions
from tests.pipeline.helpers import letter_files, letters_in, read_lines, sim_config
from tests.pipeline.test_pipeline_files import events_200, identify
from tests.sources.test_pubsub_source import stop_runner_threads

pytestmark = pytest.mark.integration

STREAM_CONFIG = {"pipeline": {"batch_size": 50, "flush_seconds": 0.5, "window": {"kind": "processing", "seconds": 1}}}


def wait_for(predicate, timeout_s: float = 90.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


def run_pubsub(sim, pubsub_emulator, tmp_path, monkeypatch, config, payloads: list[bytes], until) -> RunRequest:  # noqa: ANN001
    """Publish ``payloads`` to a new topic, run the streaming job on it until ``until()`` holds (and 2 s
    more, for anything late), then stop it and the runner's threads. Returns the run's request."""
    name = f"events-{uuid.uuid4().hex[:8]}"
    pubsub_emulator.create_topic(name)
    subscription = pubsub_emulator.create_subscription(name, name)
    pubsub_emulator.publish(name, payloads)
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    request = RunRequest(
        source=SourceOptions(source="pubsub", subscription=subscription),
        close_url=sim.base_url,
        key_source=KeySource(),
        dead_letter_dir=str(tmp_path / "dead"),
        audit_log=str(tmp_path / "audit.jsonl"),
    )
    threads_before = set(threading.enumerate())
    result = launch(config, request)
    try:
        assert wait_for(until)
        time.sleep(2.0)  # anything late would show up now
    finally:
        result.cancel()
        stop_runner_threads(threads_before)
        del result
        gc.collect()
    return request


@pytest.mark.usefixtures("pubsub_short_pulls")
def test_pubsub_streaming_job_syncs_events_and_collapses_per_window(
    sim, pubsub_emulator, tmp_path, monkeypatch
):
    config, cf = sim_config(sim, tmp_path, STREAM_CONFIG)
    events = events_200()
    bad = [b"{not json", json.dumps({"type": "identify", "messageId": "nobody"}).encode()]
    request = run_pubsub(
        sim,
        pubsub_emulator,
        tmp_path,
        monkeypatch,
        config,
        [json.dumps(e).encode() for e in events] + bad,
        lambda: len(sim.contacts()) >= 20 and len(letters_in(tmp_path / "dead")) >= 2,
    )
    assert sorted(lead[f"custom.{cf['company']}"] for lead in sim.leads()) == ["comp_0", "comp_1", "comp_2"]
    assert len(sim.contacts()) == 20
    (letters_file,) = letter_files(tmp_path / "dead")  # appended to one file, named by the run id
    assert letters_file.name == f"dead-letters-{request.run_id}.jsonl"
    letters = read_lines(letters_file)
    reasons = Counter(letter["reason"] for letter in letters)
    assert reasons == Counter({"unparseable_json": 1, "missing_id": 1})
    # each letter names the Pub/Sub message it came in, and the event by its messageId when it has one
    assert all(letter["source"]["pubsub_message_id"] for letter in letters)
    assert {tuple(letter["event_ids"]) for letter in letters if letter["reason"] == "missing_id"} == {("nobody",)}
    applied = {e for line in read_lines(tmp_path / "audit.jsonl") for e in line["event_ids"]}
    assert applied == {e["messageId"] for e in events}


def test_kafka_job_reads_to_the_end_offsets_and_syncs(sim, kafka_broker, tmp_path, monkeypatch):
    config, cf = sim_config(sim, tmp_path)
    topic = kafka_broker.create_topic(f"events-{uuid.uuid4().hex[:8]}", partitions=3)
    events = events_200()
    redelivered = events[:10]  # at-least-once producers resend; messageId dedupe drops them
    kafka_broker.produce(topic, [json.dumps(e).encode() for e in events + redelivered])
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    request = RunRequest(
        source=SourceOptions(source="kafka", bootstrap_servers=kafka_broker.bootstrap_servers, kafka_topic=topic),
        close_url=sim.base_url,
        key_source=KeySource(),
        dead_letter_dir=str(tmp_path / "dead"),
        audit_log=str(tmp_path / "audit.jsonl"),
    )
    assert run(config, request, show_summary=False) == 0
    assert len(sim.leads()) == 3
    assert len(sim.contacts()) == 20
    applied = [e for line in read_lines(tmp_path / "audit.jsonl") for e in line["event_ids"]]
    assert sorted(applied) == sorted(e["messageId"] for e in events)


def test_a_second_identical_run_costs_no_writes(sim, tmp_path, monkeypatch):
    """Re-sending what Close already holds: the engine sees nothing differs and writes nothing."""
    from tests.pipeline.helpers import run_files, write_jsonl

    config, cf = sim_config(sim, tmp_path)
    at = datetime(2026, 11, 1, tzinfo=UTC)
    path = write_jsonl(tmp_path / "events.jsonl", [identify(u, u % 2, 0, at) for u in range(10)])
    assert run_files(sim, config, str(path), tmp_path, monkeypatch) == 0
    writes_before = sim.stats()["by_group"].get("lead_write", 0) + sim.stats()["by_group"].get("contact_write", 0)
    assert run_files(sim, config, str(path), tmp_path, monkeypatch, audit_log=str(tmp_path / "audit2.jsonl")) == 0
    writes_after = sim.stats()["by_group"].get("lead_write", 0) + sim.stats()["by_group"].get("contact_write", 0)
    assert writes_after == writes_before
    assert {line["outcome"] for line in read_lines(tmp_path / "audit2.jsonl")} == {"unchanged"}
