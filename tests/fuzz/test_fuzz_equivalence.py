"""Differential: collapsed and batched equals one at a time, on dense, messy CRMs.

Random organisations (leads with and without company ids, contacts with and without user ids,
emails shared across people and leads, in random case) get random bursts of events (several per
person, anonymous visitors, identify and group mixed, flags switched off). The reference applies
every request alone, in timestamp order (`one_at_a_time_reference`). The paths under test do what
the job does: collapse per person (over the whole input, or per processing-time pane cut at
random points of the person's requests in arrival order), suppress what is identical to the
person's last request, put the requests in the writer's flush order and apply them through one
engine stream cut into batches of random sizes.

Bursts where another person's event falls inside what one sent request stands for are left out:
collapsing is per person and cannot see them (docs/DESIGN.md, "What collapsing cannot see").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apache_beam.pvalue import TaggedOutput
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from closecrm.engine import UpsertEngine
from closecrm.engine.ordering.spans import batches
from closecrm.events.mapping import (
    ALIAS_PRESET,
    DEFAULT_MAPPING,
    GROUP_PRESET,
    MappingSpec,
    compile_mappings,
    map_event,
)
from closecrm.events.parse import parse_event
from closecrm.model import Flags, UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_property import Reference, one_at_a_time_reference
from tests.fuzz.budget import budget
from transforms.collapse import Pending, _SuppressIdentical, collapse_persons
from transforms.mapping import person_key
from transforms.writer import flush_order

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)
COMPANIES = ["co1", "co2", "co3"]
USERS = ["u1", "u2", "u3"]
ANONYMOUS = ["a1", "a2"]
EMAILS = ["ann@x.example", "bob@x.example", "cy@y.example"]
NAMES = ["Ann", "Bob", "Cy"]


def cased(email: str, how: int) -> str:
    return [email, email.upper(), email.capitalize()][how]


emails = st.builds(cased, st.sampled_from(EMAILS), st.integers(0, 2))


def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), values)


@st.composite
def seeded_leads(
    draw: st.DrawFn,
    users: st.SearchStrategy[str | None] = maybe(st.sampled_from(USERS)),
    leads_per_org: st.SearchStrategy[int] = st.integers(0, 3),
    contacts_per_lead: st.SearchStrategy[int] = st.integers(0, 2),
) -> list[dict[str, Any]]:
    """Leads with or without a company id (two may share one), contacts with or without a user id."""
    leads = []
    for _ in range(draw(leads_per_org)):
        contacts = [
            {
                "user": draw(users),
                "name": draw(maybe(st.sampled_from(NAMES))),
                "emails": draw(st.lists(emails, max_size=2, unique_by=str.lower)),
            }
            for _ in range(draw(contacts_per_lead))
        ]
        leads.append(
            {
                "company": draw(maybe(st.sampled_from(COMPANIES))),
                "name": draw(maybe(st.sampled_from(["Acme", "Solo"]))),
                "contacts": contacts,
            }
        )
    return leads


def traits(draw: st.DrawFn) -> dict[str, Any]:
    """Some of email (in random case), name, title, phone, company id and name."""
    out: dict[str, Any] = {}
    for key, values in (
        ("email", emails),
        ("name", st.sampled_from(NAMES)),
        ("title", st.sampled_from(["CEO", "Dev"])),
        ("phone", st.sampled_from(["+14155550100", "+14155550101"])),
    ):
        if draw(st.booleans()):
            out[key] = draw(values)
    if draw(st.booleans()):
        out["company"] = {"id": draw(st.sampled_from(COMPANIES))}
        if draw(st.booleans()):
            out["company"]["name"] = draw(st.sampled_from(["Acme", "Beta"]))
    return out


@st.composite
def bursts(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Identify and group events of known users and anonymous visitors, without their times.

    Each person has usual traits that most of their identifies repeat, now and then with some
    values changed (so their requests collapse); the rest carry traits of their own.
    """
    people = draw(st.lists(st.sampled_from(USERS + ANONYMOUS), min_size=2, max_size=4, unique=True))
    usual = {person: traits(draw) for person in people}
    out: list[dict[str, Any]] = []
    size = draw(st.integers(2, 8))
    while len(out) < size:
        person = draw(st.sampled_from(people))
        who = {"userId": person} if person in USERS else {"anonymousId": person}
        for _ in range(draw(st.integers(1, 3))):  # a person's events often come in a row
            out.append(one_event(draw, who, usual[person]))
    return out


