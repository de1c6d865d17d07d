"""Nested creation at several caps (closecrm/engine/rules/nest.py, MAX_NESTED_CONTACTS): W2's calls
per person and the size of each POST /lead/ body, and what a refused or lost create costs at the cap.

    .venv/bin/python bench/nest_cap.py --scale 0.05 [--caps 0 1 5 10 25 50 100]

W2's requests go through one engine stream (batches of 200, 25 in flight, as the job's writer
hands them over) against an in-process simulator with its limits x1000, in two orders: the job's
(event time: W2 is shuffled, so a company's people are spread over many batches) and by company
(a company's people one after the other, as a snapshot sorted by account gives them: the cap binds).
Cap 0 is the engine without nesting. ``--big N`` instead creates one company of N new people in one
batch, cleanly and with one refused value among the first followers (what a refusal costs at the cap).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pipeline_bench  # noqa: E402
import workloads  # noqa: E402

from closecrm.api.client import CloseClient  # noqa: E402
from closecrm.engine import UpsertEngine  # noqa: E402
from closecrm.engine.ordering import scheduler  # noqa: E402
from closecrm.engine.rules import nest  # noqa: E402
from closecrm.model import UpsertRequest  # noqa: E402
from transforms.writer import event_order  # noqa: E402


def set_cap(cap: int) -> None:
    nest.MAX_NESTED_CONTACTS = cap
    scheduler.MAX_NESTED_CONTACTS = cap


async def _run(sim: Any, settings: Any, reqs: list[UpsertRequest]) -> dict[str, Any]:
    sizes: list[int] = []
    async with CloseClient(sim.base_url, pipeline_bench.API_KEY) as client:
        request = client.request

        async def measured(method: str, path: str, **kw: Any) -> Any:
            if method == "POST" and path.strip("/") == "lead":
                sizes.append(len(json.dumps(kw.get("json"), separators=(",", ":"))))
            return await request(method, path, **kw)

        client.request = measured  # type: ignore[method-assign]
        outs = await UpsertEngine(client, settings).upsert_many(reqs)
    stats = sim.stats()
    return {
        "by_group": dict(stats["by_group"]),
        "calls_per_person": round(stats["requests_total"] / len(reqs), 3),
        "lead_post_bytes_mean": round(sum(sizes) / len(sizes)) if sizes else 0,
        "lead_post_bytes_max": max(sizes, default=0),
        "outcomes": dict(Counter(o.label for o in outs)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--caps", type=int, nargs="*", default=[0, 1, 5, 10, 25, 50, 100])
    ap.add_argument("--big", type=int, default=0)
    args = ap.parse_args()
    if args.big:
        return big(args.big, args.caps)
    lines = list(workloads.lines("W2", args.scale))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for order in ("event time", "by company"):
            for cap in args.caps:
                set_cap(cap)
                sim = pipeline_bench.new_sim(pipeline_bench.UNLIMITED_SCALE, limits=True)
                try:
                    config, _ = pipeline_bench.sim_job_config(sim, Path(tmp), f"cap{cap}")
                    reqs, _ = pipeline_bench.naive_requests(lines, config)
                    reqs.sort(key=event_order)
                    if order == "by company":
                        reqs.sort(key=lambda r: str(r.lead_company_id))
                    row = {
                        "order": order,
                        "cap": cap,
                        **asyncio.run(_run(sim, config.settings_model(), reqs)),
                    }
                finally:
                    sim.stop()
                print(json.dumps(row), flush=True)
                results.append(row)


def big(n: int, caps: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for refused in (False, True):
            for cap in caps:
                set_cap(cap)
                sim = pipeline_bench.new_sim(pipeline_bench.UNLIMITED_SCALE, limits=True)
                try:
                    config, _ = pipeline_bench.sim_job_config(sim, Path(tmp), f"big{cap}")
                    reqs = [
                        UpsertRequest(
                            lead_company_id="big",
                            lead_name="Big",
                            contact_user_id=f"u{i}",
                            contact_name=f"Person {i}",
                            contact_emails=(f"p{i}@big.example.com",),
                            contact_phones=("12",) if refused and i == 1 else (),  # Close refuses "12"
                        )
                        for i in range(n)
                    ]
                    row = {
                        "people": n,
                        "refused": refused,
                        "cap": cap,
                        **asyncio.run(_run(sim, config.settings_model(), reqs)),
                    }
                finally:
                    sim.stop()
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
