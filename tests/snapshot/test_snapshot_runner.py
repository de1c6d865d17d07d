"""snapshot-sync starts like `run`: the runner and options given as extra arguments, the local runner
chosen the same way, and the writer split into pipeline.writer_shards keys (else per runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
import yaml
from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions
from click.testing import CliRunner

from closecrm.wiring import EngineSpec
from pipeline import runjob, snapshot_job
from pipeline.cli import main
from pipeline.config import DISTRIBUTED_WRITER_SHARDS
from pipeline.snapshot_job import DEFAULT_BUCKETS
from transforms.writer import UpsertToClose

from .helpers import rows, write_parquet


class _Started(Exception):
    """Raised by the stand-in for runjob.start once it has seen what the job would run."""


def _config(tmp_path: Path, pipeline: dict[str, Any] | None = None) -> str:
    doc = {
        "settings": {
            "lead_custom_field_id_for_company_id": "cf_company",
            "contact_custom_field_id_for_user_id": "cf_user",
        },
        "snapshot": {
            "primary_key": ["user_id"],
            "fields": {"contact_user_id": "user_id", "contact_email": "email", "lead_company_id": "account_id"},
        },
        "pipeline": pipeline or {},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _writers(p: beam.Pipeline) -> list[UpsertToClose]:
    found: list[UpsertToClose] = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node) -> None:  # noqa: ANN001
            if isinstance(node.transform, UpsertToClose):
                found.append(node.transform)

    p.visit(Visitor())
    return found


@pytest.fixture
def started(monkeypatch) -> dict[str, Any]:
    """What snapshot-sync hands to runjob.start: Beam's options and the graph it builds."""
    seen: dict[str, Any] = {}

    def fake_start(options, streaming, graph):  # noqa: ANN001, ANN202
        p = beam.Pipeline()  # builds the graph only; nothing runs
        graph(p)
        seen.update(options=options, streaming=streaming, writers=_writers(p))
        raise _Started

    async def no_check(self) -> None:  # noqa: ANN001 - no Close to check against
        return None

    monkeypatch.setattr(runjob, "start", fake_start)
    monkeypatch.setattr(snapshot_job, "start", fake_start)
    monkeypatch.setattr(EngineSpec, "check", no_check)
    monkeypatch.setenv("CLOSE_API_KEY", "test_key_not_real")
    return seen


def _snapshot_sync(tmp_path: Path, config: str, *extra: str) -> None:
    export = write_parquet(tmp_path / "export.parquet", rows(4))
    args = ["snapshot-sync", "--config", config, "--input", export, "--state", str(tmp_path / "state"), *extra]
    result = CliRunner().invoke(main, args, catch_exceptions=False, env={"COLUMNS": "200"})
    assert result.exit_code != 0, result.output  # the stand-in stopped it where the job would start


def test_beam_arguments_reach_the_runner_and_a_distributed_runner_gets_the_distributed_shards(
    tmp_path: Path, started: dict[str, Any]
) -> None:
    _snapshot_sync(
        tmp_path,
        _config(tmp_path),
        "--runner=DataflowRunner",
        "--project=close-sync-test",
        "--region=europe-west1",
        "--state-location=gs://close-sync-test/state",
    )
    options = started["options"]
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).project == "close-sync-test"
    assert options.view_as(GoogleCloudOptions).region == "europe-west1"
    assert started["streaming"] is False
    (writer,) = started["writers"]
    assert writer._shards == DISTRIBUTED_WRITER_SHARDS


def test_the_local_runner_gets_one_writer_shard_by_default(tmp_path: Path, started: dict[str, Any]) -> None:
    _snapshot_sync(tmp_path, _config(tmp_path))
    assert runjob.is_direct(started["options"])
    (writer,) = started["writers"]
    assert writer._shards == 1


@pytest.mark.parametrize(
    "runner", [[], ["--runner=DataflowRunner", "--project=p", "--region=r", "--state-location=gs://b/state"]]
)
def test_writer_shards_and_batch_size_come_from_the_config(
    tmp_path: Path, started: dict[str, Any], runner: list[str]
) -> None:
    config = _config(tmp_path, {"writer_shards": 5, "batch_size": 33, "flush_seconds": 2.5})
    _snapshot_sync(tmp_path, config, *runner)
    (writer,) = started["writers"]
    assert (writer._shards, writer._batch_size, writer._flush_seconds) == (5, 33, 2.5)


def test_a_local_snapshot_sync_runs_on_the_runner_run_uses() -> None:
    options = runjob.beam_options([], streaming=False)
    assert type(runjob.local_runner(options, streaming=False)).__name__ == "FnApiRunner"
    assert runjob.local_runner(runjob.beam_options(["--runner=DataflowRunner"], streaming=False), False) is None


def test_the_buckets_option_defaults_to_the_transforms_default() -> None:
    (option,) = [o for o in main.commands["snapshot-sync"].params if o.name == "buckets"]
    assert option.default == DEFAULT_BUCKETS
