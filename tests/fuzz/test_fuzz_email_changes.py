"""Differential: a person whose email changes is collapsed into fewer requests, and Close ends the same.

With the user-id field configured, a known user's requests merge whatever their emails when their
flags let the first one leave the user id on what the later ones look up
(`closecrm.events.collapse.found_by_user_id_after`). This drives that rule at its edges: people
whose email changes from event to event (sometimes none, sometimes in another case), with and
without a user id; every allow_* switch off in turn; visitors and other users giving the same
emails in between; and organisations that already hold those emails, on contacts without a user
id, with the person's user id, or with another user's. The reference applies every request alone,
in event order (`tests/fuzz/test_fuzz_equivalence.py`, `check`: both the bounded and the
pane-by-pane streaming path, batched at random).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from closecrm.events.collapse import parts_of
from closecrm.events.normalize import email_key
from closecrm.model import Flags
from tests.engine.conftest import CloseEnv
from tests.fuzz.budget import budget
from tests.fuzz.test_fuzz_equivalence import Burst, bounded, burst, cased, check, maybe, note

pytestmark = pytest.mark.integration

USERS = ["u1", "u2"]
OTHER_USER = "u9"  # seeded on contacts with the people's emails, and sometimes an event of their own
VISITORS = ["a1", "a2"]
EMAILS = ["ann@x.example", "ann.2@x.example", "ann@y.example", "bob@x.example"]
COMPANIES = ["co1", "co2"]

# All on (the rule's case, drawn most), each switch off alone, and random mixes.
flags = st.one_of(
    st.just(Flags()),
    st.sampled_from(
        [
            Flags(allow_creating_new_leads=False),
            Flags(allow_updating_existing_leads=False),
            Flags(allow_creating_new_contacts=False),
            Flags(allow_creating_duplicate_contacts=False),
            Flags(allow_updating_existing_contacts=False),
        ]
    ),
    st.builds(
        Flags,
        allow_creating_new_leads=st.booleans(),
        allow_updating_existing_leads=st.booleans(),
        allow_creating_new_contacts=st.booleans(),
        allow_creating_duplicate_contacts=st.booleans(),
        allow_updating_existing_contacts=st.booleans(),
    ),
)

some_email = st.builds(cased, st.sampled_from(EMAILS), st.integers(0, 2))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An organisation and a burst of events: one to three people who say a different email now
    and then (a known user, and maybe another or a visitor), mostly in runs of their own events,
    with other people giving the same emails in between; and leads that already hold some of those
    emails (`organisation`)."""
    people = [draw(st.sampled_from(USERS))]  # at least one known user
    rest = [p for p in [*USERS, *VISITORS] if p != people[0]]
    people += draw(st.lists(st.sampled_from(rest), max_size=2, unique=True))
    own = {p: draw(st.lists(st.sampled_from(EMAILS), min_size=2, max_size=3, unique=True)) for p in people}
    company = {p: draw(maybe(st.sampled_from(COMPANIES))) for p in people}
    others = [OTHER_USER, *VISITORS]
    said_last = dict.fromkeys(people, -1)  # the index in ``own`` of the email each person said last
    out: list[dict[str, Any]] = []
    size = draw(st.integers(2, 9))
    while len(out) < size:
        if draw(st.integers(0, 4)) == 4:  # someone else, with one of the emails
            who = draw(st.sampled_from(others))
            traits = {"email": draw(some_email), "name": draw(st.sampled_from(["Vis", "Nine"]))}
            out.append({"type": "identify", **ident(who), "traits": traits})
            continue
        person = draw(st.sampled_from(people))
        for _ in range(draw(st.integers(1 if person in VISITORS else 2, 4))):
            if not draw(st.booleans()):  # most often the email changes (False is what hypothesis tries first)
                said_last[person] += 1
            email = own[person][said_last[person] % len(own[person])]
            out.append(said(draw, person, email, company[person]))
    used = sorted({e for p in people for e in own[p]})
    return organisation(draw, used), out


def organisation(draw: st.DrawFn, used: list[str]) -> list[dict[str, Any]]:
    """Mostly one to three leads, with or without a company id, holding contacts with some of the
    emails the people use (now and then another one): without a user id, with one of the people's
    user ids, or with another user's. Which of a person's emails Close already holds, the first or a
    later one, decides where the lookup by email lands."""
    email = st.builds(cased, st.sampled_from([*used, *used, *EMAILS]), st.integers(0, 2))
    leads = []
    for _ in range(draw(st.sampled_from([1, 2, 3, 0]))):
        contacts = [
            {
                "user": draw(maybe(st.sampled_from([*USERS, OTHER_USER]))),
                "name": draw(maybe(st.sampled_from(["Old", "Other"]))),
                "emails": draw(
                    st.one_of(st.lists(email, min_size=1, max_size=2, unique_by=str.lower), st.just([]))
                ),
            }
            for _ in range(draw(st.sampled_from([1, 2, 0])))
        ]
        leads.append(
            {
                "company": draw(maybe(st.sampled_from(COMPANIES))),
                "name": draw(maybe(st.sampled_from(["Acme", "Solo"]))),
                "contacts": contacts,
            }
        )
    return leads


