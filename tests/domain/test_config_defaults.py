"""The config's tuning defaults are declared once, in pipeline/config.py, and reach the job unchanged.

Below the config, graphs and transforms take these values as required arguments (from JobOptions):
a second default for the same knob is how `batch_size` came to be 20,000 in the config and 200 in
three constructors. The scan reads the source (ast), so it also catches a default no test exercises.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from pipeline.config import (
    DISTRIBUTED_WRITER_SHARDS,
    JobOptions,
    PipelineConfig,
    default_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("transforms", "pipeline")
SOURCE_OF_DEFAULTS = "pipeline/config.py"

# Parameter and field names that carry a JobOptions value somewhere below the config.
OPTION_NAMES = frozenset(
    {
        "batch_size",
        "flush_seconds",
        "max_event_bytes",
        "max_bytes",
        "writer_shards",
        "shards",
        "dedupe_seconds",
        "dedupe_ttl_seconds",
        "window_kind",
        "window_seconds",
    }
)

# (file, function or class, name): why a default there is not a second default of a config option.
NOT_OPTIONS = {
    ("transforms/feed.py", "EngineFeed.__init__", "batch_size"): "requests per engine lookup batch (STREAM_BATCH)",
    ("pipeline/sources.py", "ReadParquetRows.__init__", "batch_size"): "rows per Parquet read batch",
}
# Defaults still to be made required. The job passes JobOptions' values to each, so none is in effect;
# tests still build these transforms without them.
NOT_YET_REQUIRED: set[tuple[str, str, str]] = set()


def _defaults(tree: ast.AST) -> list[tuple[str, str]]:
    """(owner, name) for each parameter default and class-level annotated default in a module."""
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, owner: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                name = f"{owner}.{child.name}" if owner else child.name
                for item in child.body:
                    if isinstance(item, ast.AnnAssign) and item.value is not None and isinstance(item.target, ast.Name):
                        found.append((name, item.target.id))
                visit(child, name)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{owner}.{child.name}" if owner else child.name
                args = child.args
                positional = [*args.posonlyargs, *args.args]
                with_default = positional[len(positional) - len(args.defaults) :]
                found.extend((name, a.arg) for a in with_default)
                found.extend((name, a.arg) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d)
                visit(child, name)
            else:
                visit(child, owner)

    visit(tree, "")
    return found


def option_defaults() -> set[tuple[str, str, str]]:
    out = set()
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == SOURCE_OF_DEFAULTS:
                continue
            for owner, name in _defaults(ast.parse(path.read_text(encoding="utf-8"), rel)):
                if name in OPTION_NAMES:
                    out.add((rel, owner, name))
    return out


def test_no_config_option_has_a_second_default_below_the_config() -> None:
    extra = option_defaults() - set(NOT_OPTIONS) - NOT_YET_REQUIRED
    assert not extra, (
        "these re-declare a default of a pipeline option; take it from JobOptions as a required argument "
        f"(the default lives in {SOURCE_OF_DEFAULTS}): {sorted(extra)}"
    )


def test_the_scan_finds_a_second_default(tmp_path: Path) -> None:
    source = (
        "class W:\n"
        "    batch_size: int = 200\n"
        "    def __init__(self, spec, *, flush_seconds=5.0, shards: int = 16):\n"
        "        pass\n"
        "def f(a, max_bytes=65536):\n"
        "    pass\n"
    )
    found = {(owner, name) for owner, name in _defaults(ast.parse(source))}
    assert found >= {("W", "batch_size"), ("W.__init__", "flush_seconds"), ("W.__init__", "shards"), ("f", "max_bytes")}


def test_job_options_carry_the_config_values_and_hold_no_defaults() -> None:
    assert all(f.default is f.default_factory for f in JobOptions.__dataclass_fields__.values())  # both MISSING
    config = parse_config(
        {
            "pipeline": {
                "max_event_bytes": 2048,
                "batch_size": 7,
                "flush_seconds": 0.5,
                "writer_shards": 3,
                "dedupe": {"enabled": True, "seconds": 42},
                "window": {"kind": "fixed", "seconds": 9},
            }
        }
    )
    options = config.options()
    assert (
        options.max_event_bytes,
        options.batch_size,
        options.flush_seconds,
        options.writer_shards,
        options.dedupe_seconds,
        options.window_kind,
        options.window_seconds,
    ) == (2048, 7, 0.5, 3, 42.0, "fixed", 9.0)
    assert options.shards(local=True) == options.shards(local=False) == 3
    assert parse_config({"pipeline": {"dedupe": False}}).options().dedupe_seconds is None


def test_default_options_are_the_pydantic_defaults() -> None:
    options = default_config().options()
    tuning = PipelineConfig()
    assert (options.max_event_bytes, options.batch_size, options.flush_seconds) == (
        tuning.max_event_bytes,
        tuning.batch_size,
        tuning.flush_seconds,
    )
    assert options.dedupe_seconds == tuning.dedupe.seconds
    assert (options.shards(local=True), options.shards(local=False)) == (1, DISTRIBUTED_WRITER_SHARDS)


def test_the_example_config_shows_the_defaults_it_says_it_shows() -> None:
    # Its pipeline section says "these are the defaults except the window".
    example = yaml.safe_load((ROOT / "examples" / "config.example.yaml").read_text(encoding="utf-8"))
    tuning = example["pipeline"]
    defaults = PipelineConfig().model_dump()
    for key, value in tuning.items():
        if key != "window":
            assert value == defaults[key], f"examples/config.example.yaml pipeline.{key}: {value} is not the default"
