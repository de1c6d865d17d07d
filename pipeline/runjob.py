"""`close-sync run`: turn the CLI's choices into a JobShape, check Close, run the graph, report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    PrismRunnerOptions,
    SetupOptions,
    StandardOptions,
)

from closecrm.journal import Recording
from closecrm.model import new_run_id
from closecrm.wiring import DEFAULT_BUDGET_SHARE, DEFAULT_CLOSE_URL, EngineSpec, KeySource
from pipeline import beam_patches, summary
from pipeline.assemble import JobShape, build
from pipeline.config import JobConfig
from pipeline.graph_mode import graph_mode
from pipeline.runners import is_direct, is_prism
from pipeline.sources import SourceOptions
from pipeline.state_location import announce, ledger_location, runs_on_this_machine
from transforms import metrics as m
from transforms.deadletter import letters_path
from transforms.objects import BEAM_OBJECTS

log = logging.getLogger(__name__)

# Where a local run keeps its dead letters when no --dead-letter is given: a folder of its own,
# ./close-sync-runs/<run id>/, relative to the directory the run was started in.
RUNS_DIR = "close-sync-runs"


@dataclass(frozen=True)
class RunRequest:
    """What `close-sync run` was asked to do."""

    source: SourceOptions
    close_url: str = DEFAULT_CLOSE_URL
    key_source: KeySource = KeySource()
    dead_letter_dir: str | None = None
    dead_letter_topic: str | None = None
    audit_log: str | None = None
    dry_run: bool = False
    budget_share: float = DEFAULT_BUDGET_SHARE
    beam_args: tuple[str, ...] = field(default_factory=tuple)
    progress: bool = True  # a periodic progress line on stderr during local runs (--quiet turns it off)
    # --state-location: where the job's state (the created-id ledger) lives; None: the default place
    # (see pipeline/state_location.py).
    state_location: str | None = None
    remember_created_ids: bool = True  # False: created ids live in each writer's memory only
    # Names the run's dead-letter file and stamps its letters and audit lines: its start time and a
    # random part (closecrm.model.new_run_id).
    run_id: str = field(default_factory=new_run_id)
    kafka_reader: str | None = None  # --kafka-reader: python or java; None: the runner's default


def dead_letter_location(request: RunRequest, local: bool) -> str | None:
    """The directory this run's dead letters go to: --dead-letter, else (local runs) a folder of the
    run's own, ``close-sync-runs/<run id>``. A distributed run without --dead-letter has none (its
    workers cannot write to this machine); `launch` refuses it unless letters go to a topic."""
    if request.dead_letter_dir:
        return request.dead_letter_dir
    return os.path.join(RUNS_DIR, request.run_id) if local else None


def dead_letter_file(request: RunRequest, local: bool = True) -> str | None:
    """The file this run's dead letters are written to, or None when they go to a topic only."""
    directory = dead_letter_location(request, local)
    return letters_path(directory, request.run_id) if directory else None


def created_ids_location(request: RunRequest, on_this_machine: bool) -> str | None:
    """The created-id ledger's directory for this run, or None when it is turned off.

    Under the state location (--state-location, else the user's cache), never beside the dead
    letters; a runner whose workers do not run on this machine must be given a shared URL
    (`StateLocationError` otherwise, before anything runs).
    """
    return ledger_location(
        request.state_location,
        request.close_url,
        on_this_machine=on_this_machine,
        enabled=request.remember_created_ids,
    )


