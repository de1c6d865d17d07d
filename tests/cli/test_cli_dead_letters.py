"""Dead letters as a new user meets them: `close-sync run` in a subprocess against `close-sync sim`, then
the exit code, the one line it prints and the files it leaves behind.

- No --dead-letter: the letters are kept in a folder of the run's own, whose file the last line names.
- Every run writes a new file named by its run id (start time and a random part); none is overwritten.
- A letter names its event by the messageId it could read, says which file and line it came from, and
  shows the event as it was sent (nothing the job filled in).
- A value that cannot be sent (a phone, an email, a URL, a title, a custom-field value) is left out and
  recorded in the audit log and the run's counters; the rest of the event is applied.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.cli.helpers_user import (
    DEMO_CONFIG,
    REPO,
    SIM_KEY,
    SimProcess,
    Workdir,
    one_line_error,
    summary_rows,
)
from tests.cli.helpers_user import identify as user_identify

pytestmark = pytest.mark.integration

KEY = {"CLOSE_API_KEY": SIM_KEY}
# dead-letters-<run id>.jsonl, the run id being the run's start in UTC and 24 random bits
LETTERS_FILE = re.compile(r"dead-letters-(\d{8}T\d{6}Z)-[0-9a-f]{6}\.jsonl")


def identify(n: int, **traits: Any) -> dict[str, Any]:
    """Three companies, so a user's letter can share a lead with others."""
    return user_identify(n, 3, **traits)


def write_lines(workdir: Workdir, name: str, rows: list[Any]) -> str:
    path = workdir.path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return name


def run(workdir: Workdir, sim: SimProcess, events: str, *extra: str, config: Path = DEMO_CONFIG):
    return workdir.run(
        "run", "--config", str(config), "--source", "files", "--input", events,
        "--close-url", sim.base_url, "--quiet", *extra, env=KEY,
    )


def letters(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def contacts(sim: SimProcess) -> dict[str, dict[str, Any]]:
    return {c.get("custom.cf_demo_user_id"): c for lead in sim.state()["leads"] for c in lead["contacts"]}


def started_recently(stamp: str) -> bool:
    moment = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return timedelta(0) <= datetime.now(UTC) - moment < timedelta(minutes=10)


# ------------------------------------------------------------------ item 1: kept without --dead-letter


def test_a_run_without_dead_letter_keeps_its_letters_in_a_folder_of_its_own_and_prints_its_path(
    user_sim, workdir
):
    events = write_lines(workdir, "events.jsonl", [identify(1), "{not json", identify(2), '["an", "array"]'])
    proc = run(workdir, user_sim, events)

    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc, "2 event(s) were dead-lettered", "close-sync-runs/")
    (path,) = re.findall(r"close-sync-runs/\S+?\.jsonl", line)
    folder, name = Path(path).parent, Path(path).name
    assert folder.parent == Path("close-sync-runs") and name == f"dead-letters-{folder.name}.jsonl"
    assert LETTERS_FILE.fullmatch(name) and started_recently(LETTERS_FILE.fullmatch(name).group(1))
    assert workdir.left_behind() == sorted(["close-sync-runs", str(folder), path, "events.jsonl"])
    kept = letters(workdir.path / path)
    assert sorted(letter["reason"] for letter in kept) == ["not_an_object", "unparseable_json"]
    assert {letter["run_id"] for letter in kept} == {folder.name}
    assert sorted(contacts(user_sim)) == ["u1", "u2"]


def test_a_run_without_dead_letters_leaves_no_folder_behind(user_sim, workdir):
    events = write_lines(workdir, "events.jsonl", [identify(1), identify(2)])
    proc = run(workdir, user_sim, events)
    assert proc.returncode == 0, proc.stderr
    assert "Error" not in proc.stderr and "dead-letters" not in proc.stdout + proc.stderr
    assert workdir.left_behind() == ["events.jsonl"]


# ------------------------------------------------------------------ item 2: one new file per run


