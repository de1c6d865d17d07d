"""--from URLs, where the source comes from (flags over the config), high-water marks read back from the
state, and the diff of an incremental read (no servers)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from closecrm.reverse_etl.snapshot import diff_bucket
from closecrm.reverse_etl.warehouse import Watermark
from closecrm.reverse_etl.warehouse_url import WarehouseURL, WarehouseURLError
from pipeline.config import parse_config
from pipeline.snapshot_job import warehouse_source


@pytest.mark.parametrize(
    ("url", "dialect", "database", "masked"),
    [
        ("duckdb:///warehouse.duckdb", "duckdb", "warehouse.duckdb", "duckdb:///warehouse.duckdb"),
        ("duckdb:////data/wh.duckdb", "duckdb", "/data/wh.duckdb", "duckdb:////data/wh.duckdb"),
        ("duckdb://", "duckdb", None, "duckdb://"),
        ("duckdb:///:memory:", "duckdb", None, "duckdb://"),
        (
            "postgresql://sync@db:5432/analytics",
            "postgresql",
            "analytics",
            "postgresql://sync@db:5432/analytics",
        ),
        ("postgres://sync@db/analytics", "postgresql", "analytics", "postgresql://sync@db/analytics"),
        ("bigquery://my-project", "bigquery", "my-project", "bigquery://my-project"),
    ],
)
def test_urls(url: str, dialect: str, database: str | None, masked: str) -> None:
    parsed = WarehouseURL.parse(url)
    assert (parsed.dialect, parsed.database, parsed.masked()) == (dialect, database, masked)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "expected duckdb:///FILE"),
        ("warehouse.duckdb", "expected duckdb:///FILE"),
        ("duckdb://host/file", "three slashes"),
        ("postgresql:///db", "no host given"),
        ("postgresql://u@h:port/db", "the port is not a number"),
        ("bigquery://", "expected bigquery://PROJECT"),
        ("postgresql://u:@h/db", "holds a password"),
    ],
)
def test_unusable_urls(url: str, message: str) -> None:
    with pytest.raises(WarehouseURLError, match=message):
        WarehouseURL.parse(url)


def _config(source: dict | None = None):
    snapshot: dict = {"primary_key": ["user_id"], "fields": {"contact_email": "email"}}
    if source:
        snapshot["source"] = source
    return parse_config({"snapshot": snapshot})


def test_flags_override_the_config_source() -> None:
    config = _config(
        {
            "url": "postgresql://sync@db/analytics",
            "table": "users",
            "since_column": "updated_at",
            "password_env": "WH_PW",
        }
    )
    from_config = warehouse_source(config)
    assert (
        from_config is not None and from_config.table == "users" and from_config.password.env_var == "WH_PW"
    )
    assert from_config.since_column == "updated_at"
    flagged = warehouse_source(config, url="duckdb://", query="SELECT 1 AS user_id", password_file="/run/pw")
    assert flagged is not None and flagged.dialect == "duckdb" and flagged.table is None
    assert (flagged.password.path, flagged.password.env_var) == ("/run/pw", None)
    assert warehouse_source(config, input_glob="x/*.parquet") is None
    default_env = warehouse_source(_config(), url="postgresql://sync@db/analytics", table="t")
    assert default_env is not None and default_env.password.env_var == "PGPASSWORD"
    assert config.options().snapshot_slices == 4 and config.options().snapshot_batch_rows == 100_000


@pytest.mark.parametrize(
    "stored",
    [
        {"kind": "timestamp", "value": "2026-11-01'; DROP TABLE users; --"},
        {"kind": "integer", "value": "1 OR 1=1"},
        {"kind": "string", "value": "x"},
        {"kind": "float", "value": "nan"},
        {"kind": "decimal", "value": "Infinity"},
        "2026-11-01",
        None,
    ],
)
def test_a_stored_mark_that_does_not_parse_is_ignored(stored) -> None:
    assert Watermark.from_json(stored) is None  # the run then reads the whole table


def test_marks_render_as_typed_literals() -> None:
    assert Watermark("integer", "42").literal("postgresql") == "42"
    assert Watermark("date", "2026-11-01").literal("duckdb") == "DATE '2026-11-01'"
    assert (
        Watermark("timestamp", "2026-11-01T08:00:00").literal("duckdb") == "TIMESTAMP '2026-11-01 08:00:00'"
    )
    aware = Watermark("timestamp", "2026-11-01T08:00:00+00:00")
    assert aware.literal("postgresql") == "TIMESTAMPTZ '2026-11-01 08:00:00+00:00'"
    assert aware.literal("bigquery") == "TIMESTAMP '2026-11-01 08:00:00+00:00'"


def test_an_incremental_diff_keeps_the_keys_it_did_not_read() -> None:
    old_keys = pa.array(["a", "b", "c"], pa.string())
    old_fps = pa.array([b"1", b"2", b"3"], pa.binary())
    keys, fps = pa.array(["b", "d"], pa.string()), pa.array([b"2x", b"4"], pa.binary())

    partial = diff_bucket(keys, fps, old_keys, old_fps, partial=True)
    assert partial.gone == [] and partial.counts["unread"] == 2
    assert dict(zip(partial.keep_keys.to_pylist(), partial.keep_fingerprints.to_pylist(), strict=True)) == {
        "a": b"1",
        "c": b"3",
    }
    assert sorted(kind for _, kind, _ in partial.changes) == ["changed", "new"]

    whole = diff_bucket(keys, fps, old_keys, old_fps)
    assert sorted(whole.gone) == ["a", "c"] and whole.counts["unread"] == 0 and len(whole.keep_keys) == 0
