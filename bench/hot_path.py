"""Per-event CPU of the batch job's pure hot path, stage by stage, on a workload (W1 by default).

    .venv/bin/python bench/hot_path.py --scale 0.5 [--repeat 3] [--profile map|collapse|pickle|parse]

Stages, each timed on its own over every event (least CPU time of ``--repeat`` runs, each with the
memos of closecrm.events.mapping and normalize emptied first, µs per event; the garbage collector off
unless ``--gc``):

- parse: `parse_event` of each JSON line (with its `Origin`, as the files source reads it);
- map: `map_event` with the pipeline bench's config (company-id and user-id custom fields), and the
  (person, (request, `Received`)) tuples the job shuffles;
- collapse: `transforms.collapse.collapse_persons` over all those tuples (per input request);
- dumps / loads: pickling each shuffled tuple on its own, and back (per event), with the mean size.

Also the pickled size of the collapsed requests (their `Parts` included). ``--profile`` runs one stage
under cProfile and prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pickle
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import workloads  # noqa: E402

from closecrm.events import mapping, normalize  # noqa: E402
from closecrm.events.mapping import compile_mappings, map_event  # noqa: E402
from closecrm.events.parse import parse_event  # noqa: E402
from closecrm.model import Origin  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from transforms.collapse import collapse_persons  # noqa: E402
from transforms.mapping import carried, person_key  # noqa: E402

PROTOCOL = pickle.HIGHEST_PROTOCOL


def bench_config() -> Any:
    """The pipeline bench's config: both custom-field settings, default mappings."""
    doc = {
        "settings": {
            "lead_custom_field_id_for_company_id": "cf_company_id",
            "contact_custom_field_id_for_user_id": "cf_user_id",
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(doc))
        return load_config(str(path))


def forget_memos() -> None:
    """Empty the hot path's bounded memos, so each timed run starts cold, as a job does."""
    for module in (mapping, normalize):
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


def timed(fn: Callable[[], Any], repeat: int, collect: bool = False) -> tuple[float, Any]:
    """Least CPU time of ``repeat`` runs of ``fn`` (this process's: the machine may be shared; the garbage
    collector off unless ``collect``), and its last result."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        forget_memos()
        gc.collect()
        if not collect:
            gc.disable()
        try:
            start = time.process_time()
            result = fn()
            best = min(best, time.process_time() - start)
        finally:
            gc.enable()
    return best, result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", nargs="?", default="W1", choices=["W1", "W2", "W4"])
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", choices=["parse", "map", "collapse", "pickle"])
    ap.add_argument("--gc", action="store_true", help="keep the garbage collector on while timing")
    ap.add_argument("--only", default="", help="comma-separated stages to time (default: all)")
    args = ap.parse_args(argv)

    cfg = bench_config()
    compiled = compile_mappings(cfg.mapping_specs())
    by_user_id = bool(cfg.settings_model().contact_custom_field_id_for_user_id)
    lines = list(workloads.lines(args.workload, args.scale))
    origins = [Origin("line", "w.jsonl", i + 1) for i in range(len(lines))]
    n = len(lines)

    def parse_all() -> list[Any]:
        out = []
        for line, origin in zip(lines, origins, strict=True):
            try:
                out.append(parse_event(line, origin=origin))
            except Exception:  # noqa: BLE001, S112 - W4's bad lines are the parse stage's dead letters
                continue
        return out

    _, events = timed(parse_all, 1)

    def map_all() -> list[Any]:
        out = []
        for event in events:
            try:
                requests = map_event(event, compiled)
            except Exception:  # noqa: BLE001, S112 - a map-stage dead letter
                continue
            shown = carried(event)
            out.extend((person_key(event, r), (r, shown)) for r in requests)
        return out

    _, items = timed(map_all, 1)

    def collapse_all() -> list[Any]:
        return list(collapse_persons(items, by_user_id=by_user_id))

    def dumps_all() -> list[bytes]:
        return [pickle.dumps(item, PROTOCOL) for item in items]

    blobs = dumps_all()

    def loads_all() -> list[Any]:
        return [pickle.loads(blob) for blob in blobs]  # noqa: S301 - our own blobs

    stages: dict[str, Callable[[], Any]] = {
        "parse": parse_all,
        "map": map_all,
        "collapse": collapse_all,
        "dumps": dumps_all,
        "loads": loads_all,
    }
    if args.profile:
        fn = stages[args.profile] if args.profile != "pickle" else (lambda: (dumps_all(), loads_all()))
        profiler = cProfile.Profile()
        profiler.runcall(fn)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return

    print(f"{args.workload} scale {args.scale}: {n} lines, {len(events)} events, {len(items)} requests")
    results: dict[str, float] = {}
    collapsed: list[Any] = []
    only = set(filter(None, args.only.split(","))) or set(stages) | {"collapse"}
    for name, fn in stages.items():
        if name not in only and name != "collapse":  # collapse's output gives the sizes below
            continue
        seconds, result = timed(fn, args.repeat, args.gc)
        per_request = name in ("collapse", "dumps", "loads")
        results[name] = seconds / (len(items) if per_request else n) * 1e6
        print(f"  {name:<9} {results[name]:7.2f} µs per {'request' if per_request else 'event'}")
        if name == "collapse":
            collapsed = result
    requests = [r for _, out in collapsed for r, _ in out]
    tuple_size = sum(map(len, blobs)) / len(blobs)
    request_size = sum(len(pickle.dumps(r, PROTOCOL)) for _, (r, _) in items) / len(items)
    collapsed_size = sum(len(pickle.dumps(r, PROTOCOL)) for r in requests) / max(1, len(requests))
    print(f"  shuffled tuple pickles to {tuple_size:.0f} B (its request alone {request_size:.0f} B)")
    print(f"  {len(requests)} collapsed requests, {collapsed_size:.0f} B pickled each (parts included)")


if __name__ == "__main__":
    main()
