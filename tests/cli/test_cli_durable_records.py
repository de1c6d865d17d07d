"""The audit log and the dead letters are on disk as the writes happen (`close-sync run` in a subprocess,
against `close-sync sim`): a run killed with SIGKILL keeps a line for every merge and deletion Close
made, and a run that cannot append a record (a full disk) stops writing to Close, with one line that
says why."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.helpers_user import CLOSE_SYNC, DEMO_CONFIG, SIM_KEY, SimProcess, Workdir, one_line_error

pytestmark = pytest.mark.integration

PAIRS = 300
USER_CF = "custom.cf_demo_user_id"
COMPANY_CF = "custom.cf_demo_company_id"


def alias_config(workdir: Workdir) -> Path:
    config = workdir.path / "close.yaml"
    config.write_text(
        DEMO_CONFIG.read_text().replace(
            "\npipeline:",
            "\n  - name: Alias\n    preset: alias\n    allow_merging: true\n\npipeline:",
        )
    )
    return config


def seed_visitors_and_accounts(sim: SimProcess, pairs: int) -> None:
    """Per person i: an anonymous visitor (user id v<i>) on a lead of its own, and the account (u<i>)
    on its company's lead. Their alias merges the visitor's lead into the account's, appends the
    visitor's email to the account's contact and deletes the visitor's contact."""
    leads = []
    for i in range(pairs):
        leads.append(
            {
                "id": f"lead_visitor{i}",
                "name": f"Visitor {i}",
                "contacts": [{"id": f"cont_visitor{i}", "name": "V", "emails": [{"email": f"v{i}@x.example"}], USER_CF: f"v{i}"}],
            }
        )
        leads.append(
            {
                "id": f"lead_account{i}",
                "name": f"Company {i}",
                COMPANY_CF: f"c{i}",
                "contacts": [{"id": f"cont_account{i}", "name": f"User {i}", "emails": [{"email": f"u{i}@x.example"}], USER_CF: f"u{i}"}],
            }
        )
    sim._admin("POST", "seed", {"leads": leads})


