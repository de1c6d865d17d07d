"""`close-sync replay`: apply dead letters again with the config given now, bypassing identical-request
suppression.

Each letter's original event is mapped again with the config it is given, so a fixed mapping, custom
field or setting takes effect; the request stored in the letter is sent only when the letter carries no
event (or not all of the events its request was made from), and then only once it passes the checks a
fresh request passes, with the flags of the config given (`closecrm.events.mapping.request_from_stored`).
Letters that fail again go to a new file, never over the input.

Each letter is applied once: the letters a replay handled are recorded beside them
(`RECORD_NAME`, appended as each batch is answered), and a later replay of the same letters against the
same Close skips them unless told ``again``. What cannot be read (a folder or a binary file matching the
pattern, a torn line, a stored request that fails the checks) is skipped and listed in the report; the
rest is replayed.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from closecrm.engine.writes.ledger import ledger_dir, namespace, user_cache_root
from closecrm.events.mapping import (
    MappingSpec,
    compile_mappings,
    flags_for_stored,
    map_event,
    request_from_stored,
)
from closecrm.events.parse import BadEvent, opted_out, parse_event
from closecrm.model import LETTERS_PREFIX, DeadLetter, Outcome, UpsertRequest, new_run_id, utc_now_text
from closecrm.wiring import EngineSpec
from pipeline.config import JobConfig

BATCH = 200
STILL_FAILING_PREFIX = "still-failing-"  # replay's own failures: still-failing-<replay id>.jsonl
# Beside the letters: one JSON line per letter a replay handled (its hash, the Close it went to).
RECORD_NAME = "replayed-letters.log"
BINARY_PROBE = 8192  # bytes read to tell a binary file from JSON lines
LISTED = 20  # unreadable items the one-line summary's caller prints before "and N more"


@dataclass(frozen=True)
class Unreadable:
    """A file or line replay skipped, and why."""

    file: str
    line: int | None
    reason: str

    def text(self) -> str:
        where = f"{self.file}, line {self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"


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
    already_replayed: int = 0  # letters an earlier replay applied, left alone
    unreadable: list[Unreadable] = field(default_factory=list)  # files and lines skipped

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        how = f"{self.remapped} re-mapped with this config, {self.as_stored} as stored"
        dropped = f"; {self.fields_dropped} value(s) left out as unusable" if self.fields_dropped else ""
        again = (
            f"; {self.already_replayed} letter(s) already replayed, not applied again (--again applies them)"
            if self.already_replayed
            else ""
        )
        skipped = f"; {len(self.unreadable)} unreadable, skipped" if self.unreadable else ""
        return (
            f"replayed {self.letters} letter(s) ({how}) as {self.requests} request(s): "
            f"{kinds or 'nothing to send'}{dropped}{again}{skipped}"
        )

    def skipped_lines(self) -> list[str]:
        """What was skipped as unreadable, one line each (the first `LISTED`, then how many more)."""
        lines = [f"skipped {item.text()}" for item in self.unreadable[:LISTED]]
        if len(self.unreadable) > LISTED:
            lines.append(f"… and {len(self.unreadable) - LISTED} more unreadable line(s) or file(s)")
        return lines

    def problems(self) -> str | None:
        """The one line that says what needs the user, when something failed again or was skipped."""
        parts = []
        if self.failed:
            parts.append(
                f"{self.failed} letter(s) failed again; they are in {self.still_failing} "
                "(fix the cause, then replay that file)"
            )
        if self.unreadable:
            parts.append(
                f"{len(self.unreadable)} file(s) or line(s) could not be read and were skipped, listed above "
                "(fix or remove them, then replay again: the letters already applied are not applied twice)"
            )
        return "; ".join(parts) or None


def letter_files(path: str) -> tuple[list[str], list[Unreadable]]:
    """The dead-letter files to replay: ``path`` itself, or in a folder every run's letters file
    (``dead-letters-*.jsonl``, and the ``dead-letters.jsonl`` older runs wrote), oldest run first; and
    what matched but is no file (a folder named like one). Files that earlier replays wrote
    (``still-failing-*``) are replayed only when named."""
    if not os.path.isdir(path):
        return [path], []
    matched = sorted(glob.glob(os.path.join(glob.escape(path), LETTERS_PREFIX + "*.jsonl")))
    legacy = os.path.join(path, "dead-letters.jsonl")
    if os.path.lexists(legacy):
        matched.insert(0, legacy)
    if not matched:
        raise ValueError(f"{path} holds no dead-letter file (dead-letters-*.jsonl); name the file to replay")
    files = [name for name in matched if os.path.isfile(name)]
    skipped = [Unreadable(name, None, "not a file (a folder?), skipped") for name in matched if name not in files]
    return files, skipped


def still_failing_path(inputs: list[str], replay_id: str, out_path: str | None, folder: str) -> str:
    """Where letters that fail again go: --out, else a new file in ``folder`` (the letters'); never an
    existing file, and only where a file can be made: checked before anything is sent."""
    named = out_path is not None
    if out_path is None:
        out_path = os.path.join(folder, f"{STILL_FAILING_PREFIX}{replay_id}.jsonl")
    target = os.path.abspath(out_path)
    if any(os.path.abspath(i) == target for i in inputs) or os.path.lexists(target):
        raise ValueError(f"--out {out_path} exists already; replay never writes over a file (give a new name)")
    parent = os.path.dirname(target)
    if named and not os.path.isdir(parent):
        raise ValueError(f"--out {out_path}: the folder {os.path.dirname(out_path) or '.'} does not exist; create it or give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = f"--out {out_path}" if named else f"the letters' folder {folder}"
        raise ValueError(f"{what}: cannot write there; give --out a path in a folder you can write to")
    return out_path


def replay_path(
    config: JobConfig, spec: EngineSpec, path: str, out_path: str | None = None, again: bool = False
) -> ReplayReport:
    """Replays a dead-letter file, or every run's letters in a folder (`letter_files`).

    Without a ledger of its own, ``spec`` gets the created-id ledger the run kept: beside the letters
    when the run was given --dead-letter (the ledger sits there then), else the user's cache, where a
    local run without --dead-letter keeps it. Letters recorded as replayed against this Close are
    skipped unless ``again``.
    """
    inputs, unreadable = letter_files(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    replay_id = new_run_id()
    record_path = os.path.join(folder, RECORD_NAME)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(
            f"cannot record the replayed letters in {folder} (not writable): copy the letters to a "
            "folder you can write to and replay them there"
        )
    target = still_failing_path(inputs, replay_id, out_path, folder)
    if spec.created_ids is None:
        beside = os.path.abspath(folder)
        root = beside if os.path.isdir(os.path.join(beside, "created-ids")) else user_cache_root()
        spec = replace(spec, created_ids=ledger_dir(root, spec.close_url))
    close = namespace(spec.close_url)
    done = set() if again else _recorded(record_path, close)
    report = ReplayReport(unreadable=unreadable)
    sink = _Sink(target, record_path, close, replay_id, report)
    try:
        pending = _read_all(config, inputs, done, report, sink)
        report.requests = len(pending)
        if pending:
            asyncio.run(_apply(spec, pending, sink))
    finally:
        sink.close()
    return report


def replay_file(
    config: JobConfig, spec: EngineSpec, path: str, out_path: str | None = None, again: bool = False
) -> ReplayReport:
    """`replay_path` under its earlier name (a file or a folder alike)."""
    return replay_path(config, spec, path, out_path, again)


@dataclass
class _Letter:
    """A letter being replayed: where it was read, its identity, and how its requests ended so far."""

    file: str
    line: int
    data: dict[str, Any]
    digest: str
    left: int = 0  # requests not answered yet
    handled: bool = False  # a request applied or failed: Close may have changed


def letter_digest(letter: dict[str, Any]) -> str:
    """A letter's identity: a hash of its JSON, whatever the spacing or key order of its line."""
    blob = json.dumps(letter, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()[:32]


def _recorded(record_path: str, close: str) -> set[str]:
    """The letters an earlier replay handled against this Close (a torn last line is ignored)."""
    try:
        fh = open(record_path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise ValueError(f"cannot read {record_path} ({exc.strerror}); fix its permissions, or move it away to replay everything again") from None
    done: set[str] = set()
    with fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("close") == close and isinstance(entry.get("letter"), str):
                done.add(entry["letter"])
    return done


def _read_all(
    config: JobConfig, inputs: list[str], done: set[str], report: ReplayReport, sink: _Sink
) -> list[tuple[_Letter, UpsertRequest]]:
    """Every request to send, with its letter; letters that fail before sending go to ``sink``."""
    options = config.options()
    compiled = compile_mappings(options.mappings)
    pending: list[tuple[_Letter, UpsertRequest]] = []
    seen: set[str] = set()
    for name in inputs:
        for item in _letters(name):
            if isinstance(item, Unreadable):
                report.unreadable.append(item)
                continue
            if item.digest in done or item.digest in seen:
                report.already_replayed += 1
                continue
            seen.add(item.digest)
            try:
                requests, remapped = _requests_of(item.data, compiled, options.mappings, options.max_event_bytes)
            except _BadLetter as exc:
                report.unreadable.append(Unreadable(name, item.line, exc.reason))
                continue
            except BadEvent as exc:
                report.letters += 1
                report.failed += 1
                report.outcomes["failed"] += 1
                sink.failed([_again(item.data, exc.reason)])
                sink.replayed([(item, "failed")])
                continue
            except Exception as exc:  # noqa: BLE001 - one odd letter never stops the rest
                report.unreadable.append(Unreadable(name, item.line, f"internal_error:{type(exc).__name__}"))
                continue
            report.letters += 1
            if remapped:
                report.remapped += 1
            else:
                report.as_stored += 1
            if not requests:
                report.outcomes["skipped"] += 1  # opted out, or no mapping matches the event now
            report.fields_dropped += sum(len(r.dropped) for r in requests)
            item.left = len(requests)
            pending.extend((item, r) for r in requests)
    return pending


def _letters(path: str) -> Iterator[_Letter | Unreadable]:
    """The letters of one file, and an `Unreadable` for the file, or for each line, that is none."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        yield Unreadable(path, None, f"cannot read ({exc.strerror})")
        return
    with fh:
        if b"\0" in fh.read(BINARY_PROBE):
            yield Unreadable(path, None, "a binary file, not dead letters (JSON lines)")
            return
        fh.seek(0)
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                letter = json.loads(raw.decode("utf-8-sig"))
            except UnicodeDecodeError:
                yield Unreadable(path, n, "not UTF-8 text")
                continue
            except ValueError as exc:
                if raw.endswith(b"\n"):
                    yield Unreadable(path, n, f"not JSON ({getattr(exc, 'msg', exc)})")
                else:
                    yield Unreadable(path, n, "cut short: the file ends mid-line (killed while written?)")
                continue
            except RecursionError:
                yield Unreadable(path, n, "nested too deep")
                continue
            if not isinstance(letter, dict):
                yield Unreadable(path, n, "not a dead letter (a JSON object per line)")
                continue
            yield _Letter(path, n, letter, letter_digest(letter))


class _BadLetter(Exception):
    """A letter that cannot be replayed as it is (never sent): a stored request that fails the checks."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _again(letter: dict[str, Any], reason: str, **more: Any) -> DeadLetter:
    """A letter that failed again: the original event and where it was read, with replay's reason."""
    attempts = _count(letter.get("attempts")) + int(more.pop("attempts", 1))
    ids = more.pop("event_ids", None) or letter.get("event_ids") or ()
    return DeadLetter(
        stage="replay",
        reason=reason,
        event=letter.get("event"),
        request=more.pop("request", letter.get("request")),
        error=more.pop("error", None),
        attempts=attempts,
        event_ids=tuple(str(i) for i in ids) if isinstance(ids, list | tuple) else (),
        source=letter.get("source"),
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _events_of(letter: dict[str, Any]) -> list[Any]:
    event = letter.get("event")
    events = event if isinstance(event, list) else [event]
    return [e for e in events if e is not None]


def _requests_of(
    letter: dict[str, Any], compiled: list, specs: tuple[MappingSpec, ...], max_event_bytes: int
) -> tuple[list[UpsertRequest], bool]:
    """The requests a letter's original events map to with this config (and True); the request it
    stored (and False) when it carries no event, or not every event that request was made from (a
    collapsed request's letter carries at most 20, and mapping only those would leave out what the
    later ones said). `BadEvent` when an event cannot be used (parsed with this config's limits);
    `_BadLetter` when the letter cannot be replayed at all."""
    events = _events_of(letter)
    stored = letter.get("request")
    if not events:
        if not stored:
            raise _BadLetter("holds neither an event nor a request")
        return [_stored(stored, specs)], False
    parsed = [parse_event(raw, max_event_bytes) for raw in events]
    ids = letter.get("event_ids") or ()
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise _BadLetter("event_ids is not a list of texts")
    if stored and not set(ids) <= {event.message_id for event in parsed}:
        return [_stored(stored, specs)], False
    out: list[UpsertRequest] = []
    for event in parsed:
        if not opted_out(event):
            out.extend(map_event(event, compiled))
    return out, True


def _stored(stored: Any, specs: tuple[MappingSpec, ...]) -> UpsertRequest:
    """A stored request, checked as a fresh one and given the config's flags (`flags_for_stored`)."""
    names = stored.get("mappings") if isinstance(stored, dict) else None
    names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    try:
        return request_from_stored(stored, flags_for_stored(names, specs))
    except BadEvent as exc:
        detail = f" ({exc.detail})" if exc.detail and exc.detail != exc.reason else ""
        raise _BadLetter(f"stored request: {exc.reason}{detail}; not sent") from None


def _was_ambiguous(letter: dict[str, Any]) -> bool:
    """A create whose answer was lost may have happened: the replay must look before creating."""
    return str(letter.get("reason", "")).startswith("ambiguous")


class _Sink:
    """Where replay's results go as they come, each line flushed: the letters that failed again
    (a new file, made on the first), and the record of the letters handled."""

    def __init__(self, target: str, record_path: str, close: str, replay_id: str, report: ReplayReport) -> None:
        self._target = target
        self._record_path = record_path
        self._close = close
        self._replay_id = replay_id
        self._report = report
        self._failed: TextIO | None = None
        self._record: TextIO | None = None

    def failed(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        if self._failed is None:
            self._failed = open(self._target, "x", encoding="utf-8")
            self._report.still_failing = self._target
        for letter in letters:
            record = {**letter.to_json(), "run_id": self._replay_id, "time": utc_now_text()}
            self._failed.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self._failed.flush()

    def replayed(self, letters: list[tuple[_Letter, str]]) -> None:
        if not letters:
            return
        if self._record is None:
            self._record = open(self._record_path, "a", encoding="utf-8")
        now = utc_now_text()
        for letter, outcome in letters:
            entry = {
                "letter": letter.digest,
                "close": self._close,
                "file": os.path.basename(letter.file),
                "line": letter.line,
                "outcome": outcome,
                "replay_id": self._replay_id,
                "time": now,
            }
            self._record.write(json.dumps(entry, sort_keys=True) + "\n")
        self._record.flush()

    def answered(self, batch: list[tuple[_Letter, UpsertRequest]], outcomes: list[Outcome]) -> None:
        """One batch's outcomes: counted, the failures written, then the letters now done recorded."""
        failed: list[DeadLetter] = []
        done: list[tuple[_Letter, str]] = []
        for (letter, request), outcome in zip(batch, outcomes, strict=True):
            self._report.outcomes[outcome.kind] += 1
            if outcome.kind != "skipped":
                letter.handled = True  # applied or failed (and handed on): never to be applied again
            if outcome.kind == "failed":
                self._report.failed += 1
                failed.append(
                    _again(
                        letter.data,
                        outcome.reason or "failed",
                        request=request.to_json(),
                        error={"http_status": outcome.http_status, "body": outcome.error_body},
                        attempts=outcome.attempts,
                        event_ids=request.event_ids,
                    )
                )
            letter.left -= 1
            if letter.left == 0 and letter.handled:
                done.append((letter, outcome.kind))
        self.failed(failed)
        self.replayed(done)

    def close(self) -> None:
        for fh in (self._failed, self._record):
            if fh is not None:
                fh.close()


async def _apply(spec: EngineSpec, pending: list[tuple[_Letter, UpsertRequest]], sink: _Sink) -> None:
    client, engine = spec.build()
    for letter, request in pending:
        if _was_ambiguous(letter.data):
            engine.expect_unconfirmed(request)
    try:
        for start in range(0, len(pending), BATCH):
            batch = pending[start : start + BATCH]
            sink.answered(batch, await engine.upsert_batch([r for _, r in batch]))
    finally:
        await client.aclose()
