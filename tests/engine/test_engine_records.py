"""Durable records: the appender (closecrm/journal.py) and the engine's hooks against the simulator —
a merge's and a deletion's record on disk before the write is sent, and no write once recording failed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from closecrm.journal import Journal, JournalError, JournalFile, Recording
from closecrm.model import Flags, UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_alias import MERGING, alias, contact, lead


def test_threads_and_processes_appending_to_one_file_leave_every_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "log" / "audit.jsonl"
    line = lambda who, n: json.dumps({"who": who, "n": n, "pad": "x" * 3000})  # noqa: E731 - longer than a pipe buffer
    code = (
        "import json,sys; from closecrm.journal import JournalFile; f=JournalFile(sys.argv[1]);"
        "[f.append([json.dumps({'who': 'p'+sys.argv[2], 'n': n, 'pad': 'x'*3000})]) for n in range(100)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(k)]) for k in range(2)]
    threads = [
        threading.Thread(target=lambda k=k: [JournalFile.shared(str(path)).append([line(f"t{k}", n)]) for n in range(100)])
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(timeout=60) == 0 for p in procs)
    records = [json.loads(text) for text in path.read_text().splitlines()]
    assert len(records) == 600
    for who in ("t0", "t1", "t2", "t3", "p0", "p1"):
        assert [r["n"] for r in records if r["who"] == who] == list(range(100))


def test_a_failed_append_is_one_line_error_for_the_run_and_every_later_append(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    journal = Journal(str(tmp_path / "a-file" / "audit.jsonl"), run_id="run-failed-append")  # under a file
    with pytest.raises(JournalError) as first:
        journal.append(["{}"])
    message = str(first.value)
    assert "\n" not in message and "a-file/audit.jsonl" in message and "stopped writing to Close" in message
    assert Recording.of("run-failed-append").failure is first.value
    assert Recording.of("another-run").failure is None
    with pytest.raises(JournalError):
        journal.append(["{}"])


def _seed_alias(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, None, contact(close, "u2", "u2@x.example"), name="Mine"),
        lead(close, None, contact(close, "anon-1", "a@x.example")),
    )


def test_a_merge_and_a_deletion_are_recorded_before_close_has_them(close: CloseEnv) -> None:
    _seed_alias(close)
    seen: list[tuple[str, Any, int, int]] = []
    ended: list[tuple[UpsertRequest, Any]] = []

    def intend(request: UpsertRequest, change: dict[str, Any]) -> None:
        # what Close holds when the record is made: nothing of this change yet
        contacts = {c["id"] for c in close.sim.contacts()}
        seen.append((change["action"], change["id"], len(close.sim.merges()), change["id"] in contacts))

    async def go(engine: Any) -> list[Any]:
        engine.record(intend, Recording(), lambda done: ended.extend(done))
        return [await engine.upsert_one(alias("anon-1", "u2", MERGING))]

    [out] = close.run(go)
    assert out.label == "updated"
    merged, deleted = [c for c in out.changes if c["action"] == "merge"], [c for c in out.changes if c["action"] == "delete"]
    assert seen == [("merge", merged[0]["id"], 0, False), ("delete", deleted[0]["id"], 1, True)]
    assert [(request.alias_previous_id, outcome.label) for request, outcome in ended] == [("anon-1", "updated")]


def test_no_close_write_once_recording_failed(close: CloseEnv) -> None:
    _seed_alias(close)
    recording = Recording()

    def intend(request: UpsertRequest, change: dict[str, Any]) -> None:
        failure = JournalError("audit.jsonl", OSError(28, "No space left on device"))
        recording.failed(failure)
        raise failure

    async def go(engine: Any) -> list[Any]:
        engine.record(intend, recording)
        first = await engine.upsert_one(alias("anon-1", "u2", MERGING))
        # an ordinary create after the failure is refused too, before it is sent
        second = await engine.upsert_one(UpsertRequest(contact_emails=("new@x.example",), lead_name="New", flags=Flags()))
        return [first, second]

    before = len(close.sim.leads()), len(close.sim.contacts())
    first, second = close.run(go)
    assert first.label == second.label == "failed:engine_error:RecordingStopped"
    assert close.sim.merges() == []
    assert (len(close.sim.leads()), len(close.sim.contacts())) == before
