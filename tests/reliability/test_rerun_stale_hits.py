"""Two `close-sync run`s back to back while search lags: the second must not act on what search still shows.

Run 1 re-keys a contact from user id P to Q (alias P→Q). Run 2, seconds later in a new process with
the same cache (so the same created-id ledger), identifies P: search still says the contact is P,
but Close's real state has no P contact, so run 2 creates one and leaves the re-keyed contact alone.
Run 3 aliases Q into U, merging: its audit line of the deletion holds the whole contact as read
by id, custom fields included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline.helpers import read_lines, write_jsonl
from tests.reliability.rel_helpers import fresh

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

MAPPINGS = {
    "mappings": [
        {"name": "Identify", "preset": "identify"},
        {"name": "Alias", "preset": "alias", "allow_merging": True},
    ]
}


def close_sync_run(sim, config: Path, events_file: Path, audit: Path, env: dict[str, str]):  # noqa: ANN001, ANN201
    """`close-sync run --source files` in a process of its own, the ledger in its default place."""
    argv = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--source", "files"]
    argv += ["--input", str(events_file), "--close-url", sim.base_url, "--audit-log", str(audit), "--quiet"]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def event(n: int, **body: Any) -> dict[str, Any]:
    return {"messageId": f"m{n}", "timestamp": f"2026-11-01T00:00:{n:02d}Z", **body}


def test_a_rerun_within_the_search_lag_acts_only_on_what_a_read_by_id_says(sim, tmp_path: Path) -> None:  # noqa: ANN001
    _, cf = fresh(sim, tmp_path, MAPPINGS)
    user, plan = f"custom.{cf['user']}", f"custom.{sim.create_custom_field('contact', 'Plan')}"
    sim.seed(
        {
            "leads": [
                {"name": "Pete's", "contacts": [{"name": "Pete", user: "P", plan: "gold"}]},
                {"name": "Una's", "contacts": [{"name": "Una", user: "U"}]},
            ]
        }
    )
    [x] = [c["id"] for c in sim.contacts() if c.get(user) == "P"]
    sim.configure(search_lag=30.0)
    env = {**os.environ, "CLOSE_API_KEY": sim.api_key, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def run(name: str, *events: dict[str, Any]) -> list[dict[str, Any]]:
        events_file = write_jsonl(tmp_path / f"{name}.jsonl", events)
        audit = tmp_path / f"{name}-audit.jsonl"
        done = close_sync_run(sim, tmp_path / "config.yaml", events_file, audit, env)
        assert done.returncode == 0, done.stderr[-3000:]
        return [line for line in read_lines(audit) if "intent" not in line]  # request lines, not intents

    run("rekey", event(1, type="alias", previousId="P", userId="Q"))
    assert [c[user] for c in sim.contacts() if c["id"] == x] == ["Q"]

    [identified] = run("identify", event(2, type="identify", userId="P", traits={"name": "Pete Two"}))
    assert identified["outcome"] == "created" and x not in identified["contact_ids"]
    assert [(c[user], c["name"]) for c in sim.contacts() if c["id"] == x] == [("Q", "Pete")]

    [merged] = run("merge", event(3, type="alias", previousId="Q", userId="U"))
    assert merged["outcome"] == "updated" and x not in {c["id"] for c in sim.contacts()}
    [deleted] = [c for c in merged["changes"] if c["action"] == "delete"]
    assert deleted["id"] == x and deleted["old"][user] == "Q" and deleted["old"][plan] == "gold"
    assert json.dumps(deleted).count(sim.api_key) == 0
