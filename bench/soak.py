"""Soak: a streaming run from the Pub/Sub emulator at a steady rate with the simulator's faults on.

Publishes W1-style identify events (people identifying again and again, some changing a title or
adding a phone) at --rate events/s for --minutes, samples this process's RSS and the backlog
(published − accounted for) every --every seconds, then reports memory growth, the largest backlog
(≈ lag × rate), duplicates and whether every published event was accounted for. Needs Java and the
Pub/Sub emulator (as the tests do). Not a test: run it by hand or with `make bench-soak`.

    .venv/bin/python bench/soak.py --minutes 30 --rate 50

The Close simulator runs in its own process (``bench/remote_sim.py``; ``--no-sim-process``: in this
one, as before 2026-11-23), so this
process's RSS is the job's (plus the publisher thread and a bitmap of accounted ids) and the
simulator's own growth (it keeps every lead and contact written) is reported apart as ``sim_rss_mb``.
``--tracemalloc`` traces this process's allocations and prints, for snapshots at ``--snapshot-at``
minutes and at the end, the sites that grew since the first one, grouped by owner (bench, simulator,
product, Beam, other) and by traceback.
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
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path
from tempfile import mkdtemp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from closecrm.wiring import KeySource  # noqa: E402
from closesim import SimConfig, SimServer  # noqa: E402
from pipeline.config import parse_config  # noqa: E402
from pipeline.runjob import RunRequest, dead_letter_file, launch  # noqa: E402
from pipeline.sources import SourceOptions  # noqa: E402
from tests.servers import (  # noqa: E402
    PUBSUB_EMULATOR_BIN,
    PubSubEmulator,
    free_port,
    start_server,
    stop_process_group,
    wait_for_port,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from remote_sim import RemoteSim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FAULTS = {"fault_rate": 0.05, "ambiguous_rate": 0.02, "search_lag": 2.0, "latency_ms": 5.0, "jitter_ms": 20.0,
          "storm_rate": 0.001, "storm_seconds": 1.0}


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as fh:
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


class Accounted:
    """The published ids seen in the audit log and the dead letters, read incrementally.

    One byte per published event (``soak_N`` → byte N), so the harness's own memory in this process
    stays ~1 byte per event instead of a set of strings re-read every sample; any other id is kept aside.
    """

    def __init__(self, *paths: Path) -> None:
        self._offsets = dict.fromkeys(paths, 0)
        self._seen = bytearray()
        self.count = 0
        self.others: set[str] = set()

    def refresh(self) -> int:
        for path, offset in self._offsets.items():
            if not path.exists():
                continue
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
            self._offsets[path] = offset + end
            for line in chunk[:end].splitlines():
                if line.strip():
                    for event_id in json.loads(line).get("event_ids") or []:
                        self._add(event_id)
        return self.count

    def _add(self, event_id: str) -> None:
        prefix, _, n = event_id.partition("_")
        if prefix != "soak" or not n.isdigit():
            self.others.add(event_id)
            return
        i = int(n)
        if i >= len(self._seen):
            self._seen.extend(bytes(max(i + 1 - len(self._seen), 4096)))
        if not self._seen[i]:
            self._seen[i] = 1
            self.count += 1

    def missing(self, published: int) -> int:
        return published - sum(self._seen[:published])


OWNERS = (("bench", ("bench/", "tests/")), ("simulator", ("closesim/",)),
          ("product", ("closecrm/", "transforms/", "pipeline/")))  # fmt: skip


def _where(path: str) -> str | None:
    """bench, simulator, product or beam for a frame's file; None for the standard library and other packages."""
    if "apache_beam/" in path:
        return "beam"
    if "/.venv/" in path or not path.startswith(str(ROOT)):
        return None
    rel = path[len(str(ROOT)) + 1 :]
    return next((name for name, prefixes in OWNERS if rel.startswith(prefixes)), None)


