"""The whole job (DirectRunner, files source, the simulator) on JSONL files of hostile lines among good events.

Each example first syncs the good events alone, then runs the job on a file where the same good events
are shuffled among hypothesis-generated hostile events, garbage lines and bytes that are not UTF-8.
Invariants: the run finishes; every line read ends applied, skipped or dead-lettered (the counters add
up); every dead letter is a UTF-8 JSON line with a reason; every good event is applied; no contact the
good events made changes its user id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.sources import SourceOptions
from tests.fuzz.budget import budget
from tests.fuzz.strategies import dumps, emails, hostile_values, phones, raw_bytes, urls, wire_events
from tests.reliability.rel_helpers import applied_ids, fresh, identify, run_job, w1_events
from transforms import metrics as m

pytestmark = pytest.mark.integration

GOOD = w1_events(users=6, companies=3, per_user=5)
GOOD_IDS = {e["messageId"] for e in GOOD}
MAPPINGS = {"mappings": [{"name": "identify", "preset": "identify"}, {"name": "group", "preset": "group"}]}


def jsonl_line(raw: Any) -> bytes:
    """One payload as a line of a JSONL file: text as UTF-8 (a lone surrogate as the bytes a careless
    encoder writes), and no raw newline, which would make two lines of it."""
    if isinstance(raw, dict):
        blob = dumps(raw).encode("ascii")
    elif isinstance(raw, str):
        blob = raw.encode("utf-8", "surrogatepass")
    else:
        blob = bytes(raw)
    return blob.replace(b"\n", b" ")


not_utf8 = st.one_of(
    st.sampled_from(
        [
            b"\xff\xfe{}",
            b"\xc3\x28",
            b'{"type":"identify","userId":"u\xff","messageId":"bad_byte"}',
            b'{"type":"identify","userId":"u_s","traits":{"name":"\xed\xa0\x80"}}',  # a UTF-8-encoded surrogate
            b'{"type":"identify","userId":"\xc0\xaf"}',  # an overlong encoding
        ]
    ),
    st.binary(min_size=1, max_size=60),
)


def with_trait(event: dict[str, Any], trait: str, value: Any) -> dict[str, Any]:
    return {**event, "traits": {**event["traits"], trait: value}}


garbage_lines = st.one_of(not_utf8, raw_bytes).map(jsonl_line).filter(bytes.strip)
# Other users' identify events, on the good events' companies, each with one hostile trait (a good
# user's email among them: the email fallback must not take that user's contact).
poisoned = st.builds(
    lambda user, company, n, trait, value: with_trait(identify(100 + user, company, n), trait, value),
    st.integers(0, 9),
    st.integers(0, 2),
    st.integers(0, 3),
    st.sampled_from(["email", "phone", "website", "name", "title", "company"]),
    st.one_of(
        st.sampled_from(sorted(e["traits"]["email"] for e in GOOD)), emails, phones, urls, hostile_values
    ),
)
event_lines = st.one_of(poisoned, wire_events()).map(jsonl_line).filter(bytes.strip)


@st.composite
def event_files(draw: st.DrawFn) -> list[bytes]:
    """The good events shuffled among 30 to 110 hostile lines: events, garbage and bytes that are not UTF-8."""
    lines = [jsonl_line(e) for e in GOOD]
    lines += draw(st.lists(event_lines, min_size=15, max_size=50))
    lines += draw(st.lists(garbage_lines, min_size=15, max_size=60))
    return draw(st.permutations(lines))


def write_lines(path: Path, lines: list[bytes]) -> int:
    """Writes the file; returns the lines the reader hands on (it skips blank ones)."""
    path.write_bytes(b"\n".join(lines) + b"\n")
    return sum(1 for line in lines if line.strip())


def dead_letter_lines(workdir: Path) -> list[dict[str, Any]]:
    letters = []
    for f in sorted((workdir / "dead").rglob("*.jsonl")):
        for line in f.read_bytes().decode("utf-8").splitlines():  # strict: a letter must be UTF-8
            if line.strip():
                letters.append(json.loads(line))
    return letters


def user_ids(sim: Any, cf: dict[str, str]) -> dict[str, Any]:
    return {c["id"]: c.get(f"custom.{cf['user']}") for c in sim.contacts()}


def run(
    sim: Any, config: Any, workdir: Path, lines: list[bytes], monkeypatch: Any
) -> tuple[dict[str, int], int]:
    workdir.mkdir(parents=True)
    read = write_lines(workdir / "events.jsonl", lines)
    source = SourceOptions(source="files", input=str(workdir / "events.jsonl"))
    return run_job(sim, config, source, workdir, monkeypatch), read


@budget(4)
@given(lines=event_files())
def test_the_job_on_hostile_files_accounts_for_every_line_and_applies_every_good_event(
    sim, tmp_path_factory, monkeypatch, lines
):
    root = tmp_path_factory.mktemp("job")
    config, cf = fresh(sim, root, MAPPINGS)
    run(sim, config, root / "good", [jsonl_line(e) for e in GOOD], monkeypatch)
    before = user_ids(sim, cf)
    assert sorted(before.values()) == sorted({e["userId"] for e in GOOD})

    values, read = run(sim, config, root / "mixed", lines, monkeypatch)

    applied, skipped, dead = (
        values.get(k, 0) for k in (m.EVENTS_APPLIED, m.EVENTS_SKIPPED, m.EVENTS_DEAD_LETTERED)
    )
    assert values.get(m.EVENTS_READ, 0) == read
    assert applied + skipped + dead == read, values
    letters = dead_letter_lines(root / "mixed")
    assert len(letters) == dead
    for letter in letters:
        assert isinstance(letter.get("reason"), str) and letter["reason"], letter
        assert not GOOD_IDS & set(letter.get("event_ids") or ()), letter
    assert GOOD_IDS <= set(applied_ids(root / "mixed"))
    after = user_ids(sim, cf)
    changed = {cid: (uid, after.get(cid)) for cid, uid in before.items() if after.get(cid) != uid}
    assert not changed, f"contacts whose user id changed: {changed}"
