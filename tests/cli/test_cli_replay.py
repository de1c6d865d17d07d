"""`close-sync replay` as a new user runs it, after a run whose config was wrong: the fixed config is what
replay applies (each letter's original event mapped again), the stored request only goes for a letter
without its event, and what fails again goes to a new file, never over the input."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.cli.helpers_user import DEMO_CONFIG, SIM_KEY, SimProcess, Workdir, one_line_error

pytestmark = pytest.mark.integration

KEY = {"CLOSE_API_KEY": SIM_KEY}
EVENTS = 10


def identify(n: int) -> dict[str, Any]:
    # no timestamp: the letters must show the events as sent, and replay parse them as the run did
    return {
        "type": "identify",
        "messageId": f"m{n}",
        "userId": f"u{n}",
        "traits": {"name": f"User {n}", "email": f"user{n}@example.com", "company": {"id": f"c{n % 2}"}, "plan": "pro"},
    }


@pytest.fixture
def failed_run(user_sim: SimProcess, workdir: Workdir) -> tuple[Path, Path]:
    """A run whose mapping sends the plan to a number field (Close refuses 'pro'): every event a letter.
    Returns the wrong config and the letters file."""
    user_sim._admin("POST", "seed", {"custom_fields": {"contact": [{"id": "cf_seats", "name": "Seats", "type": "number"}]}})
    wrong = workdir.path / "wrong.yaml"
    wrong.write_text(DEMO_CONFIG.read_text().replace("cf_demo_plan", "cf_seats"))
    (workdir.path / "events.jsonl").write_text("".join(json.dumps(identify(n)) + "\n" for n in range(EVENTS)))
    proc = workdir.run(
        "run", "--config", str(wrong), "--source", "files", "--input", "events.jsonl",
        "--close-url", user_sim.base_url, "--quiet", "--dead-letter", "dead", env=KEY,
    )
    assert proc.returncode == 1
    one_line_error(proc, f"{EVENTS} event(s) were dead-lettered", f"{EVENTS} upsert:http_400")
    (path,) = (workdir.path / "dead").glob("dead-letters-*.jsonl")
    assert user_sim.state()["leads"] == []
    return wrong, path


def replay(workdir: Workdir, sim: SimProcess, config: Path, letters: str, *extra: str):
    return workdir.run(
        "replay", "--config", str(config), "--dead-letter", letters, "--close-url", sim.base_url, *extra, env=KEY
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_replay_applies_the_fixed_config_to_each_letters_original_event(user_sim, workdir, failed_run):
    _, letters = failed_run
    before = digest(letters)
    relative = str(letters.relative_to(workdir.path))

    proc = replay(workdir, user_sim, DEMO_CONFIG, relative)  # the config fixed: the plan goes to a text field

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"replayed {EVENTS} letter(s) ({EVENTS} re-mapped with this config, 0 as stored) "
        f"as {EVENTS} request(s): created {EVENTS}"
    )
    contacts = [c for lead in user_sim.state()["leads"] for c in lead["contacts"]]
    assert sorted(c["custom.cf_demo_plan"] for c in contacts) == ["pro"] * EVENTS
    assert not any("custom.cf_seats" in c for c in contacts)
    assert digest(letters) == before
    assert workdir.left_behind() == ["dead", relative, "events.jsonl", "wrong.yaml"]


def test_letters_that_fail_again_go_to_a_new_file_and_the_input_is_left_as_it_was(user_sim, workdir, failed_run):
    wrong, letters = failed_run
    before = digest(letters)
    relative = str(letters.relative_to(workdir.path))

    proc = replay(workdir, user_sim, wrong, relative)  # still the wrong config: every letter fails again

    assert proc.returncode == 1
    line = one_line_error(proc, f"{EVENTS} letter(s) failed again", "dead/still-failing-")
    (still,) = (workdir.path / "dead").glob("still-failing-*.jsonl")
    assert str(still.relative_to(workdir.path)) in line
    assert re.fullmatch(r"still-failing-\d{8}T\d{6}Z-[0-9a-f]{6}\.jsonl", still.name)
    again = [json.loads(line) for line in still.read_text().splitlines()]
    assert len(again) == EVENTS and {(a["stage"], a["reason"]) for a in again} == {("replay", "http_400")}
    assert sorted(a["event"]["messageId"] for a in again) == sorted(f"m{n}" for n in range(EVENTS))
    assert all(a["attempts"] >= 2 for a in again)  # the run's attempt and the replay's
    assert digest(letters) == before

    # a named --out that exists (the input itself, or a file from before) is refused before anything is sent
    calls = user_sim.stats()["requests_total"]
    for existing in (relative, str(still.relative_to(workdir.path))):
        refused = replay(workdir, user_sim, DEMO_CONFIG, relative, "--out", existing)
        one_line_error(refused, "exists already", "never writes over")
    assert user_sim.stats()["requests_total"] == calls
    assert digest(letters) == before and len(still.read_text().splitlines()) == EVENTS


def test_a_letter_without_its_event_is_sent_as_the_request_it_stored(user_sim, workdir):
    request = {"contact_user_id": "u_stored", "contact_name": "Stored", "lead_company_id": "c_stored", "event_ids": ["m_s"]}
    (workdir.path / "letters.jsonl").write_text(
        json.dumps({"stage": "upsert", "reason": "http_500", "event": None, "request": request, "event_ids": ["m_s"]})
        + "\n"
    )

    proc = replay(workdir, user_sim, DEMO_CONFIG, "letters.jsonl")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "replayed 1 letter(s) (0 re-mapped with this config, 1 as stored) as 1 request(s): created 1"
    (lead,) = user_sim.state()["leads"]
    assert lead["custom.cf_demo_company_id"] == "c_stored" and lead["contacts"][0]["name"] == "Stored"
