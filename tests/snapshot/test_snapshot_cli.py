"""The snapshot-sync command: wiring, exit status, and a schema error shown as one message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main

from .helpers import rows, snapshot_config, write_parquet

pytestmark = pytest.mark.integration


def _config_file(sim, tmp_path: Path) -> str:
    config = snapshot_config(sim, tmp_path)
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    return str(path)


def test_cli_runs_a_sync_and_prints_the_summary(sim, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    args = [
        "--config",
        _config_file(sim, tmp_path),
        "--state",
        str(tmp_path / "state"),
        "--close-url",
        sim.base_url,
    ]
    export = write_parquet(tmp_path / "v1.parquet", rows(4))
    result = CliRunner().invoke(main, ["snapshot-sync", *args, "--input", export])
    assert result.exit_code == 0, result.output
    assert "snapshot-sync summary" in result.output and len(sim.contacts()) == 4

    drifted = tmp_path / "drift.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user_id": ["u1"]}), drifted)
    result = CliRunner().invoke(main, ["snapshot-sync", *args, "--input", str(drifted)])
    assert result.exit_code != 0 and "column 'email' (for contact_email) is missing" in result.output