def one_event(draw: st.DrawFn, who: dict[str, str], usual: dict[str, Any]) -> dict[str, Any]:
    """A group call, or an identify with the person's usual traits (some changed) or other ones."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return {"type": "group", **who, "groupId": draw(st.sampled_from(COMPANIES)), "traits": {}}
    if kind <= 3:
        said = dict(usual)
        if kind == 3:
            said.update(traits(draw))
    else:
        said = traits(draw)
    return {"type": "identify", **who, "traits": said}


flags = st.one_of(
    st.just(Flags()),
    st.builds(
        Flags,
        allow_creating_new_leads=st.sampled_from([True, True, False]),
        allow_updating_existing_leads=st.sampled_from([True, True, False]),
        allow_creating_new_contacts=st.sampled_from([True, True, False]),
        allow_creating_duplicate_contacts=st.booleans(),
        allow_updating_existing_contacts=st.sampled_from([True, True, False]),
    ),
)


@dataclass(frozen=True)
class Burst:
    """Events in timestamp order (and arrival order), each with its person key and requests."""

    persons: list[str]
    requests: list[list[UpsertRequest]]
    raw: list[dict[str, Any]]

    def in_order(self) -> list[UpsertRequest]:
        return [r for reqs in self.requests for r in reqs]

    def keyed(self) -> list[tuple[str, tuple[UpsertRequest, Any]]]:
        """(person, (request, event)) in arrival order: what CollapsePerPerson receives."""
        return [
            (person, (r, raw))
            for person, reqs, raw in zip(self.persons, self.requests, self.raw, strict=True)
            for r in reqs
        ]


def burst(
    raws: list[dict[str, Any]], identify_flags: Flags, group_flags: Flags, alias_flags: Flags | None = None
) -> Burst:
    """Each event timed one second after the previous (message id ``m<n>`` at second n), mapped
    through the identify and group presets with these flags (and the alias preset, given its flags)."""
    presets = [(DEFAULT_MAPPING, identify_flags), (GROUP_PRESET, group_flags)]
    if alias_flags is not None:
        presets.append((ALIAS_PRESET, alias_flags))
    mappings = compile_mappings(
        [MappingSpec(spec.name, spec.trigger, dict(spec.fields), flags) for spec, flags in presets]
    )
    persons, requests, kept = [], [], []
    for n, raw in enumerate(raws):
        parsed = parse_event(
            {**raw, "messageId": f"m{n}", "timestamp": (T0 + timedelta(seconds=n)).isoformat()}
        )
        reqs = map_event(parsed, mappings)
        persons.append(person_key(parsed, reqs[0]) if reqs else "")
        requests.append(reqs)
        kept.append(parsed.raw)
    return Burst(persons, requests, kept)


def seed_dense(env: CloseEnv, leads: list[dict[str, Any]]) -> Counter[str]:
    """Seed the drawn leads, oldest first in list order; returns leads per company."""
    docs = []
    n = 0
    for lead in leads:
        n += 1
        doc: dict[str, Any] = {"date_created": f"2020-01-{n:02d}T00:00:00+00:00", "contacts": []}
        if lead["company"]:
            doc[env.company_cf] = lead["company"]
        if lead["name"]:
            doc["name"] = lead["name"]
        for c in lead["contacts"]:
            n += 1
            contact: dict[str, Any] = {
                "date_created": f"2020-01-{n:02d}T00:00:00+00:00",
                "emails": [{"email": e, "type": "office"} for e in c["emails"]],
            }
            if c["user"]:
                contact[env.user_cf] = c["user"]
            if c["name"]:
                contact["name"] = c["name"]
            doc["contacts"].append(contact)
        docs.append(doc)
    env.seed_leads(*docs)
    return Counter(lead["company"] for lead in leads if lead["company"])


def cut(items: Sequence[Any], sizes: list[int]) -> list[list[Any]]:
    """``items`` in consecutive pieces of the given sizes (cycled)."""
    out, i, k = [], 0, 0
    while i < len(items):
        size = max(1, sizes[k % len(sizes)])
        out.append(list(items[i : i + size]))
        i += size
        k += 1
    return out


@dataclass
class Sent:
    """A request the writer gets, and the events it stands for: its own and those of the identical
    requests suppressed after it."""

    pending: Pending
    covers: list[str]
    repeats: list[UpsertRequest] = field(default_factory=list)  # the identical requests suppressed after it


def bounded(b: Burst, by_user_id: bool = True) -> list[Sent]:
    """Bounded input: collapsed per person over the whole input (no suppression stage). ``by_user_id``:
    as the job collapses for a destination whose user-id field is configured (every `CloseEnv`'s is)."""
    return [
        Sent(Pending(person, request, events), list(request.event_ids))
        for person, pairs in collapse_persons(b.keyed(), by_user_id)
        for request, events in pairs
    ]


def streaming(b: Burst, pane_sizes: list[int], by_user_id: bool = True) -> list[Sent]:
    """Unbounded input: processing-time panes cut at random points of each person's requests in
    arrival order, each collapsed alone (as `_CollapsePanes` fires them), then suppressed."""
    per_person: dict[str, list[tuple[str, tuple[UpsertRequest, Any]]]] = {}
    for item in b.keyed():
        per_person.setdefault(item[0], []).append(item)
    panes = [pane for items in per_person.values() for pane in cut(items, pane_sizes)]
    return suppressed(out for pane in panes for out in collapse_persons(pane, by_user_id))


class _LastDigest:
    """The suppression gate's per-person state (Beam's ReadModifyWriteState, in memory)."""

    def __init__(self) -> None:
        self.value: str | None = None

    def read(self) -> str | None:
        return self.value

    def write(self, value: str) -> None:
        self.value = value


def suppressed(collapsed: Iterable[tuple[str, list[tuple[UpsertRequest, Any]]]]) -> list[Sent]:
    """What `SuppressIdentical`'s gate lets through, per person in the order collapsing emitted."""
    gate = _SuppressIdentical(ttl_seconds=0)
    last: dict[str, _LastDigest] = {}
    sent: dict[str, Sent] = {}
    out: list[Sent] = []
    for person, pairs in collapsed:
        for request, events in pairs:
            pending = Pending(person, request, events)
            verdict = list(gate._gate((person, pending), last.setdefault(person, _LastDigest())))
            if any(isinstance(v, TaggedOutput) for v in verdict):
                sent[person].covers.extend(request.event_ids)
                sent[person].repeats.append(request)
                continue
            sent[person] = Sent(pending, list(request.event_ids))
            out.append(sent[person])
    return out


def straddled(b: Burst, sent: list[Sent]) -> bool:
    """Does another person's event fall between the first and the last event a sent request stands for?"""
    person_at = {n: p for n, (p, reqs) in enumerate(zip(b.persons, b.requests, strict=True)) if reqs}
    for s in sent:
        times = sorted(int(e.removeprefix("m")) for e in s.covers)
        if any(
            person_at.get(n, s.pending.person) != s.pending.person for n in range(times[0] + 1, times[-1])
        ):
            return True
    return False


def apply_stream(env: CloseEnv, reqs: list[UpsertRequest], sizes: list[int], depth: int) -> None:
    """Through the engine's stream in lookup batches of the given sizes, cut where the writer may cut."""

    async def go(engine: UpsertEngine) -> None:
        async for _ in engine.upsert_stream(batches(reqs, sizes, lambda r: r), depth=depth):
            pass

    env.run(go)


@budget(500)
@given(
    leads=seeded_leads(),
    raws=bursts(),
    identify_flags=flags,
    group_flags=flags,
    batch_sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    pane_sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    depth=st.sampled_from([1, 2, 25]),
)
def test_collapsed_and_batched_equals_one_at_a_time(
    close: CloseEnv,
    leads: list[dict[str, Any]],
    raws: list[dict[str, Any]],
    identify_flags: Flags,
    group_flags: Flags,
    batch_sizes: list[int],
    pane_sizes: list[int],
    depth: int,
) -> None:
    check(close, leads, burst(raws, identify_flags, group_flags), batch_sizes, pane_sizes, depth)


def check(
    close: CloseEnv,
    leads: list[dict[str, Any]],
    b: Burst,
    batch_sizes: list[int],
    pane_sizes: list[int],
    depth: int,
    inspect: Callable[[str, Reference], None] | None = None,
    merges: bool = False,
) -> None:
    """Both paths of the job (bounded, streaming panes) against one at a time, in event order, without
    the repeats the gate dropped (`contract`); ``inspect`` sees each path's reference first. Without
    ``merges`` (aliases), each company also keeps exactly its seeded leads (at least one)."""
    paths = {"bounded": bounded(b), "streaming": streaming(b, pane_sizes)}
    requests = b.in_order()
    note(f"collapsed (bounded): {len(paths['bounded']) < len(requests)}")
    note(f"people: {len({p for p, reqs in zip(b.persons, b.requests, strict=True) if reqs})}")
    references: dict[frozenset[str], Reference] = {}
    for name, sent in paths.items():
        note(f"another person inside a span ({name}): {straddled(b, sent)}")
        repeats = not_resent(sent)
        note(f"identical repeats not re-sent ({name}): {bool(repeats)}")
        if repeats not in references:
            references[repeats] = one_at_a_time_reference(close, leads, contract(requests, repeats), seed_dense)
        reference = references[repeats]
        if inspect is not None:
            inspect(name, reference)
        reference.again(close)
        apply_stream(close, [p.request for p in flush_order([s.pending for s in sent])], batch_sizes, depth)
        if merges:
            assert close.projection() == reference.state, name
        else:
            reference.assert_state_matched_by(close, name)


def contract(requests: list[UpsertRequest], repeats: frozenset[str]) -> list[UpsertRequest]:
    """What the end state must equal applied one at a time: every request but the repeats the gate
    did not send again (docs/DESIGN.md, "Collapsing")."""
    return [r for r in requests if not set(r.event_ids) <= repeats]


def note(label: str) -> None:
    """A hypothesis statistics line, when a property test is running (named examples call `check` too)."""
    if currently_in_test_context():
        event(label)


def not_resent(sent: list[Sent]) -> frozenset[str]:
    """The events of requests the gate did not send again, checked to be what the rule allows: a
    request identical in content to the last one sent for that person. The one-at-a-time reference
    leaves exactly these events out (docs/DESIGN.md, "Identical to last applied costs no call")."""
    out: set[str] = set()
    for s in sent:
        for repeat in s.repeats:
            assert repeat.content() == s.pending.request.content()
            out.update(repeat.event_ids)
    return frozenset(out)


def test_a_repeat_of_the_last_request_sent_is_not_sent_again_even_after_another_persons_change(
    close: CloseEnv,
) -> None:
    """The rule that costs a repeat no call, taken literally (found by `make fuzz`, 2 of 5,000 cases):
    u1 says Ann; a visitor with u1's email says Bob; u1 says Ann again in a pane of its own. The
    gate does not re-send u1's repeat, so the contact stays Bob: the end state is one at a time
    without the repeat, not with it."""
    raws = [
        {"type": "identify", "userId": "u1", "traits": {"name": "Ann", "email": "ann@x.example"}},
        {"type": "identify", "anonymousId": "a1", "traits": {"email": "ann@x.example", "name": "Bob"}},
        {"type": "identify", "userId": "u1", "traits": {"name": "Ann", "email": "ann@x.example"}},
    ]
    b = burst(raws, Flags(), Flags())
    sent = streaming(b, [1])
    assert not_resent(sent) == {"m2"}
    without_repeat = one_at_a_time_reference(close, [], b.in_order()[:2], seed_dense)
    apply_stream(close, [p.request for p in flush_order([s.pending for s in sent])], [200], 1)
    assert [c["name"] for c in close.sim.contacts()] == ["Bob"]
    without_repeat.assert_state_matched_by(close, "streaming")


def test_a_colleagues_request_is_not_moved_past_the_one_that_creates_their_companys_lead(
    close: CloseEnv,
) -> None:
    """Found by `make fuzz` on random inputs: u1's two requests for co2 collapse around u2's; u2's
    company-less request (in the same group) gives u2 a contact, so whoever reaches co2 first
    decides whether that contact's lead is adopted. u1 first, one at a time."""
    raws = [
        {"type": "identify", "userId": "u1", "traits": {"company": {"id": "co2"}}},
        {"type": "identify", "userId": "u2", "traits": {"phone": "+14155550100"}},
        {"type": "group", "userId": "u2", "groupId": "co2", "traits": {}},
        {"type": "group", "userId": "u2", "groupId": "co1", "traits": {}},
        {"type": "identify", "userId": "u1", "traits": {"company": {"id": "co2"}}},
    ]
    check(close, [], burst(raws, Flags(), Flags()), [1], [1], 1)
