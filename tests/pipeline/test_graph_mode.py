"""The graph follows the read's boundedness: Kafka on Dataflow and Flink, and Pub/Sub anywhere, get the
streaming graph; a local Kafka read is bounded unless --streaming. Checked on the portable pipeline proto
that Dataflow (Beam's dry run, no GCP call) and Flink (graph only) would be given."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.transforms.core import RestrictionProvider

from closecrm.wiring import KeySource
from pipeline.assemble import build
from pipeline.config import default_config
from pipeline.graph_mode import graph_mode
from pipeline.runjob import RunRequest, beam_options, shape_for
from pipeline.sources import SourceOptions
from tests.pipeline.helpers import DATAFLOW_ARGS

FLINK_ARGS = ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--environment_type=LOOPBACK"]
KAFKA = SourceOptions(source="kafka", bootstrap_servers="kafka:9092", kafka_topic="events")
PUBSUB = SourceOptions(source="pubsub", subscription="projects/close-sync-test/subscriptions/events")
FILES = SourceOptions(source="files", input="gs://close-sync-test/events/*.jsonl")
UNBOUNDED = beam_runner_api_pb2.IsBounded.UNBOUNDED


@pytest.mark.parametrize(
    ("source", "args", "reader", "streaming", "kafka_reader"),
    [
        (KAFKA, [], None, False, "python"),
        (KAFKA, ["--streaming"], None, True, "python"),
        (KAFKA, ["--runner=PrismRunner"], None, False, "python"),
        (KAFKA, ["--runner=PrismRunner", "--streaming"], None, True, "python"),
        (KAFKA, ["--runner=DataflowRunner"], None, True, "java"),
        (KAFKA, ["--runner=FlinkRunner"], None, True, "java"),
        (KAFKA, ["--runner=FlinkRunner"], "python", True, "python"),
        (KAFKA, ["--runner=DataflowRunner"], "python", True, "python"),
        (PUBSUB, [], None, True, "python"),
        (PUBSUB, ["--runner=DataflowRunner"], None, True, "python"),
        (FILES, [], None, False, "python"),
        (FILES, ["--streaming"], None, True, "python"),
        (FILES, ["--runner=DataflowRunner"], None, False, "python"),
    ],
)
def test_the_graph_is_streaming_exactly_when_the_read_is_unbounded(source, args, reader, streaming, kafka_reader):
    decided = graph_mode(source, PipelineOptions(args), reader)
    assert decided.streaming is streaming
    assert decided.kafka_reader == kafka_reader


@pytest.mark.parametrize(
    ("source", "args", "reader", "match"),
    [
        (KAFKA, [], "java", "expansion service"),
        (KAFKA, ["--runner=PrismRunner"], "java", "expansion service"),
        (PUBSUB, [], "python", "--source kafka only"),
        (FILES, ["--runner=DataflowRunner"], "java", "--source kafka only"),
        (SourceOptions(source="kafka", bootstrap_servers="k:9092", kafka_topic="t", kafka_partitions_offsets={0: 5}),
         ["--runner=FlinkRunner"], "python", "bounded"),
        (SourceOptions(source="kafka", bootstrap_servers="k:9092", kafka_topic="t", kafka_partitions_offsets={0: 5}),
         ["--streaming"], None, "bounded"),
    ],
)  # fmt: skip
def test_combinations_outside_the_table_are_refused_before_anything_runs(source, args, reader, match):
    with pytest.raises(ValueError, match=match):
        graph_mode(source, PipelineOptions(args), reader)


def pipeline_proto(source: SourceOptions, args: list[str], reader: str | None) -> beam_runner_api_pb2.Pipeline:
    """The job's graph as `launch` builds it for the runner ``args`` name, in portable form."""
    decided = graph_mode(source, PipelineOptions(args), reader)
    options = beam_options(args, decided.streaming)
    request = RunRequest(
        source=decided,
        key_source=KeySource(path="gs://close-sync-test/key"),
        dead_letter_dir="gs://close-sync-test/dead",
        audit_log="gs://close-sync-test/audit.jsonl",
        state_location="gs://close-sync-test/state",
    )
    p = beam.Pipeline(options=options)
    build(p, shape_for(default_config(), request, decided.streaming, local=False, on_this_machine=False))
    assert options.view_as(StandardOptions).streaming is decided.streaming
    return p.to_runner_api()


def writer_timers(proto: beam_runner_api_pb2.Pipeline) -> set[int]:
    """The time domains of the writer's timers (a processing-time flush marks the streaming writer)."""
    for transform in proto.components.transforms.values():
        pardo = transform.spec.urn == common_urns.primitives.PAR_DO.urn
        if pardo and transform.unique_name.startswith("UpsertToClose/ApplyBatches"):
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            return {spec.time_domain for spec in payload.timer_family_specs.values()}
    raise AssertionError("no writer in the graph")


