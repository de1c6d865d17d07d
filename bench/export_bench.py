"""Export throughput: rows/s and API calls of a full export of 5,000 leads / 12,000 contacts from the simulator.

python bench/export_bench.py [--limits] [--time-scale X] [--slices N] [--format parquet|avro]
With --limits the simulator enforces Close's search budget (16 per window per key) at the time scale given.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from closecrm.api.client import CloseClient  # noqa: E402
from closecrm.reverse_etl.export import ExportRequest, export  # noqa: E402
from closesim import SimConfig, SimServer  # noqa: E402
from tests.export.conftest import organisation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", action="store_true", help="Enforce rate limits.")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--format", choices=["parquet", "avro"], default="parquet")
    args = parser.parse_args()

    server = SimServer(SimConfig(limits_enabled=args.limits, time_scale=args.time_scale))
    server.start()
    started = time.monotonic()
    server.seed(organisation())
    print(
        f"seeded {server.stats()['leads']} leads / {server.stats()['contacts']} contacts "
        f"in {time.monotonic() - started:.1f} s"
    )

    async def run() -> str:
        async with CloseClient(server.base_url, server.api_key) as client:
            with tempfile.TemporaryDirectory() as out:
                request = ExportRequest(
                    Path(out),
                    format=args.format,
                    company_id_field="cf_company",
                    user_id_field="cf_user",
                    slices=args.slices,
                )
                return (await export(client, request)).line()

    print(asyncio.run(run()))
    stats = server.stats()
    print(f"server: {stats['requests_total']} requests, {stats['responses_429']} answered 429")
    server.stop()


if __name__ == "__main__":
    main()
