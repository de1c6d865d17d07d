"""`close-sync sim --seed`: the shipped examples/sim-seed.json starts the organisation the demo config
names, a seed with a wrong shape is one line before anything is served, and leads read as Close's do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLOSE_SYNC = Path(sys.executable).parent / "close-sync"
KEY = "seed_test_key_not_real"


def _sim(seed: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CLOSE_SYNC), "sim", "--port", "0", "--api-key", KEY, "--no-limits", "--seed", str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_the_shipped_seed_makes_the_demo_config_validate_against_a_fresh_simulator(tmp_path):
    proc = _sim(REPO / "examples" / "sim-seed.json")
    try:
        base_url = json.loads(proc.stdout.readline())["base_url"]
        fields = httpx.get(base_url + "custom_field/contact/", auth=(KEY, "")).json()["data"]
        assert {f["id"] for f in fields} == {"cf_demo_user_id", "cf_demo_plan"}
        check = subprocess.run(
            [str(CLOSE_SYNC), "validate", "--config", str(REPO / "examples" / "demo-config.yaml"),
             "--close-url", base_url],
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLOSE_API_KEY": KEY},
            capture_output=True, text=True, timeout=60,
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: config valid")


@pytest.mark.parametrize(
    ("seed", "needle"),
    [
        ('{"customfields": {"lead": []}}', "Unknown seed key(s) customfields; the keys are custom_fields, statuses, leads"),
        ('{"custom_fields": {"leads": []}}', 'custom_fields must be {"lead": [...], "contact": [...], "shared": [...]}'),
        ('{"custom_fields": {"lead": [{"id": "company", "name": "Company"}]}}', "Custom field ids start with cf_"),
        ('{"leads": [\n  {"name": "x",}\n]}', "invalid JSON at line 2 column"),
    ],
)
def test_a_seed_of_the_wrong_shape_is_one_line_and_nothing_is_served(tmp_path, seed, needle):
    path = tmp_path / "seed.json"
    path.write_text(seed)
    proc = _sim(path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out == ""  # never ready
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"Error: --seed {path}: ") and needle in errors[0], errors[0]


def test_a_lead_without_a_name_is_displayed_as_its_first_contact_as_in_close(api):
    created = api.post(
        "lead/", json={"contacts": [{"name": "Ada Lovelace", "emails": [{"email": "ada@example.com"}]},
                                    {"name": "Grace Hopper"}]}
    ).json()
    assert created["name"] is None and created["display_name"] == "Ada Lovelace"
    nameless = api.post("lead/", json={"contacts": [{"emails": [{"email": "bob@example.com"}]}]}).json()
    assert nameless["display_name"] == "bob@example.com"
    named = api.post("lead/", json={"name": "Acme", "contacts": [{"name": "Ada"}]}).json()
    assert named["display_name"] == "Acme"
