"""Differential, with aliases: collapsed and batched equals one at a time.

Random organisations whose contacts carry user ids from a small pool (known users and ids that look
like anonymous visitors', so an alias finds contacts under both ids, under one lead or two, with or
without company ids) get random bursts of identify, group and alias events, mapped through the
identify, group and alias presets (merging allowed or not). The paths under test collapse per person
(over the whole input, or per processing-time pane), suppress repeats, put the requests in the
writer's flush order and apply them through one engine stream, as test_fuzz_equivalence.py does.

The reference applies every request alone, in event order (`one_at_a_time_reference`), except the
repeats the suppression gate dropped on that path (docs/DESIGN.md, "Collapsing"): with aliases that
rule differs from applying everything far more often than without. The two smallest cases are
named tests at the end: an identify repeated after an alias merged its contact away (the rule,
taken literally), and an alias repeated after the previous id got a contact (sent again: an alias's
effect depends on other people's records, so the gate never treats it as a repeat). The reference
itself never merges one company's lead into another's: every seeded company id is still on a lead
at the end.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from closecrm.model import Flags
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_property import Reference, one_at_a_time_reference
from tests.fuzz.budget import budget
from tests.fuzz.test_fuzz_equivalence import (
    ANONYMOUS,
    USERS,
    apply_stream,
    bounded,
    burst,
    check,
    flags,
    not_resent,
    note,
    one_event,
    seed_dense,
    streaming,
    traits,
)
from tests.fuzz.test_fuzz_equivalence import (
    seeded_leads as dense_leads,
)
from transforms.writer import flush_order

pytestmark = pytest.mark.integration

POOL = USERS + ANONYMOUS  # user ids on seeded contacts, and the ids aliases join


def seeded_leads() -> st.SearchStrategy[list[dict[str, Any]]]:
    """The differential's organisations, with user ids from the pool on most contacts (two contacts
    may share one), and more leads and contacts."""
    return dense_leads(
        users=st.sampled_from([*POOL, *POOL, None]),
        leads_per_org=st.integers(0, 4) | st.integers(2, 4),
        contacts_per_lead=st.integers(0, 3),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded CRM, and a burst of identify and group events of a few people from the pool (as a
    user id; a1 and a2 now and then as an anonymous id) and alias events joining two ids, mostly ids
    the CRM or the burst's people carry (so that both are found), without their times."""
    leads = draw(seeded_leads())
    people = draw(st.lists(st.sampled_from(POOL), min_size=2, max_size=4, unique=True))
    known = sorted({c["user"] for lead in leads for c in lead["contacts"] if c["user"]} | set(people))
    ids = st.sampled_from(known * 3 + POOL)
    usual = {person: traits(draw) for person in people}
    raws: list[dict[str, Any]] = []
    size = draw(st.integers(2, 9))
    while len(raws) < size:
        if draw(st.integers(0, 4)) < 2:
            previous = draw(ids)
            others = [u for u in known * 3 + POOL if u != previous]
            user = draw(st.sampled_from(others) if draw(st.integers(0, 5)) else ids)
            raws.append({"type": "alias", "previousId": previous, "userId": user})
            continue
        person = draw(st.sampled_from(people))
        anonymous = person in ANONYMOUS and draw(st.integers(0, 3)) == 0
        who = {"anonymousId": person} if anonymous else {"userId": person}
        for _ in range(draw(st.integers(1, 3))):  # a person's events often come in a row
            raws.append(one_event(draw, who, usual[person]))
    return leads, raws


alias_flags = st.builds(
    lambda base, merging: replace(base, allow_merging=merging), flags, st.sampled_from([True, True, False])
)


def companies(state: list[Any]) -> set[str]:
    """The company ids on the leads of a `CloseEnv.projection`."""
    return {value for lead in state for name, value in lead[3] if name == "Company ID"}


MERGING = Flags(allow_merging=True)
# Found by this property, fixed in closecrm/engine/rules/alias.py; kept as examples.
# - After a lead merge the engine's copy of the destination lead lacked the company id Close moved
#   onto it: u2's lead (co2) is merged into a1's (none); a1's next request, for co3, in the same
#   batch, took the lead for company-less and wrote co3 over co2.
MERGED_LEAD_VALUES = (
    [{"company": None, "name": None, "contacts": [{"user": "a1", "name": None, "emails": []}]}],
    [
        {"type": "identify", "userId": "u2", "traits": {"company": {"id": "co2"}}},
        {"type": "alias", "previousId": "u2", "userId": "a1"},
        {"type": "identify", "userId": "a1", "traits": {"company": {"id": "co3"}}},
    ],
)
# - The leads of two companies were merged into a third without one: each was checked against the
#   destination alone, so co3's lead ended merged into what became co2's.
TWO_COMPANIES = (
    [
        {"company": None, "name": "Acme", "contacts": [{"user": "u1", "name": None, "emails": []}]},
        {"company": "co2", "name": None, "contacts": [{"user": "a1", "name": None, "emails": []}]},
        {"company": "co3", "name": None, "contacts": [{"user": "a1", "name": None, "emails": []}]},
    ],
    [{"type": "alias", "previousId": "a1", "userId": "u1"}],
)


