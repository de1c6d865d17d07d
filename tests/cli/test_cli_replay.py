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

from tests.cli.helpers_user import DEMO_CONFIG, REPO, SIM_KEY, SimProcess, Workdir, one_line_error

pytestmark = pytest.mark.integration

# PYTHONPATH: the commands run this checkout's code, whichever checkout the venv was installed from.
KEY = {"CLOSE_API_KEY": SIM_KEY, "PYTHONPATH": str(REPO)}
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
    # the record of the letters applied, so a second replay does not apply them again
    assert workdir.left_behind() == ["dead", relative, "dead/replayed-letters.log", "events.jsonl", "wrong.yaml"]


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


def letters_file(path: Path, *letters: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(letter) + "\n" for letter in letters))
    return path


def stored_letter(request: dict[str, Any], event: Any = None, event_ids: list[str] | None = None) -> dict[str, Any]:
    ids = event_ids if event_ids is not None else list(request.get("event_ids", []))
    return {"stage": "upsert", "reason": "http_500", "event": event, "request": request, "event_ids": ids}


def all_contacts(sim: SimProcess) -> list[dict[str, Any]]:
    return [c for lead in sim.state()["leads"] for c in lead["contacts"]]


ALIAS_CONFIG = """\
settings:
  lead_custom_field_id_for_company_id: cf_demo_company_id
  contact_custom_field_id_for_user_id: cf_demo_user_id
mappings:
  - name: Identify to Close
    preset: identify
  - name: Alias to Close
    preset: alias
    allow_merging: {merging}
"""
EVERYTHING = {
    "allow_creating_new_leads": True,
    "allow_updating_existing_leads": True,
    "allow_creating_new_contacts": True,
    "allow_creating_duplicate_contacts": True,
    "allow_updating_existing_contacts": True,
}


@pytest.mark.parametrize(
    ("config_merges", "stored_merges", "named", "merged"),
    [
        (False, True, ["Alias to Close"], False),  # the mapping it names forbids merging now
        (False, True, ["A mapping since removed"], False),  # named mapping gone: what every mapping allows
        (True, True, [], False),  # names none: what every mapping allows (identify never merges)
        (True, False, ["Alias to Close"], True),  # the config allows it: the stored "no" does not count
    ],
)
def test_a_stored_request_is_sent_with_the_flags_of_the_config_given_never_its_own(
    user_sim, workdir, config_merges, stored_merges, named, merged
):
    user_sim._admin(
        "POST",
        "seed",
        {
            "leads": [
                {"name": "Lead A", "contacts": [{"name": "A", "custom.cf_demo_user_id": "u_a"}]},
                {"name": "Lead B", "contacts": [{"name": "B", "custom.cf_demo_user_id": "u_b"}]},
            ]
        },
    )
    config = workdir.path / "alias.yaml"
    config.write_text(ALIAS_CONFIG.format(merging=str(config_merges).lower()))
    alias = {"type": "alias", "messageId": "a1", "userId": "u_b", "previousId": "u_a"}
    request = {
        "alias_previous_id": "u_a",
        "contact_user_id": "u_b",
        "mappings": named,
        "event_ids": ["a1", "a2"],
        "flags": {**EVERYTHING, "allow_merging": stored_merges},
    }
    # the letter holds one of the two events its request was collapsed from: it is sent as stored
    letters_file(workdir.path / "letters.jsonl", stored_letter(request, event=[alias], event_ids=["a1", "a2"]))

    proc = replay(workdir, user_sim, config, "letters.jsonl")

    assert proc.returncode == 0, proc.stderr
    outcome = "updated 1" if merged else "skipped 1"
    assert proc.stdout.strip() == f"replayed 1 letter(s) (0 re-mapped with this config, 1 as stored) as 1 request(s): {outcome}"
    leads = user_sim.state()["leads"]
    assert len(leads) == (1 if merged else 2)
    assert sorted(c["custom.cf_demo_user_id"] for c in all_contacts(user_sim)) == (["u_b"] if merged else ["u_a", "u_b"])


def test_a_stored_request_is_checked_like_a_fresh_one_and_never_sent_when_it_fails(user_sim, workdir):
    bad = {"contact_user_id": "u_ten", "lead_company_id": "c_ten", "contact_emails": "ten@x.com"}
    good = {"contact_user_id": "u_ok", "lead_company_id": "c_ok", "contact_emails": ["ok@x.com"]}
    letters_file(workdir.path / "letters.jsonl", stored_letter(bad), stored_letter(good))

    proc = replay(workdir, user_sim, DEMO_CONFIG, "letters.jsonl")

    line = one_line_error(proc, "1 file(s) or line(s) could not be read and were skipped", status=1)
    assert "failed again" not in line
    assert proc.stdout.splitlines() == [
        "replayed 1 letter(s) (0 re-mapped with this config, 1 as stored) as 1 request(s): created 1; 1 unreadable, skipped",
        "skipped letters.jsonl, line 1: stored request: wrong_type:contact_emails (a str, not a list); not sent",
    ]
    (contact,) = all_contacts(user_sim)  # the good letter only; the bad one sent nothing
    assert contact["custom.cf_demo_user_id"] == "u_ok"
    assert [e["email"] for e in contact["emails"]] == ["ok@x.com"]


