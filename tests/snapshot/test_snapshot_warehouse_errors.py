"""snapshot-sync --from failures: one line that says what to fix, a non-zero exit, nothing sent, nothing in the state."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from tests.servers import free_port

from .helpers import ARROW_SCHEMA, calls, rows, snapshot_config, write_duckdb, write_postgres

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """invoke(*args) → (exit code, the error line, everything printed), with the state at tmp_path/state."""
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    config = snapshot_config(sim, tmp_path)
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    base = [
        "snapshot-sync",
        "--config",
        str(path),
        "--state",
        str(tmp_path / "state"),
        "--close-url",
        sim.base_url,
    ]

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, [*base, *args])
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        return result.exit_code, errors[0] if errors else "", result.output

    return invoke


def _state_files(state: Path) -> list[str]:
    return sorted(str(p.relative_to(state)) for p in state.rglob("*")) if state.exists() else []


def test_postgres_failures_are_one_line_with_the_fix(sim, postgres, cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    url = write_postgres(postgres, "err_users", rows(5))
    state = tmp_path / "state"
    cases = [
        (
            ["--from", url, "--table", "no_such_table"],
            ["--table no_such_table: no such table", "check the name"],
        ),
        (
            ["--from", url, "--query", "SELEC * FROM err_users"],
            ["--query failed", "syntax error", "fix the SQL"],
        ),
        (
            [
                "--from",
                url,
                "--query",
                "SELECT email, full_name, title, account_id, account_name, plan FROM err_users",
            ],
            ["column 'user_id' (for primary_key, contact_user_id) is missing", "fix the input or the config"],
        ),
        (
            ["--from", url, "--table", "err_users", "--since-column", "email"],
            ["--since-column 'email' is string; it must be one of"],
        ),
        (
            [
                "--from",
                f"postgresql://{postgres.user}@127.0.0.1:{free_port()}/postgres",
                "--table",
                "err_users",
            ],
            ["cannot connect to postgresql://", "Connection refused", "check the host, the port"],
        ),
    ]
    for args, expected in cases:
        code, error, output = cli(*args)
        assert code != 0, output
        for part in expected:
            assert part in error, (args, output)
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    code, error, output = cli("--from", url, "--table", "err_users")
    assert code != 0 and "password authentication failed" in error and "$PGPASSWORD" in error, output
    assert calls(sim) == 0 and _state_files(state) == []


def test_a_type_change_between_runs_needs_full(sim, cli, tmp_path: Path) -> None:
    db = tmp_path / "wh.duckdb"
    url = write_duckdb(db, "users", rows(4))
    code, _, output = cli("--from", url, "--table", "users")
    assert code == 0, output
    state = tmp_path / "state"
    before, calls_before = _state_files(state), calls(sim)

    as_int = pa.schema([pa.field("title", pa.int64()) if f.name == "title" else f for f in ARROW_SCHEMA])
    write_duckdb(db, "users", rows(4, title=7), as_int)
    code, error, output = cli("--from", url, "--table", "users")
    assert code != 0, output
    assert "column 'title' was string in the previous run and is integer now" in error
    assert "run once with --full" in error
    assert _state_files(state) == before and calls(sim) == calls_before

    code, _, output = cli("--from", url, "--table", "users", "--full")
    assert code == 0, output


def test_duckdb_failures_are_one_line_with_the_fix(sim, cli, tmp_path: Path) -> None:
    url = write_duckdb(tmp_path / "wh.duckdb", "users", rows(3))
    cases = [
        (["--from", url, "--table", "nope"], ["--table nope: no such table", "check the name"]),
        (["--from", "duckdb:////nowhere/wh.duckdb", "--table", "users"], ["cannot open the DuckDB database"]),
        (
            ["--from", "duckdb://", "--query", "SELECT * FROM read_parquet('/nowhere/*.parquet')"],
            ["--query failed"],
        ),
        (["--from", url], ["--from needs --table NAME or --query SQL"]),
        (["--from", url, "--table", "users", "--query", "SELECT 1"], ["not both"]),
        (["--input", "x/*.parquet", "--from", url], ["--input reads files; --from"]),
        ([], ["nothing to read: give --input GLOB, or --from URL"]),
    ]
    for args, expected in cases:
        code, error, output = cli(*args)
        assert code != 0, output
        for part in expected:
            assert part in error, (args, output)
    assert calls(sim) == 0 and _state_files(tmp_path / "state") == []
