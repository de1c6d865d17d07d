"""Secrets: the API key never reaches logs, dead letters, the audit log, the summary or the pipeline options;
a wrong key fails `close-sync run` at start with one clear line."""

from __future__ import annotations

import json
import logging
import pickle

import pytest

from closecrm.wiring import KeySource
from pipeline.runjob import RunRequest, pipeline_options, run, shape_for
from pipeline.sources import SourceOptions
from tests.cli.helpers_cli import assert_one_line_error, invoke
from tests.pipeline.helpers import write_jsonl
from tests.reliability.rel_helpers import fresh, identify

pytestmark = pytest.mark.integration

KEY = "sk_reliability_Zq7TnX4vLw9PmK2cR8bYdF3hJ6"
FAILING = {  # u_7's requests carry a status Close refuses (400): an upsert-stage dead letter
    "mappings": [
        {"name": "bad status", "trigger": 'userId = "u_7"', "fields": {"lead_status_id": "stat_nope"}},
        {"name": "the rest", "trigger": 'type = "identify" and userId != "u_7"'},
    ]
}


def test_the_api_key_is_in_no_log_dead_letter_audit_line_summary_or_option(
    sim, tmp_path, monkeypatch, caplog, capsys
):
    sim.configure(api_keys=[KEY])
    config, _ = fresh(sim, tmp_path, FAILING)
    events = [identify(u, u % 3, n) for n in range(3) for u in range(10)]
    path = write_jsonl(tmp_path / "events.jsonl", [*events, "{broken json"])
    monkeypatch.setenv("CLOSE_API_KEY", KEY)
    request = RunRequest(
        source=SourceOptions(source="files", input=str(path)),
        close_url=sim.base_url,
        key_source=KeySource(),
        dead_letter_dir=str(tmp_path / "dead"),
        audit_log=str(tmp_path / "audit.jsonl"),
    )
    caplog.set_level(logging.DEBUG)
    dead = run(config, request, show_summary=True)
    out = capsys.readouterr()

    letters = list((tmp_path / "dead").rglob("*"))
    assert dead >= 2 and letters, "the run needs dead letters (a refused request and a bad line) to inspect"
    assert len(sim.contacts()) >= 9, "the run did apply events with this key"
    assert caplog.records, "DEBUG logging captured nothing"
    places: dict[str, str] = {
        "log records": "\n".join(
            f"{r.getMessage()} {r.args!r} {r.__dict__.get('exc_text') or ''}" for r in caplog.records
        ),
        "stdout+stderr (summary)": out.out + out.err,
        "audit log": (tmp_path / "audit.jsonl").read_text(),
        "pipeline options": json.dumps(
            pipeline_options(request, streaming=False).get_all_options(), default=str
        ),
        "request/shape repr": repr(request) + repr(shape_for(config, request, streaming=False)),
        "pickled engine spec": pickle.dumps(shape_for(config, request, streaming=False).engine).decode(
            "latin-1"
        ),
    }
    for f in letters:
        if f.is_file():
            places[f"dead letter {f.name}"] = f.read_text(errors="replace")
    leaked = [where for where, text in places.items() if KEY in text or KEY[8:] in text]
    assert leaked == [], f"the API key appears in: {leaked}"


def test_a_wrong_key_fails_the_run_at_start_with_one_clear_line(sim, tmp_path):
    config_path = tmp_path / "cfg" / "config.yaml"
    fresh(sim, tmp_path / "cfg")
    events = write_jsonl(tmp_path / "events.jsonl", [identify(1, 1, 0)])
    result = invoke(
        [
            "run",
            "--config",
            str(config_path),
            "--source",
            "files",
            "--input",
            str(events),
            "--close-url",
            sim.base_url,
            "--dead-letter",
            str(tmp_path / "dead"),
            "--quiet",
        ],
        env={"CLOSE_API_KEY": "wrong_key_123"},
    )
    line = assert_one_line_error(result, "401", "API key")
    assert "wrong_key_123" not in result.output
    assert sim.contacts() == [] and line