def test_replaying_the_same_folder_twice_applies_each_letter_once_unless_asked_again(user_sim, workdir):
    # a contact with a company id but neither user id nor email: nothing finds it, so each send creates one
    keyless = {"lead_company_id": "c_keyless", "contact_name": "No Key", "event_ids": ["m_k"]}
    person = {"lead_company_id": "c_keyless", "contact_user_id": "u_p", "contact_name": "Person", "event_ids": ["m_p"]}
    letters_file(workdir.path / "dead" / "dead-letters-20261201T000000Z-aaaaaa.jsonl", stored_letter(keyless), stored_letter(person))

    first = replay(workdir, user_sim, DEMO_CONFIG, "dead")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith("as 2 request(s): created 2")
    assert sorted(c["name"] for c in all_contacts(user_sim)) == ["No Key", "Person"]

    second = replay(workdir, user_sim, DEMO_CONFIG, "dead")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == (
        "replayed 0 letter(s) (0 re-mapped with this config, 0 as stored) as 0 request(s): nothing to send; "
        "2 letter(s) already replayed, not applied again (--again applies them)"
    )
    assert sorted(c["name"] for c in all_contacts(user_sim)) == ["No Key", "Person"]

    forced = replay(workdir, user_sim, DEMO_CONFIG, "dead", "--again")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip().startswith("replayed 2 letter(s) (0 re-mapped with this config, 2 as stored)")
    assert sorted(c["name"] for c in all_contacts(user_sim)) == ["No Key", "No Key", "Person"]


def test_what_cannot_be_read_is_skipped_and_listed_and_the_rest_is_replayed(user_sim, workdir):
    dead = workdir.path / "dead"
    flags = {"contact_user_id": "u_f", "lead_company_id": "c_f", "flags": {"allow_everything": True}}
    good = letters_file(
        dead / "dead-letters-20261201T000000Z-aaaaaa.jsonl",
        stored_letter({"contact_user_id": "u_1", "lead_company_id": "c_1"}),
        stored_letter(flags),  # an unknown flag: the stored flags are not used at all
    )
    with good.open("a") as fh:
        fh.write(json.dumps(stored_letter({"contact_user_id": "u_2"}))[:40])  # the last line cut short
    (dead / "dead-letters-old.jsonl").mkdir()  # a folder matching the pattern
    (dead / "dead-letters-20261202T000000Z-bbbbbb.jsonl").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" * 20)
    (dead / "dead-letters-20261203T000000Z-cccccc.jsonl").write_text(
        json.dumps(identify(3)) + "\n" + "[1, 2]\n" + json.dumps(stored_letter({"contact_user_id": "u_3b"})) + "\n"
    )

    proc = replay(workdir, user_sim, DEMO_CONFIG, "dead")

    one_line_error(proc, "5 file(s) or line(s) could not be read and were skipped", status=1)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("replayed 3 letter(s) (0 re-mapped with this config, 3 as stored) as 3 request(s): created 3")
    assert lines[0].endswith("; 5 unreadable, skipped")
    assert lines[1:] == [
        "skipped dead/dead-letters-old.jsonl: not a file (a folder?), skipped",
        "skipped dead/dead-letters-20261201T000000Z-aaaaaa.jsonl, line 3: cut short: the file ends mid-line "
        "(killed while written?)",
        "skipped dead/dead-letters-20261202T000000Z-bbbbbb.jsonl: a binary file, not dead letters (JSON lines)",
        "skipped dead/dead-letters-20261203T000000Z-cccccc.jsonl, line 1: holds neither an event nor a request",
        "skipped dead/dead-letters-20261203T000000Z-cccccc.jsonl, line 2: not a dead letter (a JSON object per line)",
    ]
    assert sorted(c["custom.cf_demo_user_id"] for c in all_contacts(user_sim)) == ["u_1", "u_3b", "u_f"]


def test_out_in_a_missing_folder_is_refused_before_anything_is_sent(user_sim, workdir):
    too_large = {"type": "identify", "messageId": "m_big", "userId": "u_big", "traits": {"note": "x" * 40_000}}
    letters_file(
        workdir.path / "letters.jsonl",
        stored_letter({"contact_user_id": "u_1", "lead_company_id": "c_1"}),
        {"stage": "parse", "reason": "too_large", "event": too_large, "event_ids": ["m_big"]},
    )
    config = workdir.path / "small.yaml"
    config.write_text(DEMO_CONFIG.read_text() + "  max_event_bytes: 4096\n")

    proc = replay(workdir, user_sim, config, "letters.jsonl", "--out", "missing/still.jsonl")

    one_line_error(proc, "--out missing/still.jsonl", "the folder missing does not exist", status=1)
    assert user_sim.stats()["requests_total"] == 0
    assert workdir.left_behind() == ["letters.jsonl", "small.yaml"]
