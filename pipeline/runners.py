"""Which runner a run's options name: the local DirectRunner, Prism, or a distributed one."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions


def is_direct(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return runner is None or "direct" in str(runner).lower()


def is_prism(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return str(runner or "").rsplit(".", 1)[-1].lower() == "prismrunner"
