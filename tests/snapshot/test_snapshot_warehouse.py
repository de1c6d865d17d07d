"""snapshot-sync straight from a warehouse (a real PostgreSQL server, DuckDB from PyPI) into the simulator.

The same 2%-changed scenario as the file tests: only changed rows reach Close, an unchanged run
writes nothing; a --query sends only its rows; --since-column reads only the rows from the last mark
on (and those where it is NULL).
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.snapshot_state import SnapshotState
from transforms import metrics as m

from .helpers import (
    ARROW_SCHEMA,
    calls,
    rows,
    snapshot_config,
    source,
    sync,
    write_duckdb,
    write_parquet,
    write_postgres,
    writes,
)

pytestmark = pytest.mark.integration

_names = itertools.count()


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """write(rows, schema=…) → URL: replaces this test's table in DuckDB or on the session's PostgreSQL."""
    table = f"users_{next(_names)}"
    if request.param == "postgresql":
        pg = request.getfixturevalue("postgres")
        monkeypatch.setenv("PGPASSWORD", pg.password)

        def write(table_rows: list[dict[str, Any]], schema: pa.Schema = ARROW_SCHEMA) -> str:
            return write_postgres(pg, table, table_rows, schema)

    else:

        def write(table_rows: list[dict[str, Any]], schema: pa.Schema = ARROW_SCHEMA) -> str:
            return write_duckdb(tmp_path / "warehouse.duckdb", table, table_rows, schema)

    write.table = table  # type: ignore[attr-defined]
    write.dialect = request.param  # type: ignore[attr-defined]
    return write


def test_second_run_sends_only_the_changed_rows_and_an_unchanged_run_writes_nothing(
    sim, warehouse, tmp_path: Path, monkeypatch
) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    table = rows(100)
    url = warehouse(table)
    first = sync(sim, config, None, state, monkeypatch, source=source(url, table=warehouse.table))
    assert first.count("snapshot_new") == 100 and first.failed == 0
    assert first.count("snapshot_rows_read") == 100 and first.count("snapshot_slices_read") > 1
    assert len(sim.contacts()) == 100

    table[3]["full_name"] = "Renamed Three"
    table[70]["title"] = "CTO"
    warehouse(table)
    writes_before = writes(sim)
    second = sync(sim, config, None, state, monkeypatch, source=source(url, table=warehouse.table))
    assert second.count("snapshot_changed") == 2 and second.count("snapshot_unchanged") == 98
    assert second.count(m.REQUESTS_SENT) == 2 and second.count(m.OUTCOME_PREFIX + "updated") == 2
    assert writes(sim) - writes_before == 2  # one write per changed row
    assert "Renamed Three" in {c["name"] for c in sim.contacts()}

    writes_before = writes(sim)
    third = sync(sim, config, None, state, monkeypatch, source=source(url, table=warehouse.table))
    assert third.count("snapshot_unchanged") == 100 and third.count(m.REQUESTS_SENT) == 0
    assert writes(sim) == writes_before
    manifest = SnapshotState(str(state)).current().manifest  # type: ignore[union-attr]
    assert manifest["input"].startswith(warehouse.dialect) and manifest["column_kinds"]["user_id"] == "string"


def test_a_query_with_a_where_sends_only_its_rows(sim, warehouse, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    url = warehouse([*rows(10, plan="pro"), *rows(30, start=10)])
    query = f"SELECT * FROM {warehouse.table} WHERE plan = 'pro';"
    report = sync(sim, config, None, tmp_path / "state", monkeypatch, source=source(url, query=query))
    assert report.count("snapshot_rows_read") == 10 and report.count("snapshot_new") == 10
    assert sorted(c["name"] for c in sim.contacts()) == [f"User {i}" for i in range(10)]


def test_since_column_reads_only_rows_from_the_last_mark_on(
    sim, warehouse, tmp_path: Path, monkeypatch
) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    schema = ARROW_SCHEMA.append(pa.field("updated_at", pa.timestamp("us")))
    day = dt.datetime(2026, 11, 1)
    table = [{**row, "updated_at": day + dt.timedelta(minutes=i)} for i, row in enumerate(rows(50))]
    mark = table[-1]["updated_at"]
    url = warehouse(table, schema)

    def run(**kwargs: Any):
        src = source(url, table=warehouse.table, since_column="updated_at")
        return sync(sim, config, None, state, monkeypatch, source=src, **kwargs)

    first = run()
    assert first.count("snapshot_rows_read") == 50 and first.count("snapshot_new") == 50

    later = day + dt.timedelta(days=1)
    table[4].update(title="CTO", updated_at=later)  # changed
    table[5].update(updated_at=later)  # touched, same values: read, unchanged, not sent
    table += [{**row, "updated_at": later} for row in rows(3, start=50)]  # new
    warehouse(table, schema)
    writes_before = writes(sim)
    second = run()
    # The read counter: only the rows from the mark on (u00049 sits on it, unchanged).
    assert second.count("snapshot_rows_read") == 6
    assert (second.count("snapshot_changed"), second.count("snapshot_new")) == (1, 3)
    assert second.count("snapshot_unchanged") == 2
    assert second.count("snapshot_unread") == 47 and second.count("snapshot_gone") == 0
    assert second.count("snapshot_state_rows") == 53  # unread rows keep their fingerprints
    assert second.since == mark.isoformat()
    # The changed contact; for the new rows (u50 and u51 share a lead) two leads, created with their
    # contacts nested (u51's in u50's lead).
    assert writes(sim) - writes_before == 1 + 2

    third = run()  # the rows on the new mark are read again, and found unchanged
    assert third.count("snapshot_rows_read") == 5 and third.count("snapshot_state_rows") == 53
    assert third.count(m.REQUESTS_SENT) == 0

    # --full reads the whole table again and finds nothing to change.
    full = run(full=True)
    assert full.count("snapshot_rows_read") == 53 and full.count("snapshot_resync") == 53


def test_since_column_never_loses_a_row_on_the_mark_or_a_null(
    sim, warehouse, tmp_path: Path, monkeypatch
) -> None:
    """A DATE column: a row changed later on the mark's day, a new row carrying the mark's value, and
    rows whose column is NULL (one changed, one new) all reach Close; the diff, not the mark, decides."""
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    schema = ARROW_SCHEMA.append(pa.field("updated_on", pa.date32()))
    day = dt.date(2026, 11, 2)
    table = [{**row, "updated_on": day - dt.timedelta(days=1)} for row in rows(6)]
    table[1]["updated_on"] = day  # the mark: the latest day the first run sees
    table[2]["updated_on"] = table[3]["updated_on"] = None  # never stamped
    url = warehouse(table, schema)

    def run():
        src = source(url, table=warehouse.table, since_column="updated_on")
        return sync(sim, config, None, state, monkeypatch, source=src)

    first = run()
    assert first.count("snapshot_new") == 6 and first.failed == 0

    table[1]["title"] = "Changed later the same day"  # its date stays on the mark
    table[2]["title"] = "Changed, date still NULL"
    table.append({**rows(1, start=6)[0], "updated_on": day})  # new, with the mark's value
    table.append({**rows(1, start=7)[0], "updated_on": None})  # new, never stamped
    warehouse(table, schema)
    second = run()
    assert second.since == day.isoformat()
    assert second.count("snapshot_rows_read") == 5  # on the mark (2) and NULL (3), not the 3 before it
    assert (second.count("snapshot_changed"), second.count("snapshot_new")) == (2, 2)
    assert second.count("snapshot_unchanged") == 1 and second.count("snapshot_unread") == 3
    assert second.failed == 0 and second.count("snapshot_state_rows") == 8
    titles = {c["name"]: c.get("title") for c in sim.contacts()}
    assert titles["User 1"] == "Changed later the same day"
    assert titles["User 2"] == "Changed, date still NULL"
    assert {"User 6", "User 7"} <= set(titles)


def test_duckdb_in_memory_reads_files_with_the_same_fingerprints_as_the_file_path(
    sim, tmp_path: Path, monkeypatch
) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    write_parquet(tmp_path / "export" / "part-0.parquet", rows(12))
    write_parquet(tmp_path / "export" / "part-1.parquet", rows(8, start=12))
    first = sync(sim, config, str(tmp_path / "export" / "*.parquet"), state, monkeypatch)
    assert first.count("snapshot_new") == 20

    before = calls(sim)
    query = f"SELECT * FROM read_parquet('{tmp_path}/export/*.parquet')"
    second = sync(sim, config, None, state, monkeypatch, source=source("duckdb://", query=query))
    assert second.count("snapshot_rows_read") == 20 and second.count("snapshot_unchanged") == 20
    assert calls(sim) - before == 3  # the start-up checks only


def test_a_run_with_failed_rows_keeps_its_mark_so_they_are_read_again(
    sim, tmp_path: Path, monkeypatch
) -> None:
    fields = {"contact_user_id": "user_id", "contact_email": "email", "lead_status_id": "status"}
    config = snapshot_config(sim, tmp_path, fields=fields)
    state, db = tmp_path / "state", tmp_path / "wh.duckdb"
    schema = ARROW_SCHEMA.append(pa.field("updated_at", pa.int64()))  # a growing version number
    table = [{**row, "updated_at": 1} for row in rows(5)]

    def run():
        url = write_duckdb(db, "users", table, schema)
        src = source(url, table="users", since_column="updated_at")
        report = sync(sim, config, None, state, monkeypatch, source=src)
        mark = SnapshotState(str(state)).current().manifest["source"]["high_water_mark"]  # type: ignore[union-attr]
        return report, mark

    table[0]["updated_at"] = 0  # below the mark: not read again
    assert run()[1] == {"kind": "integer", "value": "1"}
    table[2].update(status="stat_doesnotexist", updated_at=2)
    failed, mark = run()
    assert failed.count(m.OUTCOME_PREFIX + "failed") == 1 and mark["value"] == "1"
    table[2].update(status=sim.statuses()[1]["id"])  # fixed, without touching updated_at
    fixed, mark = run()
    assert fixed.count("snapshot_rows_read") == 4 and fixed.count("snapshot_unread") == 1
    assert fixed.count(m.OUTCOME_PREFIX + "updated") == 1 and fixed.count(m.REQUESTS_SENT) == 1
    assert mark["value"] == "2"


def test_postgres_types_without_a_plain_arrow_type_are_read_as_text(
    sim, postgres, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    postgres.execute(
        "DROP TABLE IF EXISTS typed_users",
        "CREATE TABLE typed_users (user_id uuid PRIMARY KEY, email text, seats numeric(10, 2), updated_at timestamptz)",
        "INSERT INTO typed_users SELECT gen_random_uuid(), 'user' || i || '@example.com', i * 1.5, "
        "timestamptz '2026-11-01 00:00:00+00' FROM generate_series(1, 5) AS i",
    )
    fields = {"contact_user_id": "user_id", "contact_email": "email", "contact_title": "seats"}
    config = snapshot_config(sim, tmp_path, fields=fields)
    src = source(postgres.url, table="typed_users", since_column="updated_at")
    first = sync(sim, config, None, tmp_path / "state", monkeypatch, source=src)
    assert first.count("snapshot_new") == 5 and first.failed == 0
    assert sorted(c["title"] for c in sim.contacts()) == ["1.50", "3.00", "4.50", "6.00", "7.50"]

    postgres.execute(
        "UPDATE typed_users SET seats = 99, updated_at = now() WHERE email = 'user2@example.com'"
    )
    second = sync(sim, config, None, tmp_path / "state", monkeypatch, source=src)
    # The changed row and the rows on the mark, which the diff finds unchanged.
    assert second.count("snapshot_rows_read") == 5 and second.count(m.OUTCOME_PREFIX + "updated") == 1
    assert second.count(m.REQUESTS_SENT) == 1
    assert "99.00" in {c["title"] for c in sim.contacts()}


def test_dry_run_from_a_warehouse_writes_a_plan_and_nothing_else(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    url = write_duckdb(tmp_path / "wh.duckdb", "users", rows(3))
    plan = tmp_path / "plan"
    report = sync(
        sim,
        config,
        None,
        tmp_path / "state",
        monkeypatch,
        source=source(url, table="users"),
        dry_run=True,
        plan_dir=str(plan),
    )
    assert report.count("snapshot_new") == 3 and report.source == f"{url} table users"
    assert len([line for f in plan.glob("changes*.jsonl") for line in f.read_text().splitlines()]) == 3
    assert writes(sim) == 0 and not (tmp_path / "state").exists()
