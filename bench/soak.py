"""Soak: a streaming run from the Pub/Sub emulator at a steady rate with the simulator's faults on.

Publishes W1-style identify events (people identifying again and again, some changing a title or
adding a phone) at --rate events/s for --minutes, samples this process's RSS and the backlog
(published − accounted for) every --every seconds, then reports memory growth, the largest backlog
(≈ lag × rate), duplicates and whether every published event was accounted for. Needs Java and the
Pub/Sub emulator (as the tests do). Not a test: run it by hand or with `make bench-soak`.

    .venv/bin/python bench/soak.py --minutes 30 --rate 50
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from tempfile import mkdtemp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from closecrm.sim import SimConfig, SimServer  # noqa: E402
from pipeline.config import parse_config  # noqa: E402
from pipeline.runjob import RunRequest, launch  # noqa: E402
from pipeline.sources import SourceOptions  # noqa: E402
from tests.servers import (  # noqa: E402
    PUBSUB_EMULATOR_BIN,
    PubSubEmulator,
    free_port,
    start_server,
    stop_process_group,
    wait_for_port,
)
from transforms.upsert import KeySource  # noqa: E402

FAULTS = {"fault_rate": 0.05, "ambiguous_rate": 0.02, "search_lag": 2.0, "latency_ms": 5.0, "jitter_ms": 20.0,
          "storm_rate": 0.001, "storm_seconds": 1.0}


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def event(rng: random.Random, n: int, users: int, companies: int) -> dict:
    user = rng.randrange(users)
    traits = {
        "name": f"User {user}",
        "email": f"user{user}@c{user % companies}.example.com",
        "company": {"id": f"comp_{user % companies}", "name": f"Company {user % companies}"},
    }
    roll = rng.random()
    if roll < 0.05:
        traits["title"] = rng.choice(["CTO", "CEO", "VP Sales"])
    elif roll < 0.10:
        traits["phone"] = f"+1 415 555 {rng.randrange(10_000):04d}"
    return {"type": "identify", "messageId": f"soak_{n}", "userId": f"u_{user}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "traits": traits}


def accounted(audit: Path, dead: Path) -> set[str]:
    ids: set[str] = set()
    for path in (audit, dead):
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    ids.update(json.loads(line).get("event_ids") or [])
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=50.0, help="events published per second")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--companies", type=int, default=300)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulator rate limits × this")
    parser.add_argument("--no-faults", action="store_true", help="run without the simulator's faults")
    parser.add_argument("--drain-minutes", type=float, default=10.0, help="longest wait, after publishing stops, for the backlog")
    args = parser.parse_args()

    work = Path(mkdtemp(prefix="close-sync-soak-"))
    port = free_port()
    emulator = start_server([PUBSUB_EMULATOR_BIN, "--host=127.0.0.1", f"--port={port}"], work / "emulator.log")
    wait_for_port("127.0.0.1", port, emulator, work / "emulator.log", 60)
    os.environ["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{port}"
    pubsub = PubSubEmulator(host=f"127.0.0.1:{port}", project="close-sync-soak")
    pubsub.create_topic("events")
    subscription = pubsub.create_subscription("events", "events")

    sim = SimServer(SimConfig(api_keys=["soak_key"], time_scale=args.time_scale, random_seed=5))
    sim.start()
    company_cf = sim.create_custom_field("lead", "Company ID")
    user_cf = sim.create_custom_field("contact", "User ID")
    if not args.no_faults:
        sim.configure(**FAULTS)
    config = parse_config({
        "settings": {"lead_custom_field_id_for_company_id": company_cf,
                     "contact_custom_field_id_for_user_id": user_cf},
        "pipeline": {"batch_size": 200, "flush_seconds": float(os.environ.get("SOAK_FLUSH", "5")), "window": {"kind": "processing", "seconds": 2}},
    })
    os.environ["CLOSE_API_KEY"] = "soak_key"
    audit, dead = work / "audit.jsonl", work / "dead" / "dead-letters.jsonl"
    result = launch(config, RunRequest(
        source=SourceOptions(source="pubsub", subscription=subscription), close_url=sim.base_url,
        key_source=KeySource(), dead_letter_dir=str(work / "dead"), audit_log=str(audit), progress=False,
    ))

    published = 0
    stop = threading.Event()

    def publish() -> None:
        nonlocal published
        from google.cloud import pubsub_v1

        client = pubsub_v1.PublisherClient()
        rng = random.Random(11)
        topic = pubsub.topic_path("events")
        start = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - start) * args.rate)
            while published < due:
                client.publish(topic, json.dumps(event(rng, published, args.users, args.companies)).encode())
                published += 1
            time.sleep(0.05)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    samples = []
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    while time.monotonic() < end:
        time.sleep(args.every)
        done = len(accounted(audit, dead))
        samples.append({"t": round(time.monotonic() - t0), "rss_mb": round(rss_mb(), 1),
                        "published": published, "accounted": done, "backlog": published - done})
        print(json.dumps(samples[-1]), flush=True)
    stop.set()
    publisher.join()
    drain_start = time.monotonic()
    drain_deadline = drain_start + args.drain_minutes * 60
    while len(accounted(audit, dead)) < published and time.monotonic() < drain_deadline:
        time.sleep(1)
    final = accounted(audit, dead)
    drained_in = time.monotonic() - drain_start
    result.cancel()
    gc.collect()

    leads = Counter(lead.get(f"custom.{company_cf}") for lead in sim.leads())
    contacts = Counter(c.get(f"custom.{user_cf}") for c in sim.contacts())
    dup_leads = sum(1 for k, v in leads.items() if k and v > 1)
    dup_contacts = sum(1 for k, v in contacts.items() if k and v > 1)
    stats = sim.stats()
    sim.stop()
    stop_process_group(emulator)

    warm = [s["rss_mb"] for s in samples[len(samples) // 4 :]] or [0.0]
    table = Table(title=f"soak {args.minutes} min at {args.rate}/s {'without' if args.no_faults else 'with'} faults")
    for key in ("t", "rss_mb", "published", "accounted", "backlog"):
        table.add_column(key, justify="right")
    for s in samples:
        table.add_row(*(str(s[k]) for k in ("t", "rss_mb", "published", "accounted", "backlog")))
    Console().print(table)
    summary = {
        "bench": "soak", "faults": not args.no_faults, "minutes": args.minutes, "rate": args.rate, "published": published,
        "accounted": len(final), "missing": published - len(final & {f"soak_{i}" for i in range(published)}),
        "rss_first_mb": samples[0]["rss_mb"] if samples else None, "rss_last_mb": samples[-1]["rss_mb"] if samples else None,
        "rss_growth_after_warmup_mb": round(warm[-1] - warm[0], 1), "max_backlog": max(s["backlog"] for s in samples),
        "max_lag_s_est": round(max(s["backlog"] for s in samples) / args.rate, 1),
        "drain_s": round(drained_in, 1),
        "duplicate_leads": dup_leads, "duplicate_contacts": dup_contacts,
        "sim_5xx": stats.get("faults_injected"), "sim_ambiguous": stats.get("ambiguous_injected"),
        "sim_429": stats.get("responses_429"), "dead_letter_file": str(dead),
    }
    print(json.dumps(summary))
    os._exit(0)  # the streaming DirectRunner leaves non-daemon threads behind after cancel


if __name__ == "__main__":
    main()
