"""Requests per second the Close API simulator sustains with limits off (server alone in a subprocess)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench_key"


def start_server() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "pipeline.cli", "sim", "--port", "0", "--api-key", API_KEY, "--no-limits"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["base_url"]


async def scenario(session: aiohttp.ClientSession, name: str, make, total: int, concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    queue = iter(range(total))

    async def worker() -> None:
        nonlocal errors
        for i in queue:
            method, url, body = make(i)
            t0 = time.perf_counter()
            async with session.request(method, url, json=body) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "scenario": name,
        "requests": total,
        "seconds": round(elapsed, 3),
        "rps": round(total / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "errors": errors,
    }


async def run(base_url: str, total: int, concurrency: int) -> list[dict]:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        lead_ids = []
        for i in range(50):
            async with session.post(base_url + "lead/", json={"name": f"seed {i}", "contacts": [
                    {"name": f"c{i}", "emails": [{"email": f"c{i}@example.com"}]}]}) as r:
                lead_ids.append((await r.json())["id"])
        search_body = {
            "query": {"type": "and", "queries": [
                {"type": "object_type", "object_type": "contact"},
                {"type": "has_related", "this_object_type": "contact", "related_object_type": "contact_email",
                 "related_query": {"type": "field_condition",
                                   "field": {"type": "regular_field", "object_type": "contact_email",
                                             "field_name": "email"},
                                   "condition": {"type": "term", "values": ["c1@example.com", "c7@example.com"]}}}]},
            "_limit": 10,
        }
        scenarios = {
            "GET /me/": lambda i: ("GET", base_url + "me/", None),
            "GET /lead/{id}/": lambda i: ("GET", base_url + f"lead/{lead_ids[i % len(lead_ids)]}/", None),
            "POST /lead/": lambda i: ("POST", base_url + "lead/", {"name": f"bench {i}"}),
            "POST /data/search/": lambda i: ("POST", base_url + "data/search/", search_body),
        }
        await scenario(session, "warm-up", scenarios["GET /me/"], 500, concurrency)
        results = [await scenario(session, name, make, total, concurrency) for name, make in scenarios.items()]

        def mixed(i: int):
            return list(scenarios.values())[i % len(scenarios)](i)

        results.append(await scenario(session, "mixed", mixed, total, concurrency))
        return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=4000, help="Requests per scenario.")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    proc, base_url = start_server()
    try:
        results = asyncio.run(run(base_url, args.requests, args.concurrency))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    header = f"{'scenario':<22}{'requests':>10}{'seconds':>10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['scenario']:<22}{r['requests']:>10}{r['seconds']:>10}{r['rps']:>10}{r['p50_ms']:>9}{r['p99_ms']:>9}"
              f"{r['errors']:>8}")
    mixed = next(r for r in results if r["scenario"] == "mixed")
    errors = sum(r["errors"] for r in results)
    print(json.dumps({"bench": "sim_throughput", "rps": mixed["rps"], "errors": errors,
                      "concurrency": args.concurrency, "scenarios": {r["scenario"]: r["rps"] for r in results}}))
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
