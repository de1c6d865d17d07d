"""The same events twice, back to back, while Close's search still lags behind the first run's writes.

The second run's searches cannot see what the first run created (the lag is longer than the gap
between the runs), so only the job's memory of the ids it created keeps it from creating every
lead and contact again: the created-id ledger, read when a writer starts and confirmed by GET.
Each second run starts from what is on disk, as a new process would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from closecrm.engine.writes.ledger import CreatedIdLedger, namespace
from pipeline.sources import SourceOptions
from tests.pipeline.helpers import letters_in, write_jsonl
from tests.reliability.rel_helpers import dead_letters, duplicates, fresh, run_job, w1_events
from tests.reliability.test_reliability_restart import STREAM, audit_ids, streaming_run, wait_for
from transforms import metrics as m

pytestmark = pytest.mark.integration

USERS, COMPANIES = 50, 15
REPO = Path(__file__).resolve().parents[2]


def events() -> list[dict]:
    return w1_events(users=USERS, companies=COMPANIES, per_user=5)  # 250 events


def hidden_from_search(sim) -> int:  # noqa: ANN001
    """Records that exist but that search does not show yet."""
    shown = sim.simulator.store.search(lambda leads, contacts, terms: len(leads) + len(contacts))
    return len(sim.leads()) + len(sim.contacts()) - shown


def assert_one_of_each(sim, cf: dict[str, str], after: str) -> None:  # noqa: ANN001
    assert duplicates(sim, cf) == {"leads": [], "contacts": []}, f"duplicates after {after}"
    assert (len(sim.leads()), len(sim.contacts())) == (COMPANIES, USERS), after


def ledger_files(root: Path, sim) -> list[Path]:  # noqa: ANN001
    return sorted((root / "created-ids" / namespace(sim.base_url)).glob("*.ids"))


def close_sync_run(  # noqa: ANN201
    sim, config: Path, events_file: Path, env: dict[str, str], *extra: str  # noqa: ANN001
) -> subprocess.CompletedProcess:
    """`close-sync run --source files` in a process of its own, with no --state-location: the default place."""
    argv = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source", "files"]
    argv += ["--input", str(events_file), "--close-url", sim.base_url, "--quiet", *extra]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_close_sync_run_twice_back_to_back_under_search_lag_creates_nothing_twice(sim, tmp_path):
    config, cf = fresh(sim, tmp_path)
    sim.configure(search_lag=10.0)
    events_file = write_jsonl(tmp_path / "events.jsonl", events())
    cache = tmp_path / "cache"
    env = {**os.environ, "CLOSE_API_KEY": sim.api_key, "XDG_CACHE_HOME": str(cache)}

    first = close_sync_run(sim, tmp_path / "config.yaml", events_file, env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert_one_of_each(sim, cf, "the first run")
    assert hidden_from_search(sim) > 0, "the second run must start while search still hides the first run's"

    second = close_sync_run(sim, tmp_path / "config.yaml", events_file, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_one_of_each(sim, cf, "the second run")

    [ledger] = ledger_files(cache / "close-sync", sim)  # one writer per process; the second created nothing
    text = ledger.read_text()
    assert sim.api_key not in text and "@" not in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert len(entries) == COMPANIES + 2 * USERS  # company; user id and email of each contact
    assert {tuple(sorted(e)) for e in entries} == {("at", "id", "k", "kind", "t")}
    stored = {str(v) for e in entries for v in e.values()}
    assert not stored & ({f"u_{u}" for u in range(USERS)} | {f"comp_{c}" for c in range(COMPANIES)})


def test_runs_with_a_dead_letter_folder_each_share_the_ledger_and_create_nothing_twice(sim, tmp_path):
    """As people run it: one --dead-letter folder per run (or per day). The ledger stays in the one
    state location, the user's cache, so the second run knows what the first one created."""
    config, cf = fresh(sim, tmp_path)
    sim.configure(search_lag=30.0)  # longer than a run: the second one's searches see none of the first's
    events_file = write_jsonl(tmp_path / "events.jsonl", events())
    cache = tmp_path / "cache"
    env = {**os.environ, "CLOSE_API_KEY": sim.api_key, "XDG_CACHE_HOME": str(cache)}
    for run in ("run1", "run2"):
        done = close_sync_run(sim, tmp_path / "config.yaml", events_file, env, "--dead-letter", str(tmp_path / run))
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"state location: {cache / 'close-sync'} (created-id ledger: " in done.stderr
        assert sim.api_key not in done.stderr
        assert_one_of_each(sim, cf, run)
        if run == "run1":
            assert hidden_from_search(sim) > 0, "the second run must start while search still hides the first run's"
    assert ledger_files(cache / "close-sync", sim)
    assert not list(tmp_path.glob("run*/created-ids"))


def test_a_file_run_twice_in_one_process_reads_the_ledger_in_the_state_location(
    sim, tmp_path, monkeypatch
):
    config, cf = fresh(sim, tmp_path)
    sim.configure(search_lag=10.0)
    source = SourceOptions(source="files", input=str(write_jsonl(tmp_path / "events.jsonl", events())))
    for run in ("the first run", "the second run"):
        CreatedIdLedger.close_all()  # as if each run had a process of its own
        values = run_job(sim, config, source, tmp_path, monkeypatch)
        assert values.get(m.EVENTS_DEAD_LETTERED, 0) == 0
        assert_one_of_each(sim, cf, run)
        assert hidden_from_search(sim) > 0
    assert ledger_files(Path(os.environ["XDG_CACHE_HOME"]) / "close-sync", sim)
    assert not (tmp_path / "dead" / "created-ids").exists() and not dead_letters(tmp_path)


@pytest.mark.usefixtures("pubsub_short_pulls")
def test_a_restarted_streaming_run_remembers_what_it_created(sim, pubsub_emulator, tmp_path, monkeypatch):
    work = tmp_path / "stream"
    config, cf = fresh(sim, work, STREAM)
    # Longer than the restart takes (the Pub/Sub reader's start and stop included): the restarted
    # run's searches find none of the first run's records.
    sim.configure(search_lag=30.0)
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    name = f"rerun-{uuid.uuid4().hex[:8]}"
    pubsub_emulator.create_topic(name)
    subscription = pubsub_emulator.create_subscription(name, name)
    batch = events()
    ids = {e["messageId"] for e in batch}
    payloads = [json.dumps(e).encode() for e in batch]

    for audit in (work / "audit1.jsonl", work / "audit2.jsonl"):
        CreatedIdLedger.close_all()  # the restarted job starts from what is on disk
        # the same events again after the restart, as a source that redelivers them would give them
        pubsub_emulator.publish(name, payloads)
        streaming_run(
            sim, config, subscription, work, audit, lambda a=audit: wait_for(lambda: ids <= audit_ids(a), 90)
        )
        assert ids <= audit_ids(audit)
        # The local streaming runner builds a new writer for every bundle: within one run too, only
        # the ledger carries what an earlier bundle created.
        assert_one_of_each(sim, cf, audit.stem)
        assert hidden_from_search(sim) > 0
    assert not letters_in(work / "dead")