@budget(150)
@example(
    scenario=MERGED_LEAD_VALUES,
    identify_flags=Flags(),
    group_flags=Flags(),
    merge_flags=MERGING,
    batch_sizes=[4],
    pane_sizes=[3],
    depth=1,
)
@example(
    scenario=TWO_COMPANIES,
    identify_flags=Flags(),
    group_flags=Flags(),
    merge_flags=MERGING,
    batch_sizes=[1],
    pane_sizes=[1],
    depth=2,
)
@given(
    scenario=scenarios(),
    identify_flags=flags,
    group_flags=flags,
    merge_flags=alias_flags,
    batch_sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    pane_sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    depth=st.sampled_from([1, 2, 25]),
)
def test_aliases_collapsed_and_batched_equal_one_at_a_time(
    close: CloseEnv,
    scenario: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    identify_flags: Flags,
    group_flags: Flags,
    merge_flags: Flags,
    batch_sizes: list[int],
    pane_sizes: list[int],
    depth: int,
) -> None:
    leads, raws = scenario

    def inspect(name: str, reference: Reference) -> None:
        if name != "bounded":
            return
        branches = Counter(o.branch for o in reference.outcomes)
        note(f"re-keyed (reference): {branches['alias_rekey'] > 0}")
        note(f"merged (reference): {branches['alias_merge'] > 0}")
        merges = [c for o in reference.outcomes for c in o.changes if c["action"] == "merge"]
        note(f"a lead merged (reference): {bool(merges)}")
        across = any(o.reason == "alias_across_companies" for o in reference.outcomes)
        note(f"across companies (reference): {across}")
        # No company's lead is ever merged into another company's: every seeded company id stays.
        assert {lead["company"] for lead in leads if lead["company"]} <= companies(reference.state)

    b = burst(raws, identify_flags, group_flags, merge_flags)
    check(close, leads, b, batch_sizes, pane_sizes, depth, inspect, merges=True)


def differs_from_each_alone(
    close: CloseEnv, leads: list[dict[str, Any]], raws: list[dict[str, Any]], path: str
) -> None:
    b = burst(raws, Flags(), Flags(), MERGING)
    reference = one_at_a_time_reference(close, leads, b.in_order(), seed_dense)
    sent = bounded(b) if path == "bounded" else streaming(b, [1])
    apply_stream(close, [p.request for p in flush_order([s.pending for s in sent])], [200], 1)
    assert close.projection() == reference.state, path


def test_an_alias_sent_again_after_the_previous_id_got_a_contact_is_applied(close: CloseEnv) -> None:
    """Found by this file's property: the first alias finds no a1 contact (unchanged); a1's identify
    creates one; the same alias again re-keys it to u1, one at a time. The suppression gate never
    takes an alias for a repeat, so the second one is sent too."""
    raws = [
        {"type": "alias", "previousId": "a1", "userId": "u1"},
        {"type": "identify", "userId": "a1", "traits": {"email": "ann@x.example"}},
        {"type": "alias", "previousId": "a1", "userId": "u1"},
    ]
    differs_from_each_alone(close, [], raws, "bounded")


def test_a_repeat_after_an_alias_merged_its_contact_away_is_not_sent_again(close: CloseEnv) -> None:
    """The identical-to-last rule taken literally, met by this file's property far more often than
    by identify alone: u2 identifies (a contact is created); the alias u2 -> u1 merges it into u1's
    and deletes it; u2 identifies again, alone in its pane. One at a time that would create a u2
    contact again; the gate does not re-send u2's repeat, so there is none."""
    leads = [{"company": None, "name": None, "contacts": [{"user": "u1", "name": None, "emails": []}]}]
    raws = [
        {"type": "identify", "userId": "u2", "traits": {}},
        {"type": "alias", "previousId": "u2", "userId": "u1"},
        {"type": "identify", "userId": "u2", "traits": {}},
    ]
    b = burst(raws, Flags(), Flags(), MERGING)
    sent = streaming(b, [1])
    assert not_resent(sent) == {"m2"}
    without_repeat = one_at_a_time_reference(close, leads, b.in_order()[:2], seed_dense)
    apply_stream(close, [p.request for p in flush_order([s.pending for s in sent])], [200], 1)
    assert [c[close.user_cf] for c in close.sim.contacts()] == ["u1"]
    assert close.projection() == without_repeat.state