def owner(traceback: tracemalloc.Traceback) -> str:
    """Whose allocation this is: the innermost frame in this repo or in Beam decides; Beam's own
    allocations made for a DoFn of ours (its keyed state, its coders) read ``beam<-product``.
    With neither in the traceback: ``other:`` and the innermost frame's package or module."""
    frames = list(traceback)[::-1]  # a Traceback lists the oldest frame first
    wheres = [w for w in (_where(f.filename) for f in frames) if w]
    if wheres:
        inner = wheres[0]
        outer_repo = next((w for w in wheres if w != "beam"), None)
        return f"beam<-{outer_repo}" if inner == "beam" and outer_repo else inner
    top = frames[0].filename
    return "other:" + (top.split("site-packages/")[-1].split("/")[0] if "site-packages/" in top else Path(top).name)


def _deep_size(value: object, depth: int = 4) -> int:
    size = sys.getsizeof(value)
    if depth and isinstance(value, dict):
        size += sum(_deep_size(k, depth - 1) + _deep_size(v, depth - 1) for k, v in value.items())
    elif depth and isinstance(value, (list, tuple, set, frozenset)):
        size += sum(_deep_size(v, depth - 1) for v in value)
    return size


def runner_state(result: object) -> dict[str, dict[str, int]]:
    """The local DirectRunner's keyed state per step: keys, windows, state entries (list items), timers and
    approximate bytes; {} on another runner. Read without the runner's lock: a sample, not a snapshot."""
    context = getattr(result, "_evaluation_context", None)
    tables = getattr(context, "_transform_keyed_states", None) or {}
    out: dict[str, dict[str, int]] = {}
    for transform, keyed in list(tables.items()):
        if not keyed:
            continue
        row = {"keys": 0, "windows": 0, "entries": 0, "timers": 0, "kb": 0}
        size = 0
        for key, state in list(keyed.items()):
            row["keys"] += 1
            size += sys.getsizeof(key)
            for tags in list(getattr(state, "state", {}).values()):
                row["windows"] += 1
                for values in list(tags.values()):
                    row["entries"] += len(values) if isinstance(values, list) else 1
                    size += _deep_size(values)
            row["timers"] += sum(len(t) for t in list(getattr(state, "timers", {}).values()))
        row["kb"] = size // 1024
        out[str(getattr(transform, "full_label", transform))] = row
    return out


def census() -> Counter[str]:
    """Objects the cyclic GC tracks (containers, instances), by type: cheap enough for a few samples."""
    gc.collect()
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def census_diff(before: Counter[str], after: Counter[str], top: int = 15) -> dict[str, int]:
    grown = {k: after[k] - before.get(k, 0) for k in after}
    return dict(sorted(((k, v) for k, v in grown.items() if v > 0), key=lambda kv: -kv[1])[:top])


def short(path: str) -> str:
    return path.split("site-packages/")[-1] if "site-packages/" in path else path.replace(str(ROOT) + "/", "")


