"""The whole job vs a naive per-event destination on a workload: API calls, 429s, wall vs bound, state.

    .venv/bin/python bench/pipeline_bench.py W1 --scale 0.05 --time-scale 20

Four runs, each against a fresh in-process simulator (`closesim.SimServer`):

1. job: the real pipeline (DirectRunner, files source, default config) with the simulator's default limits
   (search 16/s, every other group 40/s) multiplied by ``--time-scale``.
2. reference: the naive baseline on every event with the simulator effectively unlimited (limits x1000): parse + map each event, one
   ``UpsertEngine.upsert_one`` per request, in order (no dedupe, no collapse, no batching). Its call counts
   are exact; its final state is the one-at-a-time reference the job's state is compared with.
3. baseline timed: the same naive path on a sample (every event of 1 in k users, in order, about
   ``--baseline-sample`` events) with the limits on; its wall time and 429s are extrapolated per event.
4. cpu: the job again with the simulator effectively unlimited (x1000) -> events/s (the job's own CPU cost, the in-process
   simulator included).

``--only-cpu`` runs step 4 alone (no naive runs, the input never read into this process) and reports
events/s and peak RSS: the way to measure a large input, e.g. 1,000,000 W1-style events:

    .venv/bin/python bench/pipeline_bench.py W1 --scale 5 --only-cpu

Lower bound = max over endpoint groups of (job calls in the group / (group rate x time scale)); budget use =
bound / wall. Peak RSS is this process's (pipeline + simulators). With ``--only-cpu``, ``peak_job_rss_mb``
is the job's whole memory, sampled every 0.2 s: this process and the fold worker processes the local
runner starts (`pipeline.fold_processes`), the simulator's process excluded; ``worker_cpu_s`` is those
workers' CPU seconds (``cpu_s`` is this process's). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import workloads  # noqa: E402
from remote_sim import RemoteSim  # noqa: E402

from closecrm.api.client import CloseClient  # noqa: E402
from closecrm.engine import UpsertEngine  # noqa: E402
from closecrm.events.mapping import compile_mappings, map_event  # noqa: E402
from closecrm.events.parse import BadEvent, parse_event  # noqa: E402
from closecrm.model import UpsertRequest  # noqa: E402
from closecrm.wiring import KeySource  # noqa: E402
from closesim import SimConfig, SimServer  # noqa: E402
from pipeline import summary  # noqa: E402
from pipeline.config import JobConfig, load_config  # noqa: E402
from pipeline.runjob import RunRequest, launch  # noqa: E402
from pipeline.sources import SourceOptions  # noqa: E402

API_KEY = "bench_pipeline_key"
SEARCH_RATE = 16.0
OTHER_RATE = 40.0
# "Unlimited": limits on but x1000 (40,000 writes/s). With limits_enabled=False the simulator sends no
# rate-limit headers and the client keeps pacing itself at the real default rates (16 searches/s).
UNLIMITED_SCALE = 1000.0


# ------------------------------------------------------------------ simulators and state


def new_sim(time_scale: float, limits: bool) -> SimServer:
    sim = SimServer(SimConfig(api_keys=[API_KEY], time_scale=time_scale, limits_enabled=limits))
    sim.start()
    return sim


def sim_job_config(sim: SimServer, workdir: Path, name: str) -> tuple[JobConfig, dict[str, str]]:
    cf = {
        "company": sim.create_custom_field("lead", "Company ID"),
        "user": sim.create_custom_field("contact", "User ID"),
    }
    doc = {
        "settings": {
            "lead_custom_field_id_for_company_id": cf["company"],
            "contact_custom_field_id_for_user_id": cf["user"],
        }
    }
    path = workdir / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(str(path)), cf


def canonical(sim: SimServer, cf: dict[str, str]) -> dict[str, Any]:
    """Leads by company id (name), contacts by user id (name, title, lead's company id, emails, phones)."""
    leads = sim.leads()
    company_of = {lead["id"]: lead.get(f"custom.{cf['company']}") for lead in leads}
    lead_view = {str(company_of[lead["id"]]): lead.get("name") for lead in leads}
    contact_view = {}
    for c in sim.contacts():
        contact_view[str(c.get(f"custom.{cf['user']}"))] = {
            "name": c.get("name"),
            "title": c.get("title"),
            "company": company_of.get(c.get("lead_id")),
            "emails": sorted(e["email"].lower() for e in c.get("emails") or []),
            "phones": sorted(p["phone"] for p in c.get("phones") or []),
        }
    return {"leads": lead_view, "contacts": contact_view}


def duplicates(sim: SimServer, cf: dict[str, str]) -> dict[str, int]:
    leads = Counter(lead.get(f"custom.{cf['company']}") for lead in sim.leads())
    contacts = Counter(c.get(f"custom.{cf['user']}") for c in sim.contacts())
    return {
        "duplicate_leads": sum(n - 1 for n in leads.values() if n > 1),
        "duplicate_contacts": sum(n - 1 for n in contacts.values() if n > 1),
        "leads": sum(leads.values()),
        "contacts": sum(contacts.values()),
    }


def state_diff(job: dict[str, Any], ref: dict[str, Any]) -> dict[str, int]:
    out = {}
    for part in ("leads", "contacts"):
        a, b = job[part], ref[part]
        out[f"{part}_missing"] = len(set(b) - set(a))
        out[f"{part}_extra"] = len(set(a) - set(b))
        out[f"{part}_different"] = sum(1 for k in set(a) & set(b) if a[k] != b[k])
    return out


def sim_figures(sim: SimServer) -> dict[str, Any]:
    stats = sim.stats()
    by_group = dict(stats["by_group"])
    return {"by_group": by_group, "calls": sum(by_group.values()), "responses_429": stats["responses_429"]}


def since(now: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The calls made after `base` (the set-up calls, in whatever group the simulator counts them)."""
    by_group = {g: n - base["by_group"].get(g, 0) for g, n in now["by_group"].items()}
    return {**now, "by_group": {g: n for g, n in by_group.items() if n}, "calls": now["calls"] - base["calls"]}


def lower_bound(by_group: dict[str, int], time_scale: float) -> float:
    return max(
        (n / ((SEARCH_RATE if g == "search" else OTHER_RATE) * time_scale) for g, n in by_group.items()),
        default=0.0,
    )


# ------------------------------------------------------------------ the runs


def run_job(config: JobConfig, sim: SimServer, input_path: Path, workdir: Path, name: str) -> dict[str, Any]:
    os.environ["CLOSE_API_KEY"] = sim.api_key
    req = RunRequest(
        source=SourceOptions(source="files", input=str(input_path)),
        close_url=sim.base_url,
        key_source=KeySource(),
        dead_letter_dir=str(workdir / f"dead-{name}"),
        state_location=str(workdir / f"state-{name}"),  # a new simulator each run: no ledger of another
        progress=False,
    )
    base = sim_figures(sim)  # custom-field set-up calls
    t0 = time.monotonic()
    result = launch(config, req, validate=True)
    result.wait_until_finish()
    wall = time.monotonic() - t0
    values = summary.collect(result)
    figures = since(sim_figures(sim), base)
    outcomes = {k[len("outcome_") :]: v for k, v in values.items() if k.startswith("outcome_")}
    return {
        **figures,
        "wall_s": wall,
        "events_read": values.get("events_read", 0),
        "dead_lettered": values.get("events_dead_lettered", 0),
        "outcomes": outcomes,
    }


def naive_requests(lines: list[str], config: JobConfig) -> tuple[list[UpsertRequest], int]:
    mappings = compile_mappings(config.mapping_specs())
    reqs: list[UpsertRequest] = []
    bad = 0
    for line in lines:
        try:
            reqs += map_event(parse_event(line, config.pipeline.max_event_bytes), mappings)
        except BadEvent:
            bad += 1
    return reqs, bad


async def _one_at_a_time(sim: SimServer, config: JobConfig, reqs: list[UpsertRequest]) -> Counter[str]:
    kinds: Counter[str] = Counter()
    async with CloseClient(sim.base_url, API_KEY) as client:
        engine = UpsertEngine(client, config.settings_model())
        for r in reqs:
            kinds[(await engine.upsert_one(r)).kind] += 1
    return kinds


def run_naive(sim: SimServer, config: JobConfig, lines: list[str]) -> dict[str, Any]:
    base = sim_figures(sim)
    t0 = time.monotonic()
    reqs, bad = naive_requests(lines, config)
    kinds = asyncio.run(_one_at_a_time(sim, config, reqs))
    wall = time.monotonic() - t0
    figures = since(sim_figures(sim), base)
    return {**figures, "wall_s": wall, "events": len(lines), "bad": bad, "outcomes": dict(kinds)}


def user_sample(lines: list[str], target: int) -> list[str]:
    """Every event of 1 in k users (k from the target size), in order: the same per-user mix as the whole."""
    k = max(1, round(len(lines) / max(1, target)))
    out = []
    for line in lines:
        try:
            uid = str(json.loads(line).get("userId", ""))
        except (ValueError, AttributeError):
            uid = line
        if zlib.crc32(uid.encode()) % k == 0:
            out.append(line)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_children_mb() -> float:
    """Largest peak RSS of any waited-for child process (0 when the job ran in this process)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


class JobMemory:
    """The job's own memory, sampled every ``every`` seconds while it runs: the RSS of this process and of
    the processes it starts (the local runner's fold workers), the simulator's process excluded. Also
    their CPU seconds (a worker's are counted once it ends)."""

    def __init__(self, exclude: int | None, every: float = 0.2) -> None:
        self._exclude = exclude
        self._every = every
        self._stop = threading.Event()
        self.peak_mb = 0.0
        self.worker_cpu_s: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> JobMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            pids = [os.getpid(), *self._descendants(os.getpid())]
            self.peak_mb = max(self.peak_mb, sum(_rss_mb(pid) for pid in pids))
            for pid in pids[1:]:
                self.worker_cpu_s[pid] = max(self.worker_cpu_s.get(pid, 0.0), _cpu_s(pid))

    def _descendants(self, pid: int) -> list[int]:
        found: list[int] = []
        for child in _children(pid):
            if child != self._exclude:
                found += [child, *self._descendants(child)]
        return found


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def only_cpu(
    args: argparse.Namespace, input_path: Path, n_lines: int, workdir: Path, console: Console
) -> None:
    """Step 4 alone: the job against the unlimited simulator; events/s and peak RSS."""
    sim = RemoteSim(UNLIMITED_SCALE, API_KEY) if args.sim_process else new_sim(UNLIMITED_SCALE, limits=True)
    try:
        config, _ = sim_job_config(sim, workdir, "cpu")
        before = resource.getrusage(resource.RUSAGE_SELF)
        with JobMemory(exclude=sim.pid if args.sim_process else None) as memory:
            cpu = run_job(config, sim, input_path, workdir, "cpu")
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        sim.stop()
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    eps = cpu["events_read"] / cpu["wall_s"] if cpu["wall_s"] else None
    row = {
        "events": n_lines,
        "events_read": cpu["events_read"],
        "wall_s": cpu["wall_s"],
        "cpu_s": cpu_s,
        "worker_cpu_s": sum(memory.worker_cpu_s.values()),
        "cpu_events_per_s": eps,
        "api_calls": cpu["calls"],
        "responses_429": cpu["responses_429"],
        "dead_lettered": cpu["dead_lettered"],
        "outcomes": cpu["outcomes"],
        "peak_rss_mb": peak_rss_mb(),
        "peak_job_rss_mb": memory.peak_mb,
        "peak_rss_children_mb": peak_rss_children_mb(),
    }
    table = Table(title=f"pipeline bench {args.workload} scale {args.scale}: job only, simulator unlimited")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in row.items():
        table.add_row(
            key,
            f"{value:,.3f}"
            if isinstance(value, float)
            else f"{value:,}"
            if isinstance(value, int)
            else str(value),
        )
    console.print(table)
    out = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
    sim_where = "own process" if args.sim_process else "in-process"
    print(json.dumps({"bench": "pipeline-cpu", "workload": args.workload, "scale": args.scale, "simulator": sim_where, **out}))


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=["W1", "W2", "W4"])
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--time-scale", type=float, default=20.0)
    ap.add_argument("--baseline-sample", type=int, default=1000, help="events in the timed baseline sample")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument(
        "--only-cpu",
        action="store_true",
        help="only the job against the unlimited simulator: events/s, peak RSS",
    )
    ap.add_argument(
        "--sim-process",
        action="store_true",
        help="with --only-cpu: the simulator in its own process (as Close is remote), not a thread of the job's",
    )
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    input_path = workdir / f"{args.workload}.jsonl"
    n_lines = workloads.write(args.workload, input_path, args.scale)
    console = Console(stderr=True)
    console.print(f"{args.workload} scale {args.scale}: {n_lines:,} lines in {input_path}")
    if args.only_cpu:
        only_cpu(args, input_path, n_lines, workdir, console)
        return
    lines = input_path.read_text().splitlines()

    sims: list[SimServer] = []
    try:
        # 1. the job, limits on
        sim = new_sim(args.time_scale, limits=True)
        sims.append(sim)
        config, cf = sim_job_config(sim, workdir, "job")
        job = run_job(config, sim, input_path, workdir, "job")
        job_state, job_dupes = canonical(sim, cf), duplicates(sim, cf)
        console.print(f"job done in {job['wall_s']:.1f}s")

        # 2. reference: naive on everything, unlimited
        sim = new_sim(UNLIMITED_SCALE, limits=True)
        sims.append(sim)
        ref_config, ref_cf = sim_job_config(sim, workdir, "ref")
        ref = run_naive(sim, ref_config, lines)
        ref_state, ref_dupes = canonical(sim, ref_cf), duplicates(sim, ref_cf)
        console.print(f"reference done in {ref['wall_s']:.1f}s")

        # 3. baseline timed on a sample, limits on
        sample = user_sample(lines, args.baseline_sample)
        sim = new_sim(args.time_scale, limits=True)
        sims.append(sim)
        base_config, _ = sim_job_config(sim, workdir, "base")
        base = run_naive(sim, base_config, sample)
        console.print(f"baseline sample ({len(sample)} events) done in {base['wall_s']:.1f}s")

        # 4. cpu: the job, unlimited
        cpu: dict[str, Any] | None = None
        if not args.skip_cpu:
            sim = new_sim(UNLIMITED_SCALE, limits=True)
            sims.append(sim)
            cpu_config, _ = sim_job_config(sim, workdir, "cpu")
            cpu = run_job(cpu_config, sim, input_path, workdir, "cpu")
            console.print(f"cpu run done in {cpu['wall_s']:.1f}s")
    finally:
        for s in sims:
            s.stop()

    n = n_lines
    bound = lower_bound(job["by_group"], args.time_scale)
    base_bound_per_event = lower_bound(base["by_group"], args.time_scale) / max(1, len(sample))
    diff = state_diff(job_state, ref_state)
    users = len(ref_state["contacts"])
    row_job = {
        "path": "job",
        "events": n,
        "api_calls": job["calls"],
        "calls_per_event": job["calls"] / n,
        "calls_per_user": job["calls"] / max(1, users),
        "by_group": job["by_group"],
        "responses_429": job["responses_429"],
        "wall_s": job["wall_s"],
        "bound_s": bound,
        "wall_over_bound": job["wall_s"] / bound if bound else None,
        "budget_use": bound / job["wall_s"] if job["wall_s"] else None,
        "dead_lettered": job["dead_lettered"],
        "outcomes": job["outcomes"],
        **job_dupes,
    }
    row_base = {
        "path": "naive one-at-a-time",
        "events": n,
        "api_calls": ref["calls"],
        "calls_per_event": ref["calls"] / n,
        "calls_per_user": ref["calls"] / max(1, users),
        "by_group": ref["by_group"],
        # wall and 429s: extrapolated per event from the timed sample
        "responses_429": round(base["responses_429"] / max(1, len(sample)) * n),
        "wall_s": base["wall_s"] / max(1, len(sample)) * n,
        "bound_s": base_bound_per_event * n,
        "wall_over_bound": (base["wall_s"] / max(1e-9, base_bound_per_event * len(sample))),
        "budget_use": base_bound_per_event * len(sample) / base["wall_s"] if base["wall_s"] else None,
        "dead_lettered": ref["bad"],
        "outcomes": ref["outcomes"],
        "sample_events": len(sample),
        "sample_calls": base["calls"],
        "sample_wall_s": base["wall_s"],
        **ref_dupes,
    }
    cpu_eps = cpu["events_read"] / cpu["wall_s"] if cpu else None
    state_equal = all(v == 0 for v in diff.values())

    table = Table(title=f"pipeline bench {args.workload} scale {args.scale} time-scale {args.time_scale}")
    table.add_column("measure")
    table.add_column("job", justify="right")
    table.add_column("naive (calls: all events; wall/429s: sample, extrapolated)", justify="right")

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    for key in ("events", "api_calls", "calls_per_event", "calls_per_user", "responses_429", "wall_s", "bound_s",
                "wall_over_bound", "budget_use", "dead_lettered", "leads", "contacts", "duplicate_leads",
                "duplicate_contacts"):  # fmt: skip
        table.add_row(key, fmt(row_job[key]), fmt(row_base[key]))
    groups = sorted(set(row_job["by_group"]) | set(row_base["by_group"]))
    for g in groups:
        table.add_row(f"calls {g}", fmt(row_job["by_group"].get(g, 0)), fmt(row_base["by_group"].get(g, 0)))
    table.add_row("outcomes", fmt(row_job["outcomes"]), fmt(row_base["outcomes"]))
    table.add_row("state equals reference", str(state_equal), "(reference)")
    table.add_row("cpu events/s (sim unlimited)", fmt(cpu_eps) if cpu_eps else "-", "-")
    table.add_row("peak RSS MB (this process)", fmt(peak_rss_mb()), "")
    console.print(table)
    if not state_equal:
        console.print(f"state differences: {diff}")

    def r(v: Any) -> Any:
        return round(v, 3) if isinstance(v, float) else v

    print(
        json.dumps(
            {
                "bench": "pipeline",
                "workload": args.workload,
                "scale": args.scale,
                "time_scale": args.time_scale,
                "events": n,
                "users": users,
                "job": {k: r(v) for k, v in row_job.items()},
                "naive": {k: r(v) for k, v in row_base.items()},
                "state_equal": state_equal,
                "state_diff": diff,
                "cpu_events_per_s": r(cpu_eps),
                "cpu_wall_s": r(cpu["wall_s"]) if cpu else None,
                "peak_rss_mb": r(peak_rss_mb()),
            }
        )
    )


if __name__ == "__main__":
    main()