PROCESSING_TIME = beam_runner_api_pb2.TimeDomain.PROCESSING_TIME
PRODUCTION = pytest.mark.parametrize(
    ("runner", "args"), [("dataflow", DATAFLOW_ARGS + ["--streaming"]), ("flink", FLINK_ARGS)]
)


@PRODUCTION
@pytest.mark.parametrize("source", [KAFKA, PUBSUB], ids=["kafka", "pubsub"])
def test_production_runners_get_a_streaming_graph_that_fires(runner, args, source):
    reader = "python" if source is KAFKA else None  # ReadFromKafka would need the Java expansion service here
    proto = pipeline_proto(source, args, reader)
    reads = [
        pc
        for t in proto.components.transforms.values()
        if t.unique_name.startswith("ReadEvents") and not t.subtransforms
        for pc in (proto.components.pcollections[o] for o in t.outputs.values())
    ]
    assert reads and any(pc.is_bounded == UNBOUNDED for pc in reads)
    assert PROCESSING_TIME in writer_timers(proto)  # the writer flushes on processing time, not at the end


def test_the_batch_graph_of_a_local_kafka_read_is_bounded_and_flushes_at_the_end():
    proto = pipeline_proto(KAFKA, [], None)
    assert PROCESSING_TIME not in writer_timers(proto)
    assert all(pc.is_bounded != UNBOUNDED for pc in proto.components.pcollections.values())


def test_the_batch_graph_on_an_unbounded_read_is_refused_by_beam():
    """What `launch` built for Kafka on Flink and Dataflow before the graph followed the read: the batch
    graph's groupings in the global window would never fire, and Beam refuses to build it."""
    request = RunRequest(source=graph_mode(KAFKA, PipelineOptions(["--streaming"]), None))
    p = beam.Pipeline(options=beam_options([], streaming=False))
    with pytest.raises(ValueError, match="unbounded PCollection with global windowing"):
        build(p, shape_for(default_config(), request, streaming=False, local=True))


@PRODUCTION
def test_the_dataflow_dry_run_and_the_flink_graph_name_a_streaming_job(runner, args):
    if runner == "flink":
        options = beam_options(args, graph_mode(KAFKA, PipelineOptions(args), "python").streaming)
        assert options.view_as(StandardOptions).streaming
        return
    decided = graph_mode(KAFKA, PipelineOptions(DATAFLOW_ARGS), "python")
    p = beam.Pipeline(options=beam_options(DATAFLOW_ARGS, decided.streaming))
    request = RunRequest(
        source=decided,
        key_source=KeySource(path="gs://close-sync-test/key"),
        dead_letter_dir="gs://close-sync-test/dead",
        state_location="gs://close-sync-test/state",
    )
    build(p, shape_for(default_config(), request, decided.streaming, local=False, on_this_machine=False))
    result = p.run()
    assert "JOB_TYPE_STREAMING" in str(result.job.proto)


class _Counting(RestrictionProvider):
    def initial_restriction(self, element: str) -> OffsetRange:
        return OffsetRange(0, 3)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: str, restriction: OffsetRange) -> int:
        return restriction.size()


class _Count(beam.DoFn):
    def process(self, element: str, tracker=beam.DoFn.RestrictionParam(_Counting())):
        position = tracker.current_restriction().start
        while tracker.try_claim(position):
            yield position
            position += 1


def test_beams_streaming_direct_runner_still_cannot_run_a_splittable_dofn():
    """Why a streaming Kafka run on the DirectRunner goes to Prism (`runjob.launch`): Beam's bundle-based
    DirectRunner fails on any splittable DoFn. When this test fails, Beam has fixed it."""
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

    p = beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions(streaming=True))
    _ = p | beam.Create(["a"]) | beam.ParDo(_Count())
    with pytest.raises(RuntimeError, match="was not replaced as expected"):
        p.run().wait_until_finish()


@pytest.mark.parametrize(
    ("args", "reader", "commit"),
    [
        (["--runner=PrismRunner", "--streaming"], None, "settled"),
        (["--streaming"], None, "settled"),  # the DirectRunner hands it to Prism
        (["--runner=PrismRunner"], None, "finalize"),  # bounded: commits nothing
        (DATAFLOW_ARGS, "python", "finalize"),
        (FLINK_ARGS, "python", "finalize"),
    ],
)
def test_offsets_are_committed_once_settled_only_where_finalization_is_not_durable(args, reader, commit):
    decided = graph_mode(KAFKA, PipelineOptions(args), reader)
    assert decided.kafka_commit == commit
    labels = {t.unique_name for t in pipeline_proto(KAFKA, args, reader).components.transforms.values()}
    assert any(label.endswith("CommitOffsets") for label in labels) is (commit == "settled")


@pytest.mark.parametrize("source", [PUBSUB, FILES])
def test_other_sources_never_get_the_commit_stage(source):
    labels = {t.unique_name for t in pipeline_proto(source, ["--streaming"], None).components.transforms.values()}
    assert not any("CommitWhenSettled" in label for label in labels)
