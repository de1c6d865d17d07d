"""`close-sync replay`: apply dead letters again with the config given now, bypassing identical-request
suppression.

Each letter's original event is mapped again with the config it is given, so a fixed mapping, custom
field or setting takes effect; the request stored in the letter is sent only when the letter carries no
event (or not all of the events its request was made from). Letters that fail again go to a new file,
never over the input.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from closecrm.created_ids import ledger_dir, user_cache_root
from closecrm.credentials import EngineSpec
from closecrm.events import BadEvent, opted_out, parse_event
from closecrm.mapping import compile_mappings, map_event
from closecrm.model import LETTERS_PREFIX, DeadLetter, UpsertRequest, new_run_id, utc_now_text
from pipeline.config import JobConfig

BATCH = 200
STILL_FAILING_PREFIX = "still-failing-"  # replay's own failures: still-failing-<replay id>.jsonl


@dataclass
class ReplayReport:
    letters: int = 0
    requests: int = 0
    remapped: int = 0  # letters whose events were mapped again with the config given
    as_stored: int = 0  # letters sent as the request they stored (no events, or not all of them)
    outcomes: Counter = field(default_factory=Counter)
    failed: int = 0
    fields_dropped: int = 0
    still_failing: str | None = None  # where the letters that failed again were written

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        how = f"{self.remapped} re-mapped with this config, {self.as_stored} as stored"
        dropped = f"; {self.fields_dropped} value(s) left out as unusable" if self.fields_dropped else ""
        return (
            f"replayed {self.letters} letter(s) ({how}) as {self.requests} request(s): "
            f"{kinds or 'nothing to send'}{dropped}"
        )


def letter_files(path: str) -> list[str]:
    """The dead-letter files to replay: ``path`` itself, or in a folder every run's letters file
    (``dead-letters-*.jsonl``, and the ``dead-letters.jsonl`` older runs wrote), oldest run first.
    Files that earlier replays wrote (``still-failing-*``) are replayed only when named."""
    if not os.path.isdir(path):
        return [path]
    found = sorted(glob.glob(os.path.join(glob.escape(path), LETTERS_PREFIX + "*.jsonl")))
    legacy = os.path.join(path, "dead-letters.jsonl")
    if os.path.isfile(legacy):
        found.insert(0, legacy)
    if not found:
        raise ValueError(f"{path} holds no dead-letter file (dead-letters-*.jsonl); name the file to replay")
    return found


def still_failing_path(inputs: list[str], replay_id: str, out_path: str | None) -> str:
    """Where letters that fail again go: --out, else a new file beside the input; never an existing file."""
    if out_path is None:
        out_path = os.path.join(os.path.dirname(inputs[0]), f"{STILL_FAILING_PREFIX}{replay_id}.jsonl")
    target = os.path.abspath(out_path)
    if any(os.path.abspath(i) == target for i in inputs) or os.path.exists(target):
        raise ValueError(f"--out {out_path} exists already; replay never writes over a file (give a new name)")
    return out_path


def replay_path(config: JobConfig, spec: EngineSpec, path: str, out_path: str | None = None) -> ReplayReport:
    """Replays a dead-letter file, or every run's letters in a folder (`letter_files`).

    Without a ledger of its own, ``spec`` gets the created-id ledger the run kept: beside the letters
    when the run was given --dead-letter (the ledger sits there then), else the user's cache, where a
    local run without --dead-letter keeps it.
    """
    inputs = letter_files(path)
    replay_id = new_run_id()
    target = still_failing_path(inputs, replay_id, out_path)
    if spec.created_ids is None:
        beside = os.path.dirname(os.path.abspath(inputs[0]))
        root = beside if os.path.isdir(os.path.join(beside, "created-ids")) else user_cache_root()
        spec = replace(spec, created_ids=ledger_dir(root, spec.close_url))
    options = config.options()
    compiled = compile_mappings(options.mappings)
    report = ReplayReport()
    pending: list[tuple[dict[str, Any], UpsertRequest]] = []
    still_dead: list[DeadLetter] = []
    for name in inputs:
        for letter in _letters(name):
            report.letters += 1
            try:
                requests, remapped = _requests_of(letter, compiled, options.max_event_bytes)
            except BadEvent as exc:
                report.failed += 1
                report.outcomes["failed"] += 1
                still_dead.append(_again(letter, exc.reason))
                continue
            if remapped:
                report.remapped += 1
            else:
                report.as_stored += 1
            if not requests:
                report.outcomes["skipped"] += 1  # opted out, or no mapping matches the event now
            report.fields_dropped += sum(len(r.dropped) for r in requests)
            pending.extend((letter, r) for r in requests)
    report.requests = len(pending)
    unconfirmed = [r for letter, r in pending if _was_ambiguous(letter)]
    outcomes = asyncio.run(_apply(spec, [r for _, r in pending], unconfirmed)) if pending else []
    for (letter, request), outcome in zip(pending, outcomes, strict=True):
        report.outcomes[outcome.kind] += 1
        if outcome.kind == "failed":
            report.failed += 1
            still_dead.append(
                _again(
                    letter,
                    outcome.reason or "failed",
                    request=request.to_json(),
                    error={"http_status": outcome.http_status, "body": outcome.error_body},
                    attempts=outcome.attempts,
                    event_ids=request.event_ids,
                )
            )
    if still_dead:
        with open(target, "x", encoding="utf-8") as fh:
            for letter in still_dead:
                record = {**letter.to_json(), "run_id": replay_id, "time": utc_now_text()}
                fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        report.still_failing = target
    return report


def replay_file(config: JobConfig, spec: EngineSpec, path: str, out_path: str | None = None) -> ReplayReport:
    """`replay_path` under its earlier name (a file or a folder alike)."""
    return replay_path(config, spec, path, out_path)


def _letters(path: str):  # noqa: ANN202 - yields the letters of one file
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                letter = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}, line {n}: not a dead letter ({exc})") from None
            if not isinstance(letter, dict):
                raise ValueError(f"{path}, line {n}: not a dead letter (a JSON object per line)")
            yield letter


def _again(letter: dict[str, Any], reason: str, **more: Any) -> DeadLetter:
    """A letter that failed again: the original event and where it was read, with replay's reason."""
    attempts = int(letter.get("attempts") or 0) + int(more.pop("attempts", 1))
    return DeadLetter(
        stage="replay",
        reason=reason,
        event=letter.get("event"),
        request=more.pop("request", letter.get("request")),
        error=more.pop("error", None),
        attempts=attempts,
        event_ids=tuple(more.pop("event_ids", None) or letter.get("event_ids") or ()),
        source=letter.get("source"),
    )


def _events_of(letter: dict[str, Any]) -> list[Any]:
    event = letter.get("event")
    events = event if isinstance(event, list) else [event]
    return [e for e in events if e is not None]


def _requests_of(
    letter: dict[str, Any], compiled: list, max_event_bytes: int
) -> tuple[list[UpsertRequest], bool]:
    """The requests a letter's original events map to with this config (and True); the request it
    stored (and False) when it carries no event, or not every event that request was made from (a
    collapsed request's letter carries at most 20, and mapping only those would leave out what the
    later ones said). `BadEvent` when an event cannot be used (parsed with this config's limits)."""
    events = _events_of(letter)
    stored = letter.get("request")
    if not events:
        if not stored:
            raise BadEvent("nothing_to_replay", "the letter holds neither an event nor a request")
        return [UpsertRequest.from_json(stored)], False
    parsed = [parse_event(raw, max_event_bytes) for raw in events]
    if stored and not set(letter.get("event_ids") or ()) <= {event.message_id for event in parsed}:
        return [UpsertRequest.from_json(stored)], False
    out: list[UpsertRequest] = []
    for event in parsed:
        if not opted_out(event):
            out.extend(map_event(event, compiled))
    return out, True


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
