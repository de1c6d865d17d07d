"""The same graphs build for Dataflow (dry run, no network, no credentials) in batch and streaming."""

from __future__ import annotations

from dataclasses import replace

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from closecrm.events.mapping import DEFAULT_MAPPING, GROUP_PRESET
from closecrm.model import Settings
from closecrm.wiring import EngineSpec, KeySource
from pipeline.assemble import JobShape, build
from pipeline.config import default_config
from pipeline.sources import SourceOptions
from tests.pipeline.helpers import DATAFLOW_ARGS

OPTIONS = replace(default_config().options(), mappings=(DEFAULT_MAPPING, GROUP_PRESET))


def shape(source: SourceOptions, streaming: bool) -> JobShape:
    return JobShape(
        source=source,
        engine=EngineSpec("https://api.close.com/api/v1/", KeySource(path="gs://close-sync-test/key"), Settings()),
        options=OPTIONS,
        shards=OPTIONS.shards(local=False),
        fold_processes=OPTIONS.folders(in_process=False),
        streaming=streaming,
        dry_run=False,
        dead_letter_dir="gs://close-sync-test/dead",
        dead_letter_topic=None,
        audit_log="gs://close-sync-test/audit",
        run_id="20261201T000000Z-000000",
    )


def dry_run(job: JobShape, extra: list[str]) -> beam.runners.runner.PipelineResult:
    p = beam.Pipeline(options=PipelineOptions(DATAFLOW_ARGS + extra))
    build(p, job)
    return p.run()


def step_names(result) -> str:  # noqa: ANN001
    """The transforms of the portable pipeline Dataflow would have been sent."""
    return " ".join(t.unique_name for t in result.job.proto_pipeline.components.transforms.values())


@pytest.mark.parametrize(
    "source",
    [
        SourceOptions(source="files", input="gs://close-sync-test/events/*.jsonl"),
        SourceOptions(source="files", input="gs://close-sync-test/events/*.parquet"),
    ],
)
def test_batch_graph_builds_for_dataflow(source):
    result = dry_run(shape(source, streaming=False), [])
    assert "JOB_TYPE_BATCH" in str(result.job.proto)
    graph = step_names(result)
    # Bounded input parses, drops redeliveries, maps and collapses in one per-person shuffle.
    for stage in (
        "PerPerson/Identify",
        "PerPerson/ParseDedupeMapCollapse",
        "PerPerson/SharedMessageIds",
        "UpsertToClose",
        "WriteDeadLetters",
    ):
        assert stage in graph
    for stage in ("ParseEvents", "MapToUpserts", "CollapsePerPerson"):
        assert stage not in graph


def test_streaming_graph_builds_for_dataflow_from_pubsub():
    source = SourceOptions(source="pubsub", subscription="projects/close-sync-test/subscriptions/events")
    result = dry_run(shape(source, streaming=True), ["--streaming"])
    assert "JOB_TYPE_STREAMING" in str(result.job.proto)
    graph = step_names(result)
    assert "UpsertToClose" in graph
    for stage in ("ParseEvents/DropRedeliveries", "MapToUpserts", "CollapsePerPerson"):
        assert stage in graph
    assert "PerPerson/" not in graph.replace("CollapsePerPerson/", "")
    assert "ReadFromPubSub" in graph or "PubSub" in graph


def test_api_key_is_not_a_pipeline_option(monkeypatch):
    monkeypatch.setenv("CLOSE_API_KEY", "secret_key_value_123")
    source = SourceOptions(source="files", input="gs://close-sync-test/events/*.jsonl")
    result = dry_run(shape(source, streaming=False), [])
    assert "secret_key_value_123" not in str(result.job.proto)
    assert "secret_key_value_123" not in str(result.job.proto_pipeline)