def ident(person: str) -> dict[str, str]:
    return {"userId": person} if person not in VISITORS else {"anonymousId": person}


def said(draw: st.DrawFn, person: str, email: str, company: str | None) -> dict[str, Any]:
    """An identify with this email (now and then none, or in another case), some scalars, their
    company (now and then another one or none); or, rarely, a group call."""
    if person not in VISITORS and draw(st.integers(0, 7)) == 7:
        return {"type": "group", **ident(person), "groupId": draw(st.sampled_from(COMPANIES)), "traits": {}}
    traits: dict[str, Any] = {}
    if draw(st.integers(0, 6)) < 6:
        traits["email"] = cased(email, draw(st.sampled_from([0, 0, 0, 1, 2])))
    if draw(st.booleans()):
        traits["name"] = draw(st.sampled_from(["Ann", "Anne", "Bob"]))
    if draw(st.booleans()):
        traits["title"] = draw(st.sampled_from(["CEO", "Dev"]))
    where = company if draw(st.integers(0, 5)) < 5 else draw(maybe(st.sampled_from(COMPANIES)))
    if where is not None:
        traits["company"] = {"id": where}
    return {"type": "identify", **ident(person), "traits": traits}


@budget(300)
@given(
    scenario=scenarios(),
    identify_flags=flags,
    group_flags=flags,
    batch_sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    pane_sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    depth=st.sampled_from([1, 25]),
)
def test_a_person_whose_email_changes_collapses_and_ends_as_one_at_a_time(
    close: CloseEnv,
    scenario: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    identify_flags: Flags,
    group_flags: Flags,
    batch_sizes: list[int],
    pane_sizes: list[int],
    depth: int,
) -> None:
    leads, raws = scenario
    b = burst(raws, identify_flags, group_flags)
    note(f"identify flags all on: {identify_flags == Flags()}")
    note(f"a request merged across emails: {merged_across_emails(b)}")
    check(close, leads, b, batch_sizes, pane_sizes, depth)


def merged_across_emails(b: Burst) -> bool:
    """Did the bounded path send a request whose parts looked up different emails?"""
    return any(
        len({email_key(p.contact_email) for p in parts_of(s.pending.request) if p.contact_email}) > 1
        for s in bounded(b)
    )


def contact(email: str, name: str = "Old") -> dict[str, Any]:
    return {"user": None, "name": name, "emails": [email]}


FIRST, SECOND = EMAILS[0], EMAILS[1]
# What stops u1's first request (email FIRST) from leaving u1 on a contact, and what Close holds:
# u1's second request then finds the contact with SECOND by email, stamps and renames it (or, where
# updates are off, finds nothing and creates it).
KEPT_APART = {
    # FIRST is on a contact it may not stamp (an update); the second request creates u1's contact.
    "allow_updating_existing_contacts": (None, [{"company": None, "contacts": [contact(FIRST)]}]),
    # Nothing has FIRST: it would create a contact, and may not.
    "allow_creating_new_contacts": (None, [{"company": None, "contacts": [contact(SECOND)]}]),
    # Nothing has FIRST: it would create a lead with the contact, and may not.
    "allow_creating_new_leads": (None, [{"company": None, "contacts": [contact(SECOND)]}]),
    # co1's lead has no contact with FIRST, another lead has: a duplicate, which it may not create.
    "allow_creating_duplicate_contacts": (
        "co1",
        [{"company": "co1", "contacts": [contact(SECOND)]}, {"company": None, "contacts": [contact(FIRST)]}],
    ),
}


@pytest.mark.parametrize("switch", sorted(KEPT_APART))
def test_a_switch_that_can_keep_the_first_request_from_leaving_the_user_id_keeps_the_emails_apart(
    close: CloseEnv, switch: str
) -> None:
    """One at a time, u1's second request makes the contact with SECOND u1's ("Ann"), because the
    first one left u1 nowhere; merged, they would look up FIRST alone and do nothing. With every
    switch on, the two merge, and end as one at a time too."""
    company, seeded = KEPT_APART[switch]
    leads = [{"name": "Acme", **lead} for lead in seeded]
    traits = {"company": {"id": company}} if company else {}
    raws = [
        {"type": "identify", "userId": "u1", "traits": {"email": FIRST, "name": "Ann", **traits}},
        {"type": "identify", "userId": "u1", "traits": {"email": SECOND, "name": "Ann", **traits}},
    ]
    off = Flags(**{switch: False})
    b = burst(raws, off, off)
    assert len(bounded(b)) == 2
    check(close, leads, b, [1], [2], 1)
    assert "Ann" in [c.get("name") for c in close.sim.contacts() if SECOND in str(c["emails"])]

    on = burst(raws, Flags(), Flags())
    assert len(bounded(on)) == 1
    check(close, leads, on, [1], [2], 1)
