"""Crash and restart: a streaming Pub/Sub run is cancelled mid-way and started again on the same subscription.

The DirectRunner acks a message when it pulls it (docs/DESIGN.md#delivery-guarantees), so messages in
flight when the run is killed may be lost. This test counts them and reports the number (it is printed and
carried in the assertion messages), and shows nothing is duplicated and everything published after the
restart is applied.
"""

from __future__ import annotations

import gc
import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from closecrm.wiring import KeySource
from pipeline.runjob import RunRequest, launch
from pipeline.sources import SourceOptions
from tests.pipeline.helpers import letters_in, read_lines, write_jsonl
from tests.reliability.rel_helpers import duplicates, fresh, projection, run_job, w1_events
from tests.sources.test_pubsub_source import stop_runner_threads

pytestmark = pytest.mark.integration

STREAM = {
    "pipeline": {"batch_size": 20, "flush_seconds": 0.5, "window": {"kind": "processing", "seconds": 1}}
}


def wait_for(predicate, timeout_s: float = 60.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def audit_ids(path: Path) -> set[str]:
    return {
        e
        for line in read_lines(path)
        if "intent" not in line and not str(line.get("outcome")).startswith("failed")
        for e in line["event_ids"]
    }


def streaming_run(sim, config, subscription: str, work: Path, audit: Path, until) -> None:  # noqa: ANN001
    request = RunRequest(
        source=SourceOptions(source="pubsub", subscription=subscription),
        close_url=sim.base_url,
        key_source=KeySource(),
        dead_letter_dir=str(work / "dead"),
        audit_log=str(audit),
        progress=False,
    )
    threads_before = set(threading.enumerate())
    result = launch(config, request)
    try:
        until()
    finally:
        result.cancel()
        stop_runner_threads(threads_before)
        del result
        gc.collect()


@pytest.mark.usefixtures("pubsub_short_pulls")
def test_a_killed_streaming_run_restarted_on_the_same_subscription_reaches_the_reference_state(
    sim, pubsub_emulator, tmp_path, monkeypatch, capsys
):
    events = w1_events(
        users=40, companies=8, per_user=10
    )  # every final trait also appears in the second half
    half = len(events) // 2
    first, second = events[:half], events[half:]

    ref_dir = tmp_path / "reference"
    ref_config, ref_cf = fresh(sim, ref_dir)
    run_job(
        sim,
        ref_config,
        SourceOptions(source="files", input=str(write_jsonl(ref_dir / "e.jsonl", events))),
        ref_dir,
        monkeypatch,
    )
    expected = projection(sim, ref_cf)

    work = tmp_path / "stream"
    config, cf = fresh(sim, work, STREAM)
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    name = f"restart-{uuid.uuid4().hex[:8]}"
    pubsub_emulator.create_topic(name)
    subscription = pubsub_emulator.create_subscription(name, name)
    pubsub_emulator.publish(name, [json.dumps(e).encode() for e in first])

    audit1, audit2 = work / "audit1.jsonl", work / "audit2.jsonl"
    # run 1: killed as soon as some contacts exist and the first outcomes are audited, with work in flight
    streaming_run(
        sim,
        config,
        subscription,
        work,
        audit1,
        lambda: wait_for(lambda: len(sim.contacts()) >= 5 and bool(audit_ids(audit1))),
    )
    applied1 = audit_ids(audit1)
    contacts_at_kill = len(sim.contacts())

    pubsub_emulator.publish(name, [json.dumps(e).encode() for e in second])
    second_ids = {e["messageId"] for e in second}

    def second_done() -> None:
        wait_for(lambda: second_ids <= audit_ids(audit2), timeout_s=60)
        time.sleep(2.0)  # redeliveries still in flight would land now

    streaming_run(sim, config, subscription, work, audit2, second_done)
    applied2 = audit_ids(audit2)

    first_ids = {e["messageId"] for e in first}
    lost = sorted(first_ids - applied1 - applied2)
    redelivered = sorted(first_ids & applied2 - applied1)
    reapplied = sorted(applied1 & applied2)
    report = (
        f"first half {len(first)}: applied before the kill {len(first_ids & applied1)} "
        f"(contacts at kill {contacts_at_kill}), redelivered after restart {len(redelivered)}, "
        f"re-applied twice {len(reapplied)}, LOST in flight (DirectRunner ack-at-pull: acked, never "
        f"audited as applied nor redelivered; their writes may still have reached Close) {len(lost)}"
    )
    with capsys.disabled():
        print(f"\n[restart] {report}")

    assert second_ids <= applied2, f"events published after the restart were not applied; {report}"
    assert duplicates(sim, cf) == {"leads": [], "contacts": []}, report
    assert projection(sim, cf) == expected, report
    assert not letters_in(work / "dead"), report
