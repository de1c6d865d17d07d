"""Time from publish to Close for the streaming Kafka job on Prism.

Publishes N identify events of new people (one contact each) to a 3-partition topic at --rate events/s,
runs `close-sync run --source kafka --streaming --runner PrismRunner`'s graph against the Close
simulator (Close's own rates unless --no-limits), and watches the simulator: an event's latency is
the time from its publish to the first moment its contact exists in Close. Prints the median, p95 and
max, and the group's committed offsets at the end. Needs Java, the Kafka jars and Prism (`make engines`).

    .venv/bin/python bench/kafka_latency.py --events 1000 --rate 50
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from tempfile import mkdtemp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from closecrm.wiring import KeySource  # noqa: E402
from closesim import SimConfig, SimServer  # noqa: E402
from pipeline.config import parse_config  # noqa: E402
from pipeline.runjob import RunRequest, launch  # noqa: E402
from pipeline.sources import SourceOptions  # noqa: E402
from tests.reliability.rel_helpers import identify  # noqa: E402
from tests.servers import running_kafka  # noqa: E402

PARTITIONS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="events published per second")
    parser.add_argument("--companies", type=int, default=100)
    parser.add_argument("--tail", type=float, default=120.0, help="seconds to wait after the last publish")
    parser.add_argument("--no-limits", action="store_true", help="the simulator without Close's rate limits")
    args = parser.parse_args()

    work = Path(mkdtemp(prefix="kafka-latency-"))
    (work / "kafka").mkdir()
    with running_kafka(work / "kafka") as broker:
        sim = SimServer(SimConfig(api_keys=["bench_key"], limits_enabled=not args.no_limits))
        sim.start()
        try:
            report = measure(sim, broker, work, args)
        finally:
            sim.stop()
    print(json.dumps(report, indent=2))


def measure(sim: SimServer, broker, work: Path, args: argparse.Namespace) -> dict:  # noqa: ANN001
    from confluent_kafka import Consumer, Producer, TopicPartition

    company_cf = sim.create_custom_field("lead", "Company ID")
    user_cf = sim.create_custom_field("contact", "User ID")
    config = parse_config(
        {
            "settings": {
                "lead_custom_field_id_for_company_id": company_cf,
                "contact_custom_field_id_for_user_id": user_cf,
            },
            "pipeline": {"batch_size": 50, "flush_seconds": 0.5, "window": {"kind": "processing", "seconds": 1}},
        }
    )
    os.environ["CLOSE_API_KEY"] = sim.api_key
    topic = broker.create_topic(f"latency-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    group = f"close-sync-{topic}"
    events = [identify(50_000 + n, 5_000 + n % args.companies, 0) for n in range(args.events)]
    published: dict[str, float] = {}
    seen: dict[str, float] = {}

    def publish() -> None:
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
        start = time.monotonic()
        for n, event in enumerate(events):
            pause = start + n / args.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            producer.produce(topic, json.dumps(event).encode(), partition=n % PARTITIONS)
            producer.poll(0)
            published[event["userId"]] = time.monotonic()
        producer.flush(30)

    request = RunRequest(
        source=SourceOptions(
            source="kafka",
            bootstrap_servers=broker.bootstrap_servers,
            kafka_topic=topic,
            kafka_consumer_config={"group.id": group},
        ),
        close_url=sim.base_url,
        key_source=KeySource(),
        dead_letter_dir=str(work / "dead"),
        state_location=str(work / "state"),  # a new simulator each run: no ledger of another
        beam_args=("--runner=PrismRunner", "--streaming"),
        progress=False,
    )
    result = launch(config, request)
    publisher = threading.Thread(target=publish, daemon=True)
    started = time.monotonic()
    publisher.start()
    deadline = started + args.events / args.rate + args.tail
    try:
        while len(seen) < len(events) and time.monotonic() < deadline:
            now = time.monotonic()
            for contact in sim.contacts():
                user = contact.get(f"custom.{user_cf}")
                if user and user not in seen:
                    seen[user] = now
            time.sleep(0.05)
    finally:
        result.cancel()
        del result
        gc.collect()
    latencies = sorted(seen[u] - published[u] for u in seen if u in published)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": group})
    offsets = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    consumer.close()
    return {
        "events": len(events),
        "rate_per_s": args.rate,
        "applied": len(seen),
        "limits": not args.no_limits,
        "latency_s": {
            "median": round(statistics.median(latencies), 2) if latencies else None,
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 2) if latencies else None,
            "max": round(latencies[-1], 2) if latencies else None,
        },
        "committed_offsets": {tp.partition: tp.offset for tp in offsets},
        "never_applied": [n for n, e in enumerate(events) if e["userId"] not in seen][:20],
        "wall_s": round(time.monotonic() - started, 1),
    }


if __name__ == "__main__":
    main()
