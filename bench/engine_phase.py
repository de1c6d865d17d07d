"""The Close engine's phase of the batch job alone: CPU, calls and memory of applying W1's collapsed requests.

    .venv/bin/python bench/engine_phase.py [--scale 1] [--memory] [--profile out.prof] [--state out.json]

Builds the requests as the job does (workloads lines -> parse_event -> map_event -> collapse per person,
by user id), orders and cuts them as the bounded writer does (`flush_order`, flushes of the job's
``batch_size``) and feeds them through `EngineFeed` (lookup batches of the whole flush) to an engine
built as `EngineSpec.build` builds it, with a created-id ledger, against the simulator in its own process
with the job's "unlimited" limits (x1000). Only the engine phase is measured: process CPU seconds
(the simulator's are its own), the Close calls by endpoint group, the outcomes, and with ``--memory``
tracemalloc's peak over the phase. ``--state`` writes the simulator's end state (canonical form) and
the outcomes, to compare two runs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pickle
import resource
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import workloads  # noqa: E402
from pipeline_bench import UNLIMITED_SCALE, canonical  # noqa: E402
from remote_sim import RemoteSim  # noqa: E402

from closecrm.engine.ordering.spans import batches  # noqa: E402
from closecrm.events.mapping import compile_mappings, map_event  # noqa: E402
from closecrm.events.normalize import is_valid_email, phone_key, to_e164  # noqa: E402
from closecrm.events.parse import BadEvent, parse_event  # noqa: E402
from closecrm.model import Settings  # noqa: E402
from closecrm.wiring import EngineSpec, KeySource  # noqa: E402
from pipeline.config import default_config  # noqa: E402
from transforms.collapse import Pending, collapse_persons  # noqa: E402
from transforms.feed import EngineFeed  # noqa: E402
from transforms.mapping import person_key  # noqa: E402
from transforms.writer import flush_order  # noqa: E402

API_KEY = "bench_engine_phase_key"


def collapsed_requests(scale: float, settings: Settings) -> list[Pending]:
    """W1's requests after the job's parse, map and collapse (per person, by user id), in person order."""
    config = default_config()
    mappings = compile_mappings(config.mapping_specs())
    items = []
    for line in workloads.lines("W1", scale):
        try:
            event = parse_event(line, config.pipeline.max_event_bytes)
        except BadEvent:
            continue
        for req in map_event(event, mappings):
            items.append((person_key(event, req), (req, None)))
    by_user_id = bool(settings.contact_custom_field_id_for_user_id)
    return [
        Pending(person=person, request=req)
        for person, collapsed in collapse_persons(items, by_user_id=by_user_id)
        for req, _ in collapsed
    ]


def cached_requests(path: str | None, scale: float, settings: Settings) -> list[Pending]:
    """`collapsed_requests`, read from / written to ``path`` when given (they depend on the scale only)."""
    if path and Path(path).exists():
        with open(path, "rb") as fh:
            return pickle.load(fh)  # noqa: S301 - written by this bench
    pendings = collapsed_requests(scale, settings)
    if path:
        with open(path, "wb") as fh:
            pickle.dump(pendings, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return pendings


def warm_normalize(pendings: list[Pending]) -> None:
    """The job maps and collapses events in the same process before the writer runs, which fills
    normalize's memoised phone and email checks with the requests' values; requests read from a cache
    did not."""
    for p in pendings:
        for phone in p.request.contact_phones:
            to_e164(phone)  # mapping checks each phone
            phone_key(phone)  # collapsing compares them
        for email in p.request.contact_emails:
            is_valid_email(email)


def apply(
    pendings: list[Pending],
    spec: EngineSpec,
    batch_size: int,
    profiler: cProfile.Profile | None = None,
    watch: Callable[[], None] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """The bounded writer's path (ApplyBatches._flush on one key): flushes in event time through one
    `EngineFeed`, lookup batches of a whole flush. Returns (outcomes in flush order, figures)."""
    from closecrm.engine import MAX_CONCURRENCY

    loop = asyncio.new_event_loop()

    def run() -> None:
        if profiler is None:
            loop.run_forever()
            return
        profiler.runcall(loop.run_forever)  # the engine's thread, where its CPU goes

    thread = threading.Thread(target=run, name="close-writer", daemon=True)
    thread.start()
    client, engine = spec.build()
    feed = EngineFeed(loop, engine, batch_size=batch_size)
    outcomes: list[Any] = []
    ordered = flush_order(pendings)
    for flush in batches(ordered, batch_size, lambda p: p.request):
        outcomes.extend(feed.wait_until(MAX_CONCURRENCY))
        feed.submit(flush)
    while feed.outstanding:
        outcomes.extend(feed.ready())
        if watch is not None:
            watch()
        time.sleep(0.05)
    feed.close()
    asyncio.run_coroutine_threadsafe(client.aclose(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    if engine.ledger is not None:
        engine.ledger.flush()
    return outcomes, {"requests": len(ordered)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=default_config().pipeline.batch_size)
    ap.add_argument("--memory", action="store_true", help="tracemalloc over the engine phase (slower)")
    ap.add_argument(
        "--memory-top", type=int, default=0, help="with --memory: the top N allocation sites at the peak"
    )
    ap.add_argument("--profile", help="cProfile the engine phase into this file")
    ap.add_argument("--gc-off", action="store_true", help="no garbage collection over the phase (to profile the rest)")
    ap.add_argument("--state", help="write the end state and outcomes (JSON) here")
    ap.add_argument("--requests-cache", help="pickle of the collapsed requests: read if there, else written")
    args = ap.parse_args(argv)

    sim = RemoteSim(UNLIMITED_SCALE, API_KEY)
    try:
        cf = {
            "company": sim.create_custom_field("lead", "Company ID"),
            "user": sim.create_custom_field("contact", "User ID"),
        }
        settings = Settings(cf["company"], cf["user"])
        pendings = cached_requests(args.requests_cache, args.scale, settings)
        warm_normalize(pendings)
        os.environ["CLOSE_API_KEY"] = API_KEY
        workdir = tempfile.mkdtemp(prefix="engine-phase-")
        spec = EngineSpec(
            close_url=sim.base_url,
            key_source=KeySource(),
            settings=settings,
            created_ids=f"{workdir}/created-ids",
        )
        before = sim.stats()
        gc.collect()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if args.memory:
            tracemalloc.start()
        profiler = cProfile.Profile() if args.profile else None
        cpu0, wall0 = time.process_time(), time.monotonic()
        biggest: list[Any] = [0, None]

        def watch() -> None:
            # the largest of snapshots taken every 50 ms: what is alive near the phase's peak
            size = tracemalloc.get_traced_memory()[0]
            if size > biggest[0] * 1.05:
                biggest[:] = [size, tracemalloc.take_snapshot()]

        gc_s = [0.0, 0.0]
        gc_by_gen: Counter[int] = Counter()
        gc_s_by_gen: Counter[int] = Counter()

        def gc_timer(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                gc_s[1] = time.process_time()
            else:
                spent = time.process_time() - gc_s[1]
                gc_s[0] += spent
                gc_by_gen[info["generation"]] += 1
                gc_s_by_gen[info["generation"]] += spent

        gc.callbacks.append(gc_timer)
        if args.gc_off:
            gc.disable()
        outs, _ = apply(pendings, spec, args.batch_size, profiler, watch if args.memory_top else None)
        gc.callbacks.remove(gc_timer)
        gc.enable()
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        if profiler is not None:
            profiler.dump_stats(args.profile)
        peak = None
        if args.memory:
            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        after = sim.stats()
        by_group = {g: v - before["by_group"].get(g, 0) for g, v in after["by_group"].items()}
        by_group = {g: v for g, v in sorted(by_group.items()) if v}
        kinds = Counter(o.kind for _, o in outs)
        result = {
            "bench": "engine_phase",
            "scale": args.scale,
            "requests": len(pendings),
            "cpu_s": round(cpu, 2),
            "wall_s": round(wall, 2),
            "calls": sum(by_group.values()),
            "calls_by_group": by_group,
            "outcome_calls": sum(o.calls for _, o in outs),
            "outcomes": dict(sorted(kinds.items())),
            "gc_s": round(gc_s[0], 2),
            "gc_runs_by_generation": {g: [gc_by_gen[g], round(gc_s_by_gen[g], 2)] for g in sorted(gc_by_gen)},
            "maxrss_growth_mb": round((rss_after - rss_before) / 1024, 1),
            "tracemalloc_peak_mb": round(peak / 2**20, 1) if peak is not None else None,
            "tracemalloc_end_mb": round(current / 2**20, 1) if peak is not None else None,
        }
        print(json.dumps(result))
        if biggest[1] is not None:
            print(f"near the peak: {biggest[0] / 2**20:.1f} MB traced")
            for stat in biggest[1].statistics("lineno")[: args.memory_top]:
                print(f"  {stat.size / 2**20:7.2f} MB {stat.count:8d}  {stat.traceback}")
        if args.state:
            state = {
                "state": canonical(sim, cf),
                "outcomes": sorted(
                    [p.person, list(p.request.event_ids), o.kind, o.reason, o.branch, o.calls, len(o.changes)]
                    for p, o in outs
                ),
                "figures": {k: result[k] for k in ("calls", "calls_by_group", "outcome_calls", "outcomes")},
            }
            # record ids differ between runs only by the simulator's counter: compare what they hold
            Path(args.state).write_text(json.dumps(state, sort_keys=True))
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
