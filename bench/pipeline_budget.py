"""Budget use of the whole job over time: the pipeline alone against a rate-limited simulator.

Where ``pipeline_bench.py`` compares the job with the naive path (and so cannot run large inputs: the
naive reference makes ~2-3 calls per event), this runs only the job, samples the simulator's calls per
endpoint group every second, and prints when the budget was idle: start-up and the CPU stages (no
calls yet), a first sync's lead-bound start, flush boundaries, the tail. State equality and duplicates
are checked by ``pipeline_bench.py`` at smaller sizes; duplicates are counted here too.

    .venv/bin/python bench/pipeline_budget.py W2 --scale 1 --time-scale 5
    .venv/bin/python bench/pipeline_budget.py W2 --scale 1 --time-scale 5 --rate-groups foreign

``--rate-groups foreign`` serves a grouping the client does not assume (closesim/groups.py); the
bound then uses that grouping's groups and windows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pipeline_bench as pb  # noqa: E402
from remote_sim import RemoteSim  # noqa: E402

from closesim.groups import PRESETS  # noqa: E402


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc."""
    try:
        fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=["W1", "W2", "W4"])
    ap.add_argument("--scale", type=float, default=0.2)
    ap.add_argument("--time-scale", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=None, help="pipeline.batch_size (default: the config's)")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--in-process", action="store_true", help="the simulator in a thread of this process")
    ap.add_argument("--rate-groups", default="close", choices=["close", *PRESETS], help="the simulator's grouping")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pipeline-budget-"))
    input_path = work / f"{args.workload}.jsonl"
    gen = [sys.executable, str(ROOT / "bench" / "workloads.py"), args.workload, "--scale", str(args.scale)]
    subprocess.run([*gen, "--out", str(input_path)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    events = sum(1 for _ in input_path.open())

    if args.in_process:
        sim: Any = pb.new_sim(args.time_scale, True)
        sim.configure(rate_groups=args.rate_groups)
    else:
        sim = RemoteSim(args.time_scale, pb.API_KEY, args.rate_groups)
    config, cf = pb.sim_job_config(sim, work, "job")
    if args.batch_size:
        pipeline = config.pipeline.model_copy(update={"batch_size": args.batch_size})
        config = config.model_copy(update={"pipeline": pipeline})

    sim_pid = None if args.in_process else sim._proc.pid
    samples: list[tuple[float, dict[str, float]]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            stats = sim.stats()
            throttled = {f"429 {g}": n for g, n in stats.get("429_by_group", {}).items()}
            cpu = {"cpu job": cpu_seconds(), "cpu sim": cpu_seconds(sim_pid) if sim_pid else 0.0}
            samples.append((time.monotonic() - t0, {**stats["by_group"], **throttled, **cpu}))
            stop.wait(args.every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    job = pb.run_job(config, sim, input_path, work, "job")
    stop.set()
    sampler.join()
    dupes = pb.duplicates(sim, cf)
    sim.stop()

    rules = {r.name: r for r in PRESETS.get(args.rate_groups, ())}
    rates = {
        g: (rules[g].limit / rules[g].window if g in rules else pb.SEARCH_RATE if g == "search" else pb.OTHER_RATE)
        * args.time_scale
        for g in job["by_group"]
    }
    bound = max((n / rates[g] for g, n in job["by_group"].items()), default=0.0)
    busiest = max(job["by_group"], key=lambda g: job["by_group"][g] / rates[g])
    writes = ("lead_write", "contact_write", "writes")
    first_call = next((t for t, g in samples if any(g.get(w, 0) for w in writes)), None)
    timeline: list[dict[str, Any]] = []
    previous: dict[str, int] = samples[0][1] if samples else {}
    last_t = 0.0
    for t, groups in samples[1:]:
        span = max(t - last_t, 1e-9)
        delta = {g: n - previous.get(g, 0) for g, n in groups.items() if n - previous.get(g, 0)}
        cpu = {g.split()[1]: round(delta.pop(g, 0.0) / span, 2) for g in ("cpu job", "cpu sim")}
        throttled = {g.split()[1]: delta.pop(g) for g in list(delta) if g.startswith("429 ")}
        share = round(delta.get(busiest, 0) / (rates[busiest] * span), 2)
        timeline.append({"t": round(t, 1), "calls": delta, "429s": throttled, "cpu": cpu, "busiest_share": share})
        previous, last_t = groups, t
    for row in timeline:
        print(json.dumps(row))
    result = {
        "bench": "pipeline_budget",
        "workload": args.workload,
        "scale": args.scale,
        "time_scale": args.time_scale,
        "simulator": "in-process" if args.in_process else "own process",
        "rate_groups": args.rate_groups,
        "events": events,
        "batch_size": config.pipeline.batch_size,
        "by_group": job["by_group"],
        "responses_429": job["responses_429"],
        "busiest_group": busiest,
        "wall_s": round(job["wall_s"], 2),
        "first_write_s": round(first_call, 1) if first_call is not None else None,
        "bound_s": round(bound, 2),
        "budget_use": round(bound / job["wall_s"], 3),
        "wall_over_bound": round(job["wall_s"] / bound, 3) if bound else None,
        "budget_use_after_first_write": round(bound / (job["wall_s"] - first_call), 3) if first_call else None,
        "dead_lettered": job["dead_lettered"],
        "outcomes": job["outcomes"],
        **dupes,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
