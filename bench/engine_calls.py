"""API calls per request and rate-budget use of the upsert engine, batch vs one-at-a-time, against the simulator.

The simulator runs in its own process (`close-sync sim`) with its default limits (search 16/s, every other
group 40/s per key) sped up by --time-scale, so the numbers are the ones a real run would see, faster.

    .venv/bin/python bench/engine_calls.py [--requests 10000 --companies 2000 --time-scale 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from closecrm.api.client import CloseClient  # noqa: E402
from closecrm.engine import MAX_CONCURRENCY, STREAM_BATCH, STREAM_DEPTH, UpsertEngine  # noqa: E402
from closecrm.model import Settings, UpsertRequest  # noqa: E402

API_KEY = "bench_key"
TITLES = ["CEO", "CTO", "Engineer", "Sales", "Support", "Marketing"]
WRITE_GROUPS = ("lead_write", "contact_write")


def workload(n: int, companies: int, seed: int = 42) -> list[UpsertRequest]:
    """A first sync: several users per company, then some repeats (identical, a new title, a new phone)."""
    rng = random.Random(seed)
    users_per_company = max(1, round(n * 0.8 / companies))
    people = []
    for c in range(companies):
        domain = f"company{c}.example.com"
        for u in range(users_per_company):
            people.append(
                UpsertRequest(
                    lead_company_id=f"acct_{c:05d}",
                    lead_name=f"Company {c}",
                    contact_user_id=f"user_{c:05d}_{u}",
                    contact_name=f"Person {c}-{u}",
                    contact_emails=(f"person{u}@{domain}",),
                    contact_title=rng.choice(TITLES),
                )
            )
    rng.shuffle(people)
    people = people[: int(n * 0.8)]
    out: list[UpsertRequest] = list(people)
    for _ in range(n - len(people)):
        pos = rng.randrange(len(out) // 4, len(out) + 1)
        base = rng.choice(out[:pos])
        kind = rng.random()
        if kind < 0.4:
            repeat = base  # a page reload: identical content
        elif kind < 0.8:
            repeat = UpsertRequest(**{**base.__dict__, "contact_title": rng.choice(TITLES) + " II"})
        else:
            repeat = UpsertRequest(**{**base.__dict__, "contact_phones": (f"+1415{rng.randrange(10**7):07d}",)})
        out.insert(pos, repeat)
    return out


def start_sim(time_scale: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "pipeline.cli", "sim", "--port", "0", "--api-key", API_KEY,
        "--time-scale", str(time_scale),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["base_url"]


def admin(base_url: str, method: str, path: str, body: Any = None) -> Any:
    root = base_url.split("/api/v1/")[0]
    return httpx.request(method, f"{root}/_sim/{path}", json=body, auth=(API_KEY, ""), timeout=30).json()


def fresh_org(base_url: str) -> Settings:
    admin(base_url, "POST", "reset")
    auth = (API_KEY, "")
    company = httpx.post(f"{base_url}custom_field/lead/", json={"name": "Company ID", "type": "text"}, auth=auth)
    user = httpx.post(f"{base_url}custom_field/contact/", json={"name": "User ID", "type": "text"}, auth=auth)
    return Settings(company.json()["id"], user.json()["id"])


async def run_batches(
    base_url: str,
    settings: Settings,
    reqs: list[UpsertRequest],
    size: int,
    depth: int = STREAM_DEPTH,
    concurrency: int = MAX_CONCURRENCY,
    http_backend: str = "aiohttp",
) -> dict[str, Any]:
    async with CloseClient(base_url, API_KEY, http_backend=http_backend) as client:
        engine = UpsertEngine(client, settings, max_concurrency=concurrency)
        t0 = time.monotonic()
        # upsert_many = upsert_batch on each slice of `size` in turn, streamed: each batch's searches
        # overlap earlier batches' writes (same calls, same end state). The pipeline's writer calls it.
        outs = await engine.upsert_many(reqs, batch_size=size, depth=depth)
        elapsed = time.monotonic() - t0
        return {"outcomes": outs, "elapsed": elapsed, "client": client.counters()}


async def run_one_at_a_time(base_url: str, settings: Settings, reqs: list[UpsertRequest]) -> dict[str, Any]:
    async with CloseClient(base_url, API_KEY) as client:
        engine = UpsertEngine(client, settings)
        t0 = time.monotonic()
        outs = [await engine.upsert_one(r) for r in reqs]
        return {"outcomes": outs, "elapsed": time.monotonic() - t0, "client": client.counters()}


def summarise(name: str, run: dict[str, Any], stats: dict[str, Any], rates: dict[str, float]) -> dict[str, Any]:
    outs = run["outcomes"]
    n = len(outs)
    by_group = stats["by_group"]
    calls = sum(by_group.values())
    elapsed = run["elapsed"]
    shares = {g: by_group.get(g, 0) / (rates[g] * elapsed) for g in WRITE_GROUPS}
    kinds: dict[str, int] = {}
    for o in outs:
        kinds[o.kind] = kinds.get(o.kind, 0) + 1
    return {
        "path": name,
        "requests": n,
        "api_calls": calls,
        "calls_per_request": round(calls / n, 3),
        "calls_by_group": by_group,
        "write_budget_share": round(max(shares.values()), 3),
        "write_budget_share_by_group": {g: round(s, 3) for g, s in shares.items()},
        "responses_429": stats["responses_429"],
        "requests_per_s": round(n / elapsed, 1),
        "elapsed_s": round(elapsed, 2),
        "outcomes": kinds,
        "throttled_s": run["client"]["throttled_seconds"],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--companies", type=int, default=2_000)
    # x5: Close's budgets (40 writes/s a group) five times faster, ~250 requests/s. At x10 (~480/s) the client
    # and the simulator share this 2-core box's CPU with each other and stop being paced by the budget.
    ap.add_argument("--time-scale", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=STREAM_BATCH)
    ap.add_argument("--one-sample", type=int, default=500, help="requests through upsert_one")
    ap.add_argument("--depth", type=int, default=STREAM_DEPTH, help="batches in flight in upsert_stream (1: none)")
    ap.add_argument(
        "--concurrency", type=int, default=MAX_CONCURRENCY, help="the engine's max_concurrency (groups at once)"
    )
    ap.add_argument("--http", choices=["httpx", "aiohttp"], default="aiohttp", help="the client's HTTP backend")
    args = ap.parse_args(argv)

    reqs = workload(args.requests, args.companies)
    # per-group budget in requests per second of wall time: the simulator's defaults times the scale
    rates = {g: 40.0 * args.time_scale for g in WRITE_GROUPS}
    proc, base_url = start_sim(args.time_scale)
    try:
        settings = fresh_org(base_url)
        base = admin(base_url, "GET", "stats")
        batch = asyncio.run(
            run_batches(base_url, settings, reqs, args.batch_size, args.depth, args.concurrency, args.http)
        )
        stats = admin(base_url, "GET", "stats")
        stats = {
            "by_group": {g: v - base["by_group"].get(g, 0) for g, v in stats["by_group"].items()},
            "responses_429": stats["responses_429"] - base["responses_429"],
        }
        batch_row = summarise("batch", batch, stats, rates)

        settings = fresh_org(base_url)
        base = admin(base_url, "GET", "stats")
        one = asyncio.run(run_one_at_a_time(base_url, settings, reqs[: args.one_sample]))
        stats = admin(base_url, "GET", "stats")
        stats = {
            "by_group": {g: v - base["by_group"].get(g, 0) for g, v in stats["by_group"].items()},
            "responses_429": stats["responses_429"] - base["responses_429"],
        }
        one_row = summarise("one_at_a_time", one, stats, rates)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    cols = ("path", "requests", "calls_per_request", "write_budget_share", "responses_429", "requests_per_s", "elapsed_s")
    print(" | ".join(f"{c:>18}" for c in cols))
    for row in (batch_row, one_row):
        print(" | ".join(f"{row[c]!s:>18}" for c in cols))
    print(f"batch calls by group: {batch_row['calls_by_group']}  outcomes: {batch_row['outcomes']}")
    print(f"batch write-budget share by group: {batch_row['write_budget_share_by_group']}")
    print(
        json.dumps(
            {
                "bench": "engine_calls",
                "time_scale": args.time_scale,
                "requests": args.requests,
                "companies": args.companies,
                "batch_size": args.batch_size,
                "depth": args.depth,
                "concurrency": args.concurrency,
                "http": args.http,
                "calls_per_request_batch": batch_row["calls_per_request"],
                "calls_per_request_one_at_a_time": one_row["calls_per_request"],
                "write_budget_share": batch_row["write_budget_share"],
                "write_budget_share_by_group": batch_row["write_budget_share_by_group"],
                "responses_429": batch_row["responses_429"],
                "requests_per_s": batch_row["requests_per_s"],
                "one_at_a_time_requests_per_s": one_row["requests_per_s"],
                "outcomes": batch_row["outcomes"],
            }
        )
    )


if __name__ == "__main__":
    main()
