"""Dead letters: one record shape for every stage, written as JSON lines (and optionally to Pub/Sub)."""

from __future__ import annotations

import json
from typing import Any

import apache_beam as beam

from closecrm.events.parse import MAX_DEPTH, BadEvent, check_value
from closecrm.model import DeadLetter, Received, letters_file_name, utc_now_text

DEAD = "dead"  # tag of every stage's dead-letter output
LEGACY_LETTERS_FILE = "dead-letters.jsonl"  # what a writer given no run id writes (snapshot-sync)


def dead_letter_json(letter: DeadLetter, run_id: str | None = None) -> str:
    """One JSON line; with ``run_id``, stamped with the run and the time it was written."""
    record = letter.to_json()
    if run_id is not None:
        record["run_id"] = run_id
        record["time"] = utc_now_text()
    return json.dumps(record, sort_keys=True, default=str)


def letters_path(directory: str, run_id: str | None) -> str:
    """The file a run's dead letters go to under ``directory``: one per run, named by its run id, so
    no run writes over another's letters."""
    name = letters_file_name(run_id) if run_id is not None else LEGACY_LETTERS_FILE
    return directory.rstrip("/") + "/" + name


TOO_DEEP_MARK = "<too deep>"


def internal_error(exc: BaseException) -> str:
    """The reason for an element a stage failed on unexpectedly: the exception's type only, since its
    message may quote configuration or credentials."""
    return f"internal_error:{type(exc).__name__}"


def raw_for_letter(raw: Any) -> Any:
    """The original input as it can be written back: text stays text, bytes are decoded.

    Whatever the input, the result can be pickled, written as JSON and encoded as UTF-8: a lone
    surrogate becomes its escape (``\\ud800``), and a structure nested deeper than `MAX_DEPTH`
    is cut there (`TOO_DEEP_MARK`), so no later stage exhausts its recursion on it.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw).decode("utf-8", errors="replace")
    if isinstance(raw, str):
        return _writable_text(raw)
    try:
        check_value(raw)
    except BadEvent:
        return _clipped(raw, 1)
    return raw


def as_received(payload: Any) -> Any:
    """A payload that became an event, as its producer sent it, for its dead letter: JSON text as
    the object it holds (nothing the job filled in: no generated messageId, no parse-time timestamp),
    a row as it was read; always writable (`raw_for_letter`)."""
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            payload = bytes(payload).decode("utf-8-sig")
        except UnicodeDecodeError:
            return raw_for_letter(payload)
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except (ValueError, RecursionError):
            return raw_for_letter(payload)
    return raw_for_letter(payload)


def letter_event(carried: Any) -> tuple[Any, dict[str, Any] | None]:
    """What a letter shows of an event a request carried (a `Received`, or a parsed event's raw), and
    where it was read, when known."""
    if isinstance(carried, Received):
        origin = carried.origin
        return as_received(carried.payload), origin.to_json() if origin is not None else None
    return raw_for_letter(carried), None


def _writable_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _clipped(value: Any, depth: int) -> Any:
    """A copy with writable text and nothing below `MAX_DEPTH` (recursion bounded by it)."""
    if isinstance(value, str):
        return _writable_text(value)
    if isinstance(value, dict | list | tuple) and depth > MAX_DEPTH:
        return TOO_DEEP_MARK
    if isinstance(value, dict):
        return {
            _writable_text(k) if isinstance(k, str) else k: _clipped(v, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_clipped(v, depth + 1) for v in value]
    return value


class WriteDeadLetters(beam.PTransform):
    """JSON lines in one file under DIR (`letters_path`) and, if given, a Pub/Sub topic.

    With a ``run_id`` the file is ``dead-letters-<run id>.jsonl`` and each letter carries the run id
    and the time it was written; without one (snapshot-sync for now) it is ``dead-letters.jsonl``.
    Each letter is appended as it arrives (`AppendLines`), not when the job ends. Given a list of
    PCollections (each stage's letters), each is appended where it is produced, before they are
    flattened: a runner may hold a flatten's inputs back until their stages end.
    """

    def __init__(
        self, directory: str | None, topic: str | None = None, streaming: bool = False, run_id: str | None = None
    ) -> None:
        super().__init__()
        self._directory = directory
        self._topic = topic
        self._streaming = streaming
        self._run_id = run_id

    def expand(self, letters):
        inputs = list(letters) if isinstance(letters, tuple) else [letters]
        path = letters_path(self._directory, self._run_id) if self._directory else None
        written: list = []
        for i, part in enumerate(inputs):
            suffix = str(i) if len(inputs) > 1 else ""
            lines = part | f"ToJson{suffix}" >> beam.Map(dead_letter_json, run_id=self._run_id)
            if path:
                lines = lines | f"ToFiles{suffix}" >> beam.ParDo(AppendLines(path, self._run_id))
            written.append(lines)
        lines = written[0] if len(written) == 1 else written | "AllLetterLines" >> beam.Flatten()
        if self._topic:
            _ = (
                lines
                | "Encode" >> beam.Map(lambda s: s.encode("utf-8"))
                | "ToPubSub" >> beam.io.WriteToPubSub(self._topic)
            )
        return lines


class AppendLines(beam.DoFn):
    """Appends each line to one file as it arrives (closecrm.journal): on disk before it is passed on.

    With ``sync`` (dead letters) each line is fsync-ed as it is appended; without (the audit lines
    of requests that wrote nothing), once per bundle. On an object store (gs://…), which cannot be
    appended to, a bundle's lines are one object beside the file when the bundle finishes
    (`closecrm.journal.part_name`).
    An append that fails raises `JournalError` (one line: the file, the error, the fix) and stops
    the run's Close writes (`closecrm.journal.Recording`).
    """

    def __init__(self, path: str, run_id: str | None = None, sync: bool = True) -> None:
        self._path = path
        self._run_id = run_id
        self._sync = sync

    def setup(self) -> None:
        from closecrm.journal import Journal
        from closecrm.storage import has_scheme
        from transforms.objects import BEAM_OBJECTS

        self._journal = Journal(self._path, self._run_id, BEAM_OBJECTS)
        self._objects = has_scheme(self._path)
        self._held: list[str] = []

    def process(self, line: str):
        if self._objects:
            self._held.append(line)
        else:
            self._journal.append([line], sync=self._sync)
        yield line

    def finish_bundle(self) -> None:
        if self._held:
            held, self._held = self._held, []
            self._journal.append(held)
        elif not self._sync and not self._objects:
            self._journal.sync()
