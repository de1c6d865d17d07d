"""`close-sync replay`: re-send a dead-letter file through the engine, bypassing identical-request suppression."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from closecrm.created_ids import ledger_dir
from closecrm.credentials import EngineSpec
from closecrm.events import BadEvent, parse_event
from closecrm.mapping import compile_mappings, map_event
from closecrm.model import DeadLetter, UpsertRequest
from pipeline.config import JobConfig

BATCH = 200


@dataclass
class ReplayReport:
    letters: int = 0
    requests: int = 0
    outcomes: Counter = field(default_factory=Counter)
    failed: int = 0

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return f"replayed {self.letters} letter(s) as {self.requests} request(s): {kinds or 'nothing to send'}"


def _requests_of(letter: dict[str, Any], compiled: list, max_event_bytes: int) -> list[UpsertRequest]:
    """The request a letter carries, else the requests its original event maps to now."""
    if letter.get("request"):
        return [UpsertRequest.from_json(letter["request"])]
    event = letter.get("event")
    events = event if isinstance(event, list) else [event]
    out: list[UpsertRequest] = []
    for raw in events:
        if raw is not None:
            out.extend(map_event(parse_event(raw, max_event_bytes), compiled))
    return out


def replay_file(config: JobConfig, spec: EngineSpec, path: str, out_path: str | None) -> ReplayReport:
    """Replays a dead-letter file. Without a ledger of its own, ``spec`` gets the created-id ledger
    that sits next to the file (where the run that wrote it kept its own, by default)."""
    if spec.created_ids is None:
        spec = replace(spec, created_ids=ledger_dir(os.path.dirname(os.path.abspath(path)), spec.close_url))
    options = config.options()
    compiled = compile_mappings(options.mappings)
    report = ReplayReport()
    pending: list[tuple[dict[str, Any], UpsertRequest]] = []
    still_dead: list[DeadLetter] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            report.letters += 1
            letter = json.loads(line)
            try:
                pending.extend((letter, r) for r in _requests_of(letter, compiled, options.max_event_bytes))
            except BadEvent as exc:
                report.failed += 1
                report.outcomes["failed"] += 1
                still_dead.append(
                    DeadLetter(stage="replay", reason=exc.reason, event=letter.get("event"),
                               attempts=int(letter.get("attempts") or 0) + 1,
                               event_ids=tuple(letter.get("event_ids") or ()))
                )
    report.requests = len(pending)
    unconfirmed = [r for letter, r in pending if _was_ambiguous(letter)]
    outcomes = asyncio.run(_apply(spec, [r for _, r in pending], unconfirmed))
    for (letter, request), outcome in zip(pending, outcomes, strict=True):
        report.outcomes[outcome.kind] += 1
        if outcome.kind == "failed":
            report.failed += 1
            still_dead.append(
                DeadLetter(
                    stage="replay",
                    reason=outcome.reason or "failed",
                    event=letter.get("event"),
                    request=request.to_json(),
                    error={"http_status": outcome.http_status, "body": outcome.error_body},
                    attempts=int(letter.get("attempts") or 0) + outcome.attempts,
                    event_ids=request.event_ids,
                )
            )
    if out_path and still_dead:
        with open(out_path, "w", encoding="utf-8") as fh:
            for letter in still_dead:
                fh.write(json.dumps(letter.to_json(), sort_keys=True, default=str) + "\n")
    return report


def _was_ambiguous(letter: dict[str, Any]) -> bool:
    """A create whose answer was lost may have happened: the replay must look before creating."""
    return str(letter.get("reason", "")).startswith("ambiguous")


async def _apply(spec: EngineSpec, requests: list[UpsertRequest], unconfirmed: list[UpsertRequest]):
    client, engine = spec.build()
    for request in unconfirmed:
        engine.expect_unconfirmed(request)
    try:
        outcomes = []
        for start in range(0, len(requests), BATCH):
            outcomes.extend(await engine.upsert_batch(requests[start : start + BATCH]))
        return outcomes
    finally:
        await client.aclose()
