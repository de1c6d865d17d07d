"""snapshot-sync's warehouse graphs build for Dataflow (its dry run: no network, no credentials).

BigQuery is only read on Dataflow (Beam's ReadFromBigQuery), so this graph check is what the tests
can do for it; PostgreSQL and DuckDB also run for real in test_snapshot_warehouse.py.
"""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from closecrm.model import Settings
from closecrm.reverse_etl.snapshot import SnapshotSpec
from closecrm.reverse_etl.warehouse import ReadPlan, Watermark
from closecrm.wiring import EngineSpec, KeySource
from pipeline.config import default_config
from pipeline.snapshot_job import SnapshotShape, build
from tests.pipeline.helpers import DATAFLOW_ARGS

from .helpers import source

SPEC = SnapshotSpec(primary_key=("user_id",), fields={"contact_user_id": "user_id", "contact_email": "email"})
SECRET = "pw-that-must-stay-in-the-environment"


def _shape(plan: ReadPlan, partial: bool) -> SnapshotShape:
    options = default_config().options()
    return SnapshotShape(
        spec=SPEC,
        input=None,
        file_format=None,
        read=plan,
        partial=partial,
        state_pattern="gs://close-sync-test/state/gen-1/state*.parquet",
        out_dir="gs://close-sync-test/state/gen-2",
        engine=EngineSpec(
            "https://api.close.com/api/v1/", KeySource(path="gs://close-sync-test/key"), Settings()
        ),
        options=options,
        shards=options.shards(local=False),
        full=False,
        dry_run=False,
        dead_letter_dir="gs://close-sync-test/dead",
        run_id="20261201T000000Z-graph",
        sample_size=20,
        buckets=16,
    )


@pytest.mark.parametrize(
    ("url", "what", "read_step"),
    [
        ("postgresql://sync@db.internal:5432/analytics", {"table": "public.users"}, "ReadSlice"),
        ("duckdb:///warehouse.duckdb", {"query": "SELECT * FROM users WHERE plan = 'pro'"}, "ReadSlice"),
        ("bigquery://close-sync-test", {"table": "crm.users"}, "ReadFromBigQuery"),
        (
            "bigquery://close-sync-test",
            {"query": "SELECT * FROM crm.users WHERE plan = 'pro'"},
            "ReadFromBigQuery",
        ),
    ],
)
def test_warehouse_graph_builds_for_dataflow(monkeypatch, url: str, what: dict, read_step: str) -> None:
    monkeypatch.setenv("PGPASSWORD", SECRET)
    src = source(url, since_column="updated_at", **what)
    plan = ReadPlan(
        src,
        SPEC.columns,
        1,
        slices=1 if src.dialect == "bigquery" else 8,
        batch_rows=50_000,
        since=Watermark("timestamp", "2026-11-01T00:00:00+00:00"),
    )
    p = beam.Pipeline(options=PipelineOptions(DATAFLOW_ARGS))
    build(p, _shape(plan, partial=True))
    result = p.run()
    assert "JOB_TYPE_BATCH" in str(result.job.proto)
    graph = " ".join(t.unique_name for t in result.job.proto_pipeline.components.transforms.values())
    for step in (
        read_step,
        "BucketRows",
        "JoinWithStateByBucket",
        "DiffBuckets",
        "UpsertToClose",
        "WriteState",
    ):
        assert step in graph
    assert SECRET not in str(result.job.proto) and SECRET not in str(result.job.proto_pipeline)


def test_slice_queries() -> None:
    pg = ReadPlan(
        source("postgresql://sync@db/analytics", table="public.users", since_column="updated_at"),
        ("user_id", "email", "id"),
        1,
        slices=4,
        batch_rows=1000,
        as_text=frozenset({"id"}),
        since=Watermark("timestamp", "2026-11-01T08:00:00+00:00"),
    )
    assert pg.slice_sql(2) == (
        'SELECT "user_id", "email", CAST("id" AS TEXT) AS "id" FROM "public"."users" AS close_sync_source '
        "WHERE (\"updated_at\" >= TIMESTAMPTZ '2026-11-01 08:00:00+00:00' OR \"updated_at\" IS NULL) "
        'AND (coalesce(hashtext("user_id"::text), 0) & 2147483647) % 4 = 2'
    )
    duck = ReadPlan(source("duckdb://", query="SELECT * FROM t;"), ("a", "b"), 2, slices=3, batch_rows=10)
    assert (
        duck.slice_sql(0)
        == 'SELECT "a", "b" FROM (SELECT * FROM t) AS close_sync_source WHERE hash("a", "b") % 3 = 0'
    )
    one = ReadPlan(source("duckdb://", table='we"ird'), ("a",), 1, slices=1, batch_rows=10)
    assert one.slice_sql(0) == 'SELECT "a" FROM "we""ird" AS close_sync_source'
