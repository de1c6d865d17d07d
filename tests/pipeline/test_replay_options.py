"""Replay parses a letter's event with the config's pipeline.max_event_bytes, as the run that wrote it did."""

from __future__ import annotations

import json
from pathlib import Path

from closecrm.credentials import EngineSpec, KeySource
from pipeline.config import parse_config
from pipeline.replay import replay_file


def _letter_file(tmp_path: Path, padding: int) -> str:
    event = {
        "type": "identify",
        "messageId": "m1",
        "userId": "u1",
        "timestamp": "2026-11-01T00:00:00Z",
        "traits": {"email": "u1@example.com", "note": "x" * padding},
    }
    path = tmp_path / "dead-letters.jsonl"
    path.write_text(json.dumps({"stage": "upsert", "reason": "http_500", "event": event}) + "\n")
    return str(path)


def test_an_event_above_the_configured_limit_fails_replay_as_too_large(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLOSE_API_KEY", "test_key_not_real")
    config = parse_config({"pipeline": {"max_event_bytes": 2048}})
    spec = EngineSpec("http://127.0.0.1:9/api/v1/", KeySource(), config.settings_model(), created_ids=None)
    out = tmp_path / "still.jsonl"
    report = replay_file(config, spec, _letter_file(tmp_path, padding=4000), str(out))
    assert (report.letters, report.requests, report.failed) == (1, 0, 1)
    (letter,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert letter["reason"] == "too_large"
