"""Helpers for pipeline tests: a config bound to a simulator, event files, and a run."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from closecrm.wiring import KeySource
from closesim import SimServer
from pipeline.config import JobConfig, load_config
from pipeline.runjob import RunRequest, run
from pipeline.sources import SourceOptions

# A Dataflow graph check that needs no network or project: the job is built and validated, not submitted.
DATAFLOW_ARGS = [
    "--runner=DataflowRunner",
    "--dry_run=True",
    "--no_auth",
    "--project=close-sync-test",
    "--region=us-central1",
    "--temp_location=gs://close-sync-test/tmp",
    "--staging_location=gs://close-sync-test/staging",
]


def sim_config(sim: SimServer, tmp_path: Path, extra: dict[str, Any] | None = None) -> tuple[JobConfig, dict]:
    """A config whose custom fields exist in the simulator; returns it and the cf ids."""
    company_cf = sim.create_custom_field("lead", "Company ID")
    user_cf = sim.create_custom_field("contact", "User ID")
    doc: dict[str, Any] = {
        "settings": {
            "lead_custom_field_id_for_company_id": company_cf,
            "contact_custom_field_id_for_user_id": user_cf,
        },
        "pipeline": {"batch_size": 50, "flush_seconds": 1.0},
    }
    doc.update(extra or {})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(str(path)), {"company": company_cf, "user": user_cf}


def write_jsonl(path: Path, rows: Iterable[Any], gz: bool = False) -> Path:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(lines)
    else:
        path.write_text(lines)
    return path


def run_files(
    sim: SimServer,
    config: JobConfig,
    input_glob: str,
    tmp_path: Path,
    monkeypatch,
    **request: Any,
) -> int:
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    req = RunRequest(
        source=SourceOptions(source="files", input=input_glob),
        close_url=sim.base_url,
        key_source=KeySource(),
        dead_letter_dir=str(tmp_path / "dead"),
        **request,
    )
    return run(config, req, show_summary=False)


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def letters_in(directory: Path) -> list[dict]:
    """The dead letters of every run that wrote to ``directory`` (one dead-letters-<run id>.jsonl each)."""
    return [letter for path in letter_files(directory) for letter in read_lines(path)]


def letter_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("dead-letters-*.jsonl"))


class FakeState:
    """A value-state cell for driving a stateful DoFn's process() directly (read, write, clear)."""

    def __init__(self) -> None:
        self.value: Any = None

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value

    def clear(self) -> None:
        self.value = None
