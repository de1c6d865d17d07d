"""Warehouse values the diff must take exactly: nanosecond timestamps (a value, never a crash) and
DECIMAL primary keys (their exact digits, never a float), from Parquet files and from DuckDB."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from closecrm.reverse_etl.snapshot import NanoTimestamp, arrow_values, primary_key_of
from pipeline.snapshot_state import SnapshotState
from transforms.snapshot import state_pairs

from .helpers import ARROW_SCHEMA, rows, snapshot_config, source, sync, write_duckdb, write_parquet

pytestmark = pytest.mark.integration

NO_USER_ID = {  # the key column is not a Close user id here: leads by name, contacts by email
    "contact_email": "email",
    "contact_name": "full_name",
    "lead_name": "account_name",
}
SECOND = 1_000_000_000  # nanoseconds
BASE = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()) * SECOND


def _schema(column: str, arrow_type: pa.DataType) -> pa.Schema:
    return pa.schema([pa.field(column, arrow_type) if f.name == column else f for f in ARROW_SCHEMA])


def _state_keys(state: Path) -> list[str]:
    current = SnapshotState(str(state)).current()
    assert current is not None
    return sorted(
        key for f in Path(current.path).glob("state*.parquet") for key, _ in state_pairs(pq.read_table(f))
    )


def _plan_values(sim: Any, config: Any) -> list[Any]:
    plan_cf = next(iter(config.snapshot.fields["lead_custom_fields"]))
    return sorted(lead.get(f"custom.{plan_cf}") for lead in sim.leads())


def test_a_nanosecond_timestamp_in_a_custom_field_is_a_value(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)  # plan -> a lead custom field
    state, schema = tmp_path / "state", _schema("plan", pa.timestamp("ns"))
    table = rows(4)  # two leads
    for i, row in enumerate(table):
        row["plan"] = BASE + i // 2 * 1000 + (i // 2)  # lead 0: on the second; lead 1: + 1 µs 1 ns
    export = write_parquet(tmp_path / "v1" / "part.parquet", table, schema)
    first = sync(sim, config, export, state, monkeypatch)
    assert first.failed == 0 and first.count("snapshot_new") == 4
    assert _plan_values(sim, config) == ["2026-11-01T00:00:00", "2026-11-01T00:00:00.000001001"]

    table[0]["plan"] = table[1]["plan"] = BASE + 2  # two nanoseconds later: a change, and sent
    export = write_parquet(tmp_path / "v2" / "part.parquet", table, schema)
    second = sync(sim, config, export, state, monkeypatch)
    assert second.failed == 0 and second.count("snapshot_changed") == 2
    assert second.count("snapshot_unchanged") == 2
    assert _plan_values(sim, config) == ["2026-11-01T00:00:00.000000002", "2026-11-01T00:00:00.000001001"]
    assert sync(sim, config, export, state, monkeypatch).count("snapshot_unchanged") == 4


def test_a_duckdb_timestamp_ns_primary_key_keeps_its_nanoseconds(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path, fields=NO_USER_ID)
    state = tmp_path / "state"
    schema = _schema("user_id", pa.timestamp("ns"))
    table = rows(3)
    for i, row in enumerate(table):
        row["user_id"] = BASE + i  # three keys one nanosecond apart; the first on the second
    url = write_duckdb(tmp_path / "wh.duckdb", "users", table, schema)
    first = sync(sim, config, None, state, monkeypatch, source=source(url, table="users"))
    assert first.failed == 0 and first.count("snapshot_new") == 3
    assert first.count("snapshot_duplicate") == 0 and len(sim.contacts()) == 3
    assert _state_keys(state) == [
        '["2026-11-01T00:00:00"]',
        '["2026-11-01T00:00:00.000000001"]',
        '["2026-11-01T00:00:00.000000002"]',
    ]
    again = sync(sim, config, None, state, monkeypatch, source=source(url, table="users"))
    assert again.count("snapshot_unchanged") == 3 and again.failed == 0


KEYS = ["1.00000000000000000001", "1.00000000000000000002", "2.50000000000000000000"]


@pytest.mark.parametrize("where", ["duckdb", "parquet"])
def test_decimal_primary_keys_keep_their_exact_text(sim, tmp_path: Path, monkeypatch, where: str) -> None:
    config = snapshot_config(sim, tmp_path, fields=NO_USER_ID)
    state = tmp_path / "state"
    schema = _schema("user_id", pa.decimal128(38, 20))
    table = rows(3)
    for row, key in zip(table, KEYS, strict=True):
        row["user_id"] = Decimal(key)

    def run():
        if where == "duckdb":
            url = write_duckdb(tmp_path / "wh.duckdb", "users", table, schema)
            return sync(sim, config, None, state, monkeypatch, source=source(url, table="users"))
        return sync(sim, config, write_parquet(tmp_path / "x" / "part.parquet", table, schema), state, monkeypatch)

    first = run()
    assert first.count("snapshot_duplicate") == 0 and first.count("snapshot_rows_invalid") == 0
    assert first.count("snapshot_new") == 3 and first.failed == 0
    assert _state_keys(state) == ["[1.00000000000000000001]", "[1.00000000000000000002]", "[2.5]"]
    again = run()
    assert again.count("snapshot_unchanged") == 3 and again.count("snapshot_duplicate") == 0


def test_arrow_values_reads_nanoseconds_anywhere_a_mapping_takes_them() -> None:
    ns = pa.timestamp("ns")
    cells = pa.chunked_array([pa.array([BASE, BASE + 1_001, None, -1], ns), pa.array([BASE + 7], ns)])
    assert arrow_values(cells) == [
        dt.datetime(2026, 11, 1),  # on a whole microsecond: the datetime it always was (same fingerprint)
        NanoTimestamp("2026-11-01T00:00:00.000001001"),
        None,
        NanoTimestamp("1969-12-31T23:59:59.999999999"),  # before 1970: floored, not truncated
        NanoTimestamp("2026-11-01T00:00:00.000000007"),
    ]
    zoned = pa.array([BASE + 5], pa.timestamp("ns", tz="Europe/Paris"))
    assert arrow_values(zoned) == [NanoTimestamp("2026-11-01T01:00:00.000000005+01:00")]
    lists = pa.array([[BASE + 1, BASE], None, []], pa.list_(ns))
    assert arrow_values(lists) == [[NanoTimestamp("2026-11-01T00:00:00.000000001"), dt.datetime(2026, 11, 1)], None, []]
    assert arrow_values(lists.slice(1)) == [None, []]
    assert arrow_values(pa.array([BASE], ns)) == pa.array([BASE // 1000], pa.timestamp("us")).to_pylist()
    assert primary_key_of((NanoTimestamp("2026-11-01T00:00:00.000000001"), "x"), 2) == (
        '["2026-11-01T00:00:00.000000001","x"]'
    )