class Tracer:
    """tracemalloc snapshots at chosen minutes; each later one is diffed against the first."""

    FILTERS = (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"))

    def __init__(self, frames: int, from_minute: float, at_minutes: list[float]) -> None:
        self.frames, self.from_minute = frames, from_minute
        self.pending = sorted(at_minutes)
        self.first: tracemalloc.Snapshot | None = None
        self.first_t = 0.0

    def due(self, minutes: float) -> bool:
        if not tracemalloc.is_tracing() and minutes >= self.from_minute:
            tracemalloc.start(self.frames)
            print(json.dumps({"tracemalloc": "started", "minute": round(minutes, 1)}), flush=True)
        if self.pending and minutes >= self.pending[0]:
            self.pending.pop(0)
            return True
        return False

    def snapshot(self, minutes: float, label: str = "") -> None:
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces(self.FILTERS)
        traced = tracemalloc.get_traced_memory()[0] / 2**20
        if self.first is None:
            self.first, self.first_t = snap, minutes
            print(json.dumps({"tracemalloc": "base", "minute": round(minutes, 1), "traced_mb": round(traced, 1),
                              "rss_mb": round(rss_mb(), 1)}), flush=True)
            return
        self.report(snap, minutes, traced, label)

    def report(self, snap: tracemalloc.Snapshot, minutes: float, traced: float, label: str) -> None:
        diffs = snap.compare_to(self.first, "traceback")
        by_owner: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for d in diffs:
            by_owner[owner(d.traceback)][0] += d.size_diff
            by_owner[owner(d.traceback)][1] += d.count_diff
        span = minutes - self.first_t
        print(json.dumps({"tracemalloc": label or "diff", "minutes": f"{self.first_t:.1f}->{minutes:.1f}",
                          "traced_mb": round(traced, 1), "rss_mb": round(rss_mb(), 1),
                          "growth_kb_by_owner": {k: round(v[0] / 1024, 1) for k, v in sorted(by_owner.items(), key=lambda kv: -kv[1][0])},
                          "blocks_by_owner": {k: v[1] for k, v in sorted(by_owner.items(), key=lambda kv: -kv[1][0])}}), flush=True)  # fmt: skip
        print(f"-- top growing lines since minute {self.first_t:.1f} ({span:.1f} min):", flush=True)
        for d in snap.compare_to(self.first, "lineno")[:25]:
            if d.size_diff <= 0:
                break
            f = d.traceback[0]
            print(f"  {d.size_diff / 1024:+9.1f} KiB {d.count_diff:+8d} blocks  {short(f.filename)}:{f.lineno}", flush=True)
        print("-- top growing tracebacks:", flush=True)
        for d in diffs[:12]:
            if d.size_diff <= 0:
                break
            print(f"  {d.size_diff / 1024:+9.1f} KiB {d.count_diff:+8d} blocks  [{owner(d.traceback)}]", flush=True)
            for f in d.traceback:
                print(f"        {short(f.filename)}:{f.lineno}", flush=True)


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
    parser.add_argument("--sim-process", action=argparse.BooleanOptionalAction, default=True,
                        help="the simulator in its own process (bench/remote_sim.py), so rss_mb is the job's")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="trace allocations with this many frames (0: off) and print what grew")
    parser.add_argument("--census", action="store_true",
                        help="at --snapshot-at and at the end: the types whose GC-tracked object count grew")
    parser.add_argument("--runner-state", action="store_true", help="print the local runner's keyed state per step at each sample")
    parser.add_argument("--trace-from", type=float, default=0.0, help="minute at which tracemalloc starts (its overhead slows the job)")
    parser.add_argument("--snapshot-at", default="3", help="minutes (comma-separated) of tracemalloc snapshots; the first is the base")
    args = parser.parse_args()
    tracer = Tracer(args.tracemalloc, args.trace_from, [float(m) for m in args.snapshot_at.split(",")]) if args.tracemalloc else None
    if tracer:
        tracer.due(0.0)

    work = Path(mkdtemp(prefix="close-sync-soak-"))
    port = free_port()
    emulator = start_server([PUBSUB_EMULATOR_BIN, "--host=127.0.0.1", f"--port={port}"], work / "emulator.log")
    wait_for_port("127.0.0.1", port, emulator, work / "emulator.log", 60)
    os.environ["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{port}"
    pubsub = PubSubEmulator(host=f"127.0.0.1:{port}", project="close-sync-soak")
    pubsub.create_topic("events")
    subscription = pubsub.create_subscription("events", "events")

    sim: SimServer | RemoteSim
    if args.sim_process:
        sim = RemoteSim(args.time_scale, "soak_key")
        sim.configure(random_seed=5)
    else:
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
    audit = work / "audit.jsonl"
    request = RunRequest(
        source=SourceOptions(source="pubsub", subscription=subscription), close_url=sim.base_url,
        key_source=KeySource(), dead_letter_dir=str(work / "dead"), audit_log=str(audit), progress=False,
        state_location=str(work / "state"),  # a new simulator each run: no ledger of another
    )
    dead = Path(dead_letter_file(request))  # one file per run, named by its run id
    result = launch(config, request)
    accounted = Accounted(audit, dead)
    census_at = sorted(float(m) for m in args.snapshot_at.split(",")) if args.census else []
    census_base: tuple[float, Counter[str]] | None = None

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
        done = accounted.refresh()
        sample = {"t": round(time.monotonic() - t0), "rss_mb": round(rss_mb(), 1)}
        if args.sim_process:
            sample["sim_rss_mb"] = round(rss_mb(sim.pid), 1)
        # Python's heap (allocated blocks), threads and open files: growth in RSS that these do not
        # show is below Python (C libraries, the allocator's fragmentation).
        sample.update(py_blocks_k=round(sys.getallocatedblocks() / 1000, 1), threads=threading.active_count(),
                      fds=len(os.listdir("/proc/self/fd")))
        sample.update(published=published, accounted=done, backlog=published - done)
        samples.append(sample)
        print(json.dumps(sample), flush=True)
        if args.runner_state:
            print(json.dumps({"t": sample["t"], "runner_state": runner_state(result)}), flush=True)
        minute = (time.monotonic() - t0) / 60
        if tracer and tracer.due(minute):
            tracer.snapshot(minute)
        if census_at and minute >= census_at[0]:
            census_at.pop(0)
            census_base = census_base or (minute, census())
    stop.set()
    publisher.join()
    if tracer:  # the end of the steady state, before the drain and the cancel
        tracer.snapshot((time.monotonic() - t0) / 60, "end")
    if census_base:
        grown = census_diff(census_base[1], census())
        print(json.dumps({"census_growth": f"{census_base[0]:.1f}->{(time.monotonic() - t0) / 60:.1f} min",
                          "objects": grown}), flush=True)
    drain_start = time.monotonic()
    drain_deadline = drain_start + args.drain_minutes * 60
    while accounted.refresh() < published and time.monotonic() < drain_deadline:
        time.sleep(1)
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

    columns = ["t", "rss_mb", *(["sim_rss_mb"] if args.sim_process else []), "py_blocks_k", "threads", "fds",
               "published", "accounted", "backlog"]
    warm = samples[len(samples) // 4 :] or [{k: 0.0 for k in columns}]
    table = Table(title=f"soak {args.minutes} min at {args.rate}/s {'without' if args.no_faults else 'with'} faults")
    for key in columns:
        table.add_column(key, justify="right")
    for s in samples:
        table.add_row(*(str(s[k]) for k in columns))
    Console().print(table)
    warm_minutes = max((warm[-1]["t"] - warm[0]["t"]) / 60, 1e-9)
    growth = round(warm[-1]["rss_mb"] - warm[0]["rss_mb"], 1)
    summary = {
        "bench": "soak", "faults": not args.no_faults, "minutes": args.minutes, "rate": args.rate,
        "simulator": "own process" if args.sim_process else "in-process", "published": published,
        "accounted": accounted.count, "missing": accounted.missing(published), "other_ids": len(accounted.others),
        "rss_first_mb": samples[0]["rss_mb"] if samples else None, "rss_last_mb": samples[-1]["rss_mb"] if samples else None,
        "rss_growth_after_warmup_mb": growth, "rss_growth_mb_per_min": round(growth / warm_minutes, 3),
        "py_blocks_growth_after_warmup_k": round(warm[-1]["py_blocks_k"] - warm[0]["py_blocks_k"], 1),
        **({"sim_rss_first_mb": samples[0]["sim_rss_mb"], "sim_rss_last_mb": samples[-1]["sim_rss_mb"]}
           if args.sim_process and samples else {}),
        "max_backlog": max(s["backlog"] for s in samples),
        "max_lag_s_est": round(max(s["backlog"] for s in samples) / args.rate, 1),
        "drain_s": round(drained_in, 1),
        "duplicate_leads": dup_leads, "duplicate_contacts": dup_contacts,
        "sim_5xx": stats.get("faults_injected"), "sim_ambiguous": stats.get("ambiguous_injected"),
        "sim_429": stats.get("responses_429"), "dead_letter_file": str(dead),
    }  # fmt: skip
    print(json.dumps(summary))
    os._exit(0)  # the streaming DirectRunner leaves non-daemon threads behind after cancel


if __name__ == "__main__":
    main()
