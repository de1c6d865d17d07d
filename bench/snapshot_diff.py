"""Benchmark snapshot-sync: the diff stage on a 1M-row export with 2% changed rows, then the API calls those rows cost.

    .venv/bin/python bench/snapshot_diff.py [--rows 1000000] [--changed 0.02] [--api-rows N] [Beam options]

1. Writes export A and export B (B = A with every 1/changed-th row's title changed) as Parquet.
2. Diff stage alone (no Close): A against no state (first run), then B against A's state:
   read → key → CoGroupByKey with the state → classify → write the next state. Reports rows/s.
3. The real job (`run_snapshot`) for B against A's state on the simulator, whose store is seeded
   with A's version of the changed rows (unchanged rows never reach Close). Reports API calls
   per changed row, counted by the simulator. ``--api-rows`` caps the rows of this step.
Peak memory is ru_maxrss of this process and of its children (multi_processing workers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from closecrm import diff  # noqa: E402
from closecrm.reverse_etl.snapshot import SnapshotSpec, request_for  # noqa: E402
from closecrm.wiring import KeySource  # noqa: E402
from closesim import SimConfig, SimServer  # noqa: E402
from pipeline import summary  # noqa: E402
from pipeline.config import parse_config  # noqa: E402
from pipeline.snapshot_job import SnapshotRequest, run_snapshot  # noqa: E402
from pipeline.snapshot_state import SnapshotState  # noqa: E402
from transforms.snapshot import (  # noqa: E402
    DEFAULT_BUCKETS,
    KEEP,
    DiffSnapshot,
    FingerprintTables,
    WriteFingerprints,
)

COLUMNS = ("user_id", "email", "full_name", "title", "account_id", "account_name", "plan")


def export(path: Path, rows: int, changed_every: int, changed: bool, files: int = 4) -> str:
    path.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    for f in range(files):
        ids = range(f * per_file, min(rows, (f + 1) * per_file))
        data = {
            "user_id": [f"u{i:08d}" for i in ids],
            "email": [f"user{i}@example.com" for i in ids],
            "full_name": [f"User {i}" for i in ids],
            "title": [("Head of Things" if changed and i % changed_every == 0 else "Engineer") for i in ids],
            "account_id": [f"acc{i:08d}" for i in ids],
            "account_name": [f"Account {i}" for i in ids],
            "plan": [("pro" if i % 3 == 0 else "free") for i in ids],
        }
        pq.write_table(pa.table(data), path / f"part-{f:03d}.parquet", row_group_size=100_000)
    return str(path / "*.parquet")


def diff_stage(
    spec: SnapshotSpec,
    pattern: str,
    state_pattern: str | None,
    out_dir: str,
    beam_args: list[str],
    buckets: int = DEFAULT_BUCKETS,
):
    """The diff as snapshot-sync runs it, with every change taken as applied (no Close)."""
    started = time.perf_counter()
    p = beam.Pipeline(options=PipelineOptions(beam_args))
    out = p | "DiffSnapshot" >> DiffSnapshot(spec, pattern, "parquet", state_pattern, buckets=buckets)
    applied = (
        out["changes"]
        | "AsApplied" >> beam.Map(lambda c: (c.key, c.fingerprint))
        | "AppliedTables" >> FingerprintTables()
    )
    _ = (applied, out[KEEP]) | "NextState" >> beam.Flatten() | "WriteState" >> WriteFingerprints(out_dir)
    result = p.run()
    result.wait_until_finish()
    return time.perf_counter() - started, summary.collect(result)


def seed_changed(sim: SimServer, spec: SnapshotSpec, rows: int, changed_every: int, limit: int) -> int:
    """Put A's version of the rows B changes into the simulator, as the first run would have left them."""
    leads = []
    for i in range(0, rows, changed_every):
        if len(leads) >= limit:
            break
        values = (f"u{i:08d}", f"user{i}@example.com", f"User {i}", "Engineer", f"acc{i:08d}", f"Account {i}")
        values += ("pro" if i % 3 == 0 else "free",)
        leads.append(diff.new_lead(request_for(spec, values, values[0]), spec.settings, with_contact=True))
    sim.seed({"leads": leads})
    return len(leads)


def peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.02)
    parser.add_argument(
        "--api-rows", type=int, default=None, help="Cap on changed rows sent to the simulator."
    )
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--buckets", type=int, default=DEFAULT_BUCKETS, help="Hash buckets of the diff.")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args, beam_args = parser.parse_known_args()
    changed_every = round(1 / args.changed)

    sim = SimServer(SimConfig(limits_enabled=False))
    sim.start()
    company_cf = sim.create_custom_field("lead", "Company ID")
    user_cf = sim.create_custom_field("contact", "User ID")
    plan_cf = sim.create_custom_field("lead", "Plan")
    config = parse_config(
        {
            "settings": {
                "lead_custom_field_id_for_company_id": company_cf,
                "contact_custom_field_id_for_user_id": user_cf,
            },
            "snapshot": {
                "primary_key": ["user_id"],
                "fields": {
                    "contact_user_id": "user_id",
                    "contact_email": "email",
                    "contact_name": "full_name",
                    "contact_title": "title",
                    "lead_company_id": "account_id",
                    "lead_name": "account_name",
                    "lead_custom_fields": {plan_cf: "plan"},
                },
            },
        }
    )
    spec = SnapshotSpec.from_section(config.snapshot, config.settings_model())
    lines = []
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        a = export(root / "a", args.rows, changed_every, changed=False)
        b = export(root / "b", args.rows, changed_every, changed=True)
        print(f"exports written in {time.perf_counter() - t0:.1f}s")

        state = SnapshotState(str(root / "state"))
        first = state.new_generation()
        secs1, counts1 = diff_stage(spec, a, None, first.path, beam_args, args.buckets)
        state.commit(first, {"primary_key": list(spec.primary_key)})
        print(f"first run diff (all new): {secs1:.1f}s, {args.rows / secs1:,.0f} rows/s, {counts1}")

        secs2, counts2 = diff_stage(spec, b, first.pattern, str(root / "diff-only"), beam_args, args.buckets)
        changed = counts2.get("snapshot_changed", 0)
        print(
            f"second run diff ({changed:,} changed): {secs2:.1f}s, {args.rows / secs2:,.0f} rows/s, {counts2}"
        )
        own, children = peak_mb()
        print(f"peak RSS after diff runs: this process {own:,.0f} MB, largest child {children:,.0f} MB")

        api_line = "API step skipped"
        if not args.skip_api:
            limit = args.api_rows or changed
            seeded = seed_changed(sim, spec, args.rows, changed_every, limit)
            b_api = b
            if args.api_rows and args.api_rows < changed:
                # Only the seeded rows change: B's later changed rows are reverted to A's title.
                b_api = export(root / "b-api", args.rows, changed_every, changed=False)
                table = pq.read_table(b_api.replace("*.parquet", "part-000.parquet"))
                titles = table.column("title").to_pylist()
                for i in range(0, min(len(titles), seeded * changed_every), changed_every):
                    titles[i] = "Head of Things"
                table = table.set_column(3, "title", pa.array(titles))
                pq.write_table(table, b_api.replace("*.parquet", "part-000.parquet"))
            os.environ["CLOSE_API_KEY"] = sim.api_key
            before = sim.stats()["requests_total"]
            t0 = time.perf_counter()
            report = run_snapshot(
                config,
                SnapshotRequest(
                    input=b_api,
                    state=str(root / "state"),
                    close_url=sim.base_url,
                    key_source=KeySource(),
                    buckets=args.buckets,
                    beam_args=tuple(beam_args),
                ),
                show_summary=False,
            )
            secs3 = time.perf_counter() - t0
            calls = sim.stats()["requests_total"] - before
            sent = report.count("requests_sent")
            api_line = (
                f"API step: {sent:,} changed rows sent, {calls:,} calls counted by the simulator "
                f"(incl. start-up validation) = {calls / max(sent, 1):.3f} calls/changed row; "
                f"outcomes updated={report.count('outcome_updated'):,} failed={report.count('outcome_failed'):,}; "
                f"whole run {secs3:.1f}s"
            )
            print(api_line)
        own, children = peak_mb()
    sim.stop()

    command = "bench/snapshot_diff.py " + " ".join(sys.argv[1:])
    lines = [
        f"\n## snapshot-sync diff — {dt.date.today().isoformat()}\n",
        f"`.venv/bin/python {command.strip()}` ({os.cpu_count()} cores, DirectRunner)\n",
        f"- first run diff, {args.rows:,} rows all new: {secs1:.1f}s = {args.rows / secs1:,.0f} rows/s",
        f"- second run diff, {args.rows:,} rows, {changed:,} changed: {secs2:.1f}s = {args.rows / secs2:,.0f} rows/s "
        "(read export + read state + CoGroupByKey + classify + write next state; includes pipeline start-up)",
        f"- {api_line}",
        f"- peak RSS: this process {own:,.0f} MB, largest child process {children:,.0f} MB\n",
    ]
    with open(args.results, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