def shape_for(
    config: JobConfig,
    request: RunRequest,
    streaming: bool,
    local: bool = False,
    on_this_machine: bool = True,
    in_process: bool = False,
) -> JobShape:
    """The job's graph for ``request``. ``on_this_machine`` says whether the runner's workers share
    this machine's files (runs_on_this_machine; `launch` names it): if not, the state location must
    be a shared URL. ``in_process``: the runner runs the whole job in this process (`runs_in_process`)."""
    options = config.options()
    engine = EngineSpec(
        close_url=request.close_url,
        key_source=request.key_source,
        settings=options.settings,
        budget_share=request.budget_share,
        created_ids=created_ids_location(request, on_this_machine),
        objects=BEAM_OBJECTS,
    )
    return JobShape(
        source=request.source,
        engine=engine,
        options=options,
        shards=options.shards(local),
        fold_processes=options.folders(in_process),
        streaming=streaming,
        dry_run=request.dry_run,
        dead_letter_dir=dead_letter_location(request, local),
        dead_letter_topic=request.dead_letter_topic,
        audit_log=request.audit_log,
        run_id=request.run_id,
    )


def runs_in_process(options: PipelineOptions) -> bool:
    """Whether the runner runs the whole job in this process: the DirectRunner, unless in its
    multi-processing mode (whose workers are processes of their own)."""
    return is_direct(options) and options.view_as(DirectOptions).direct_running_mode != "multi_processing"


def local_runner(options: PipelineOptions, streaming: bool):  # noqa: ANN201
    """On the DirectRunner, pick its engine ourselves: batch runs on the FnApiRunner (the default
    DirectRunner would first try Prism, which downloads a binary), streaming on the bundle-based
    runner (the only local one that reads Pub/Sub). Any other runner is left to Beam."""
    if not is_direct(options):
        return None
    if streaming:
        from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

        return BundleBasedDirectRunner()
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


# Beam's Prism runner: the binary `make engines` builds, or the one $CLOSE_SYNC_PRISM names. Beam itself
# would download a release binary from GitHub when no --prism_location is given; a run never does.
PRISM_ENV = "CLOSE_SYNC_PRISM"
PRISM_BUILT = Path(__file__).resolve().parent.parent / ".cache" / "engines" / "prism" / "prism"


def prism_binary() -> str:
    """The Prism binary a PrismRunner run uses when --prism_location is not given."""
    path = os.environ.get(PRISM_ENV) or str(PRISM_BUILT)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ValueError(
            f"no Prism binary at {path}: run `make engines` (needs go), set ${PRISM_ENV} to one, "
            "or pass --prism_location"
        )
    return path


def beam_options(beam_args: Sequence[str], streaming: bool) -> PipelineOptions:
    """Beam's options from the command line's extra arguments (--runner and the runner's own)."""
    options = PipelineOptions(list(beam_args))
    if is_prism(options) and not options.view_as(PrismRunnerOptions).prism_location:
        options = PipelineOptions([*beam_args, f"--prism_location={prism_binary()}"])
    if streaming:
        options.view_as(StandardOptions).streaming = True
    # DoFns carry their config; keep the main session out of pickling.
    options.view_as(SetupOptions).save_main_session = False
    return options


def pipeline_options(request: RunRequest, streaming: bool) -> PipelineOptions:
    return beam_options(request.beam_args, streaming)


def start(options: PipelineOptions, streaming: bool, graph: Callable[[beam.Pipeline], object]):  # noqa: ANN201
    """Builds ``graph`` for the runner ``options`` name (see local_runner) and starts it; returns Beam's
    PipelineResult. Every job (run, snapshot-sync) starts here, so they run the same way."""
    runner = local_runner(options, streaming)
    p = beam.Pipeline(runner=runner, options=options)
    graph(p)
    with beam_patches.apply_for(runner):  # the local runners' patches of Beam; see that module
        return p.run()


