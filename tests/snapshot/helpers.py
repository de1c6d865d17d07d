"""Helpers for snapshot-sync tests: a config bound to a simulator, table exports, and a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from closecrm.reverse_etl.warehouse import WarehouseSource
from closecrm.reverse_etl.warehouse_url import PasswordSource, WarehouseURL
from closecrm.wiring import KeySource
from closesim import SimServer
from pipeline.config import JobConfig, load_config
from pipeline.snapshot_job import SnapshotReport, SnapshotRequest, run_snapshot

COLUMNS = ("user_id", "email", "full_name", "title", "account_id", "account_name", "plan", "status")


def snapshot_config(
    sim: SimServer,
    tmp_path: Path,
    *,
    settings: dict[str, Any] | None = None,
    fields: dict[str, Any] | None = None,
) -> JobConfig:
    """A config with a snapshot section over `COLUMNS` whose custom fields exist in the simulator."""
    company_cf = sim.create_custom_field("lead", "Company ID")
    user_cf = sim.create_custom_field("contact", "User ID")
    plan_cf = sim.create_custom_field("lead", "Plan")
    doc: dict[str, Any] = {
        "settings": {
            "lead_custom_field_id_for_company_id": company_cf,
            "contact_custom_field_id_for_user_id": user_cf,
            **(settings or {}),
        },
        "snapshot": {
            "primary_key": ["user_id"],
            "fields": fields
            or {
                "contact_user_id": "user_id",
                "contact_email": "email",
                "contact_name": "full_name",
                "contact_title": "title",
                "lead_company_id": "account_id",
                "lead_name": "account_name",
                "lead_custom_fields": {plan_cf: "plan"},
            },
        },
        "pipeline": {"batch_size": 50, "flush_seconds": 1.0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(str(path))


def rows(n: int, start: int = 0, **overrides: Any) -> list[dict[str, Any]]:
    """n rows; user i works at account i // 2 (two contacts per lead)."""
    out = []
    for i in range(start, start + n):
        row = {
            "user_id": f"u{i:05d}",
            "email": f"user{i}@example.com",
            "full_name": f"User {i}",
            "title": "Engineer",
            "account_id": f"acc{i // 2:05d}",
            "account_name": f"Account {i // 2}",
            "plan": "free",
            "status": None,
        }
        row.update(overrides)
        out.append(row)
    return out


ARROW_SCHEMA = pa.schema([(c, pa.string()) for c in COLUMNS])


def write_parquet(path: Path, table_rows: list[dict[str, Any]], schema: pa.Schema = ARROW_SCHEMA) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(table_rows, schema=schema), path)
    return str(path)


AVRO_SCHEMA = {
    "type": "record",
    "name": "users",
    "fields": [{"name": c, "type": ["null", "string"], "default": None} for c in COLUMNS],
}


def write_avro(path: Path, table_rows: list[dict[str, Any]], schema: dict[str, Any] = AVRO_SCHEMA) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(schema), table_rows)
    return str(path)


def sync(
    sim: SimServer, config: JobConfig, input_glob: str | None, state: Path, monkeypatch, **request: Any
) -> SnapshotReport:
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    req = SnapshotRequest(
        input=input_glob, state=str(state), close_url=sim.base_url, key_source=KeySource(), **request
    )
    return run_snapshot(config, req, show_summary=False)


def calls(sim: SimServer) -> int:
    return int(sim.stats()["requests_total"])


def writes(sim: SimServer) -> int:
    by_endpoint = sim.stats()["by_endpoint"]
    return sum(
        n for endpoint, n in by_endpoint.items() if not endpoint.startswith(("GET", "POST /data/search"))
    )


# --- warehouses ------------------------------------------------------------------------------------


def write_duckdb(
    path: Path, table: str, table_rows: list[dict[str, Any]], schema: pa.Schema = ARROW_SCHEMA
) -> str:
    """Replace ``table`` in the DuckDB file with these rows; returns the file's ``duckdb:///`` URL."""
    import duckdb

    data = pa.Table.from_pylist(table_rows, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.register("close_sync_rows", data)
        con.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM close_sync_rows')
    finally:
        con.close()  # the job opens it read-only, which DuckDB refuses while a writer holds it
    return "duckdb:///" + str(path)  # an absolute path: four slashes


def source(url: str, *, table: str | None = None, query: str | None = None, **kwargs: Any) -> WarehouseSource:
    parsed = WarehouseURL.parse(url)
    password = kwargs.pop("password", PasswordSource(env_var=parsed.default_password_env()))
    return WarehouseSource(url=parsed, table=table, query=query, password=password, **kwargs)


def write_postgres(
    pg: Any, table: str, table_rows: list[dict[str, Any]], schema: pa.Schema = ARROW_SCHEMA
) -> str:
    """Replace ``table`` on the test server (tests.servers.PostgresServer) with these rows; returns its URL."""
    pg.load(table, pa.Table.from_pylist(table_rows, schema=schema))
    return pg.url