def write_aliases(workdir: Workdir, pairs: int) -> None:
    rows = [
        {"type": "alias", "messageId": f"a{i}", "previousId": f"v{i}", "userId": f"u{i}", "timestamp": f"2026-11-01T00:{i // 60:02d}:{i % 60:02d}Z"}
        for i in range(pairs)
    ]
    (workdir.path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_args(config: Path, sim: SimProcess, *extra: str) -> list[str]:
    return [
        str(CLOSE_SYNC), "run", "--config", str(config), "--source", "files", "--input", "events.jsonl",
        "--close-url", sim.base_url, "--quiet", *extra,
    ]


@contextlib.contextmanager
def slow_sim(sim: SimProcess, **knobs: Any) -> Iterator[None]:
    """Latency and a write budget, so a run lasts long enough to be killed partway; then back to none."""
    sim._admin("PATCH", "config", knobs)
    try:
        yield
    finally:
        sim._admin("PATCH", "config", {"latency_ms": 0, "limits_enabled": False})


def audit_lines(path: Path) -> list[dict[str, Any]]:
    """The log's whole lines (a failed append may leave its last line torn)."""
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def recorded(lines: list[dict[str, Any]], action: str) -> set[str]:
    """Ids of the records whose `action` (merge, delete) the log holds, as an intent or in a request's changes."""
    changes = [line["intent"] for line in lines if "intent" in line]
    changes += [c for line in lines for c in line.get("changes") or []]
    return {c["id"] for c in changes if c.get("action") == action}


def merges(sim: SimProcess) -> list[dict[str, Any]]:
    return sim._admin("GET", "merges")["data"]


def performed(sim: SimProcess) -> tuple[set[str], set[str]]:
    """The leads Close was asked to merge away, and the seeded visitor contacts it no longer has."""
    merged = {m["source"] for m in merges(sim)}
    present = {c["id"] for lead in sim.state()["leads"] for c in lead.get("contacts") or []}
    deleted = {f"cont_visitor{i}" for i in range(PAIRS)} - present
    return merged, deleted


def wait_for(condition: Callable[[], bool], timeout_s: float = 120, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def test_a_run_killed_with_sigkill_keeps_an_audit_line_for_every_merge_and_deletion_close_made(user_sim, workdir):
    seed_visitors_and_accounts(user_sim, PAIRS)
    write_aliases(workdir, PAIRS)
    config = alias_config(workdir)
    audit = workdir.path / "audit.jsonl"
    with slow_sim(user_sim, latency_ms=20, limits_enabled=True, write_rate=15):
        proc = subprocess.Popen(
            run_args(config, user_sim, "--dead-letter", "dead", "--audit-log", str(audit)),
            cwd=workdir.path,
            env=workdir.env(CLOSE_API_KEY=SIM_KEY),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: len(merges(user_sim)) >= 40 or proc.poll() is not None)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        time.sleep(1)  # what Close was sent before the kill has landed
        merged, deleted = performed(user_sim)

    assert proc.returncode == -signal.SIGKILL
    assert 40 <= len(merged) < PAIRS and deleted, "killed partway: some merges and deletions, not all"
    lines = audit_lines(audit)
    assert merged <= recorded(lines, "merge"), sorted(merged - recorded(lines, "merge"))[:5]
    assert deleted <= recorded(lines, "delete"), sorted(deleted - recorded(lines, "delete"))[:5]
    intents = [line for line in lines if "intent" in line]
    assert all(line["run_id"] and line["event_ids"] and line["intent"]["id"] for line in intents)


@contextlib.contextmanager
def small_disk(where: Path, size: int) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """A directory on a filesystem of ``size`` bytes (a tmpfs mount, as root), and what the run's
    process must do before it starts (nothing). Without mount rights: a plain directory, and a
    file-size limit of ``size`` bytes for the run's process, SIGXFSZ ignored so writes fail with EFBIG."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    ).returncode == 0
    if mounted:
        try:
            yield where, None
        finally:
            subprocess.run(["umount", str(where)], check=True)
        return

    yield where, file_size_limit(size)


def run_limited(workdir: Workdir, args: list[str], before: Callable[[], None] | None) -> subprocess.CompletedProcess[str]:
    """`close-sync run` to its end, with ``before`` (a file-size limit, or None on a small tmpfs) in the child."""
    return subprocess.run(
        args,
        cwd=workdir.path,
        env=workdir.env(CLOSE_API_KEY=SIM_KEY),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=before,
    )


def file_size_limit(size: int) -> Callable[[], None]:
    """For a child process: no file it writes grows past ``size`` bytes (EFBIG, as SIGXFSZ is ignored)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def fill(directory: Path) -> None:
    """Write until the filesystem is full (or the file-size limit is reached, in this process: none)."""
    with contextlib.suppress(OSError), open(directory / "filler", "wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()


def test_a_run_whose_audit_log_fills_the_disk_stops_writing_to_close_with_one_line(user_sim, workdir, tmp_path):
    seed_visitors_and_accounts(user_sim, PAIRS)
    write_aliases(workdir, PAIRS)
    config = alias_config(workdir)
    with small_disk(tmp_path / "disk", 48 * 1024) as (disk, before), slow_sim(user_sim, latency_ms=5):
        proc = run_limited(
            workdir, run_args(config, user_sim, "--dead-letter", "dead", "--audit-log", str(disk / "audit.jsonl")), before
        )
        lines = audit_lines(disk / "audit.jsonl")
    merged, deleted = performed(user_sim)

    line = one_line_error(proc, "cannot append to", "audit.jsonl", "stopped writing to Close")
    assert "ENOSPC" in line or "EFBIG" in line, line
    assert 0 < len(merged) < PAIRS, "the log filled partway through the run"
    # Nothing destructive went out unrecorded: its line was on disk before it was sent.
    assert merged <= recorded(lines, "merge") and deleted <= recorded(lines, "delete")
    # A person's first write is the merge of their visitor's lead: whoever's merge is not recorded
    # started after the log failed, and Close got no write of theirs.
    started = {int(lead_id.removeprefix("lead_visitor")) for lead_id in recorded(lines, "merge")}
    accounts = {c["id"]: c for lead in user_sim.state()["leads"] for c in lead.get("contacts") or []}
    not_started = set(range(PAIRS)) - started
    assert not_started, "the log filled before every person was started"
    for i in not_started:
        assert f"lead_visitor{i}" not in merged and f"cont_visitor{i}" not in deleted
        assert [e["email"] for e in accounts[f"cont_account{i}"]["emails"]] == [f"u{i}@x.example"]


def test_a_run_that_cannot_append_a_dead_letter_stops_before_writing_to_close(user_sim, workdir, tmp_path):
    rows = ["{not json", *(json.dumps({"type": "identify", "messageId": f"m{i}", "userId": f"u{i}",
                                        "traits": {"email": f"u{i}@x.example", "company": {"id": f"c{i}"}}})
                           for i in range(20))]
    (workdir.path / "events.jsonl").write_text("\n".join(rows) + "\n")
    with small_disk(tmp_path / "disk", 16 * 1024) as (disk, before):
        if before is None:
            fill(disk)
        else:
            before = file_size_limit(64)  # smaller than a letter; the files before it (temp probes) fit
        proc = run_limited(workdir, run_args(DEMO_CONFIG, user_sim, "--dead-letter", str(disk / "dead")), before)

    one_line_error(proc, "cannot append to", "dead-letters-", "stopped writing to Close")
    assert user_sim.writes() == 0