def test_each_run_writes_its_own_letters_file_and_none_is_overwritten(user_sim, workdir):
    eleven = write_lines(workdir, "eleven.jsonl", [f"{{broken line {n}" for n in range(11)])
    clean = write_lines(workdir, "clean.jsonl", [identify(1), identify(2)])
    one = write_lines(workdir, "one.jsonl", [identify(3), "{broken again"])

    first = run(workdir, user_sim, eleven, "--dead-letter", "dead")
    assert first.returncode == 1
    one_line_error(first, "11 event(s) were dead-lettered", "dead/dead-letters-")
    (first_file,) = sorted((workdir.path / "dead").glob("dead-letters-*.jsonl"))
    before = first_file.read_bytes()
    assert len(letters(first_file)) == 11

    second = run(workdir, user_sim, clean, "--dead-letter", "dead")  # nothing dead-lettered this time
    assert second.returncode == 0, second.stderr
    third = run(workdir, user_sim, one, "--dead-letter", "dead")
    assert third.returncode == 1
    third_line = one_line_error(third, "1 event(s) were dead-lettered")

    files = sorted((workdir.path / "dead").glob("dead-letters-*.jsonl"))
    assert len(files) == 2 and files[0] == first_file  # the clean run left no empty file
    assert first_file.read_bytes() == before  # the 11 letters are still there, byte for byte
    assert files[1].name in third_line and len(letters(files[1])) == 1
    stamps = [LETTERS_FILE.fullmatch(f.name).group(1) for f in files]
    assert all(started_recently(s) for s in stamps) and stamps == sorted(stamps)
    run_ids = [{letter["run_id"] for letter in letters(f)} for f in files]
    assert [ids.pop() for ids in run_ids] == [f.name.removeprefix("dead-letters-").removesuffix(".jsonl") for f in files]


def test_replay_takes_a_folder_of_runs_and_never_writes_into_their_files(user_sim, workdir):
    """Two runs' letters in one --dead-letter folder, replayed by naming the folder."""
    bad = workdir.path / "bad.yaml"
    bad.write_text(DEMO_CONFIG.read_text().replace("cf_demo_plan", "cf_seats"))
    user_sim._admin("POST", "seed", {"custom_fields": {"contact": [{"id": "cf_seats", "name": "Seats", "type": "number"}]}})
    first = write_lines(workdir, "first.jsonl", [identify(n, plan="pro") for n in range(3)])
    second = write_lines(workdir, "second.jsonl", [identify(n, plan="pro") for n in range(3, 5)])
    for events in (first, second):
        proc = run(workdir, user_sim, events, "--dead-letter", "dead", config=bad)
        assert proc.returncode == 1
        one_line_error(proc, "upsert:http_400")
    files = sorted((workdir.path / "dead").glob("dead-letters-*.jsonl"))
    assert [len(letters(f)) for f in files] == [3, 2]
    before = {f: f.read_bytes() for f in files}

    proc = workdir.run("replay", "--config", str(DEMO_CONFIG), "--dead-letter", "dead", "--close-url", user_sim.base_url, env=KEY)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "replayed 5 letter(s) (5 re-mapped with this config, 0 as stored) as 5 request(s): created 5"
    )
    assert {f: f.read_bytes() for f in files} == before
    assert not list((workdir.path / "dead").glob("still-failing-*"))
    assert {u: c.get("custom.cf_demo_plan") for u, c in contacts(user_sim).items()} == {f"u{n}": "pro" for n in range(5)}


# ------------------------------------------------------------------ item 11: letters you can trace


