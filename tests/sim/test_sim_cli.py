import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

CLOSE_SYNC = Path(sys.executable).parent / "close-sync"


def test_close_sync_sim_serves_me_and_writes_snapshot_on_sigterm(tmp_path):
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"leads": [{"name": "Seeded", "contacts": [{"name": "C"}]}]}))
    snapshot = tmp_path / "snap.json"
    key = "cli_secret_key_42"
    proc = subprocess.Popen(
        [str(CLOSE_SYNC), "sim", "--port", "0", "--api-key", key, "--seed", str(seed),
         "--search-lag", "0.1", "--ratelimit-separator", ";", "--snapshot", str(snapshot)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        ready = json.loads(proc.stdout.readline())
        base_url = ready["base_url"]
        r = httpx.get(base_url + "me/", auth=(key, ""))
        assert r.status_code == 200 and "; remaining=" in r.headers["ratelimit"]
        assert httpx.get(base_url + "me/").status_code == 401
        httpx.post(base_url + "lead/", json={"name": "Added"}, auth=(key, ""))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert key not in out + err + ready["base_url"]
    names = sorted(lead["name"] for lead in json.loads(snapshot.read_text())["leads"])
    assert names == ["Added", "Seeded"]


def test_rate_groups_from_a_file_are_served_and_a_bad_file_is_one_line(tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps([{"name": "me", "endpoints": ["GET /me/"], "limit": 2, "window": 5}]))
    proc = subprocess.Popen(
        [str(CLOSE_SYNC), "sim", "--port", "0", "--api-key", "k", "--rate-groups", str(groups)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        base_url = json.loads(proc.stdout.readline())["base_url"]
        codes = [httpx.get(base_url + "me/", auth=("k", "")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x"}]))
    done = subprocess.run(
        [str(CLOSE_SYNC), "sim", "--port", "0", "--api-key", "k", "--rate-groups", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"--rate-groups {bad}: not a preset" in done.stderr and "name, endpoints, limit, window" in done.stderr