def launch(config: JobConfig, request: RunRequest, *, validate: bool = True):  # noqa: ANN201
    """Checks Close, builds and starts the job; returns Beam's PipelineResult without waiting."""
    from dataclasses import replace

    source = graph_mode(request.source, PipelineOptions(list(request.beam_args)), request.kafka_reader)
    if source.source == "kafka" and source.streaming and source.direct_runner:
        # Beam's bundle-based DirectRunner, its only streaming one, cannot run a splittable DoFn; Prism,
        # which Beam's DirectRunner itself prefers where it can, runs the same graph on this machine.
        log.info("streaming Kafka on the DirectRunner: the job runs on Prism")
        source = replace(source, direct_runner=False)
        request = replace(request, beam_args=(*request.beam_args, "--runner=PrismRunner"))
    request = replace(request, source=source)
    streaming = source.streaming
    options = pipeline_options(request, streaming)
    local = is_direct(options)
    if not local and not request.dead_letter_dir and not request.dead_letter_topic:
        raise ValueError(
            "a run on a distributed runner needs --dead-letter DIR on storage its workers write to "
            "(gs://...) or --dead-letter-topic TOPIC: without either its dead letters would be lost"
        )
    shape = shape_for(
        config,
        request,
        streaming,
        local=local,
        on_this_machine=runs_on_this_machine(options),
        in_process=runs_in_process(options),
    )
    letters = dead_letter_file(request, local)
    if letters and local and os.path.exists(letters):
        raise ValueError(f"{letters} exists already; refusing to write over another run's dead letters")
    announce(shape.engine.created_ids)
    if letters:
        log.info("dead letters: %s", letters)
    if validate:
        asyncio.run(shape.engine.check())
    return start(options, streaming, lambda p: build(p, shape))


def run(config: JobConfig, request: RunRequest, *, validate: bool = True, show_summary: bool = True) -> int:
    """Runs the job to its end; returns the number of events dead-lettered (the CLI's exit status)."""
    from pipeline import plan, progress

    local = is_direct(pipeline_options(request, streaming=False))
    if request.dry_run and show_summary and local and not request.audit_log:
        # the plan is printed from the audit lines; a dry run without --audit-log gets a private one
        import tempfile
        from dataclasses import replace

        request = replace(
            request, audit_log=str(Path(tempfile.mkdtemp(prefix="close-sync-plan-")) / "audit.jsonl")
        )
    with progress.reporting(request.progress and show_summary and local, request.source.input):
        with stopped_by_recording(request.run_id):
            result = launch(config, request, validate=validate)
            result.wait_until_finish()
    if local:
        _tidy_letters(request)
    values = summary.collect(result)
    if show_summary:
        if request.dry_run and local and request.audit_log:
            plan.render_plan(plan.read_audit(request.audit_log))
        summary.render(values, dry_run=request.dry_run)
    return values.get(m.EVENTS_DEAD_LETTERED, 0)


@contextlib.contextmanager
def stopped_by_recording(run_id: str) -> Iterator[None]:
    """A job that failed because it could not append a record ends with that record's one-line error
    (`JournalError`: the file, the reason, the fix), not with the runner's traceback, which Beam's
    DoFn runner would also log."""
    beam_log = logging.getLogger("apache_beam.runners.common")
    beam_log.addFilter(_not_a_journal_error)
    try:
        yield
    except Exception as exc:
        failure = Recording.of(run_id).failure
        if failure is None:
            found = re.search(r"JournalError: (cannot append to [^\n]*)", str(exc))
            if found is None:
                raise
            raise RuntimeError(found.group(1)) from None
        raise failure from None
    finally:
        beam_log.removeFilter(_not_a_journal_error)


def _not_a_journal_error(record: logging.LogRecord) -> bool:
    return "JournalError" not in record.getMessage()


def _tidy_letters(request: RunRequest) -> None:
    """A run without dead letters leaves no empty letters file behind, nor the folder it made for it."""
    path = dead_letter_file(request, local=True)
    if not path or not os.path.isfile(path) or os.path.getsize(path):
        return
    os.remove(path)
    if not request.dead_letter_dir:  # the run's own folder: gone when empty, and so is a runs folder left empty
        for folder in (os.path.dirname(path), RUNS_DIR):
            try:
                os.rmdir(folder)
            except OSError:
                break