def test_a_letter_names_its_event_by_its_message_id_and_the_file_and_line_it_was_read_from(user_sim, workdir):
    unknown_type = {"type": "warp", "messageId": "msg-warp", "userId": "u9"}
    bad_company = {"type": "identify", "messageId": "msg-company", "userId": "u8", "traits": {"company": {"id": {"no": 1}}}}
    no_message_id = {"type": "identify", "userId": "u7", "traits": {"company": {"id": [1, 2]}}}
    events = write_lines(workdir, "events.jsonl", [identify(1), unknown_type, "{not json", bad_company, no_message_id])

    proc = run(workdir, user_sim, events, "--dead-letter", "dead")

    assert proc.returncode == 1
    one_line_error(proc, "4 event(s) were dead-lettered", "dead/dead-letters-")
    (path,) = (workdir.path / "dead").glob("dead-letters-*.jsonl")
    by_line = {letter["source"]["line"]: letter for letter in letters(path)}
    assert sorted(by_line) == [2, 3, 4, 5]
    assert all(letter["source"]["file"].endswith("events.jsonl") for letter in by_line.values())
    warp, garbage, company, unnamed = (by_line[n] for n in (2, 3, 4, 5))
    assert (warp["stage"], warp["reason"], warp["event_ids"]) == ("parse", "unknown_type", ["msg-warp"])
    assert garbage["reason"] == "unparseable_json" and garbage["event_ids"][0].startswith("raw:")
    # a map-stage letter shows the event as it was sent: no timestamp or messageId the job filled in
    assert (company["stage"], company["reason"]) == ("map", "wrong_type:lead_company_id")
    assert company["event"] == bad_company and company["event_ids"] == ["msg-company"]
    assert unnamed["event"] == no_message_id and unnamed["event_ids"][0].startswith("gen-")
    assert sorted(contacts(user_sim)) == ["u1"]


def test_a_value_that_cannot_be_sent_is_left_out_recorded_and_the_rest_of_the_event_applied(user_sim, workdir):
    events = write_lines(
        workdir,
        "events.jsonl",
        [
            identify(1, phone="call me maybe"),  # the case: a bad phone, a good email
            identify(2, email="not-an-email", title="CTO"),  # the user id stays the identity
            identify(3, website="javascript:alert(1)", plan={"tier": "pro"}),
            # the email was the only identity: nothing can find this person, so the request is skipped
            {"type": "identify", "messageId": "m4", "anonymousId": "a4", "traits": {"email": "nope", "name": "Anon"}},
        ],
    )

    proc = run(workdir, user_sim, events, "--dead-letter", "dead", "--audit-log", "audit.jsonl")

    assert proc.returncode == 0, proc.stderr
    assert "Error" not in proc.stderr
    assert not list((workdir.path / "dead").glob("dead-letters*"))  # nothing to keep: no file
    people = contacts(user_sim)
    assert sorted(people) == ["u1", "u2", "u3"]
    assert [e["email"] for e in people["u1"]["emails"]] == ["user1@example.com"] and not people["u1"]["phones"]
    assert not people["u2"]["emails"] and people["u2"]["title"] == "CTO"
    assert not people["u3"]["urls"] and "custom.cf_demo_plan" not in people["u3"]
    audit = {line["event_ids"][0]: line for line in letters(workdir.path / "audit.jsonl")}
    mapping = "Identify to Close"
    assert {m: audit[m]["dropped"] for m in audit} == {
        "m1": [{"field": "contact_phone", "reason": "invalid_phone", "mapping": mapping}],
        "m2": [{"field": "contact_email", "reason": "invalid_email", "mapping": mapping}],
        "m3": [
            {"field": "contact_url", "reason": "invalid_url", "mapping": mapping},
            {"field": "contact_custom_fields.cf_demo_plan", "reason": "wrong_type:contact_custom_fields", "mapping": mapping},
        ],
        "m4": [{"field": "contact_email", "reason": "invalid_email", "mapping": mapping}],
    }
    assert [audit[m]["outcome"] for m in ("m1", "m2", "m3", "m4")] == ["created"] * 3 + ["skipped:no_identity"]
    # the run's own record of them: its counters, in the summary
    rows = {label: n for _, label, n in summary_rows(proc.stdout)}
    assert rows["fields_dropped"] == 5
    assert rows["fields_dropped:contact_phone:invalid_phone"] == 1
    assert rows["fields_dropped:contact_email:invalid_email"] == 2


def test_the_readme_names_every_reason_and_what_is_left_out_rather_than_dead_lettered():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Outcomes and dead letters") :]
    section = section[: section.index("\n## ", 4)]
    for reason in ("invalid_email", "invalid_phone", "invalid_url", "wrong_type:<field>", "no_identity"):
        assert reason in section, reason
    assert "close-sync-runs/<run id>/" in section and "dead-letters-<run id>.jsonl" in section
    assert "still-failing-<replay id>.jsonl" in section
