"""Collapsed requests among other people's requests: batch cuts around spans, parts applied in turn."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from closecrm.engine.ordering.spans import batches, combine, units
from closecrm.engine.rules.touches import Touches as Reach
from closecrm.events.collapse import collapse, parts_of, span
from closecrm.model import Flags, Outcome, UpsertRequest
from tests.fuzz.budget import budget


def at(second: int, **fields: object) -> UpsertRequest:
    return UpsertRequest(timestamp=f"2026-11-01T00:00:{second:02d}Z", event_ids=(f"e{second}",), **fields)  # type: ignore[arg-type]


def merged(*seconds: int, **fields: object) -> UpsertRequest:
    [req] = collapse(at(s, **fields) for s in seconds)
    return req


def test_a_collapsed_request_keeps_its_parts_and_its_span() -> None:
    req = merged(1, 5, 9, contact_user_id="u1", contact_name="Bob")
    assert [p.event_ids for p in parts_of(req)] == [("e1",), ("e5",), ("e9",)]
    assert req.since == "2026-11-01T00:00:01Z" and req.timestamp == "2026-11-01T00:00:09Z"
    first, last = span(req)
    assert first < last
    single = at(3, contact_user_id="u2")
    assert parts_of(single) == (single,) and span(single)[0] == span(single)[1]


def test_collapsing_collapsed_requests_again_keeps_every_original_part() -> None:
    once = merged(1, 2, contact_user_id="u1")
    [twice] = collapse([once, at(3, contact_user_id="u1")])
    assert [p.event_ids for p in parts_of(twice)] == [("e1",), ("e2",), ("e3",)]


def test_a_collapsed_request_carries_its_parts_lead_values_through_pickling() -> None:
    import pickle

    from closecrm.events.collapse import Parts, lead_values, lead_values_of

    [req] = collapse(
        [
            at(1, contact_user_id="u1", lead_name="Acme"),
            at(2, contact_user_id="u1", lead_name="Acme Inc", lead_custom_fields={"cf_b": 2, "cf_a": "x"}),
            at(3, contact_user_id="u1", lead_name="Acme"),
        ]
    )
    from_parts = frozenset(lead_values_of(p) for p in parts_of(req))
    assert len(from_parts) == 2 and lead_values(req) == from_parts
    assert pickle.loads(pickle.dumps(req)).parts.lead_values() == from_parts
    assert req.parts is not None
    unkept = Parts(req.parts._blob, len(req.parts))  # e.g. pickled before parts kept their lead values
    assert unkept.lead_values() == from_parts
    single = at(4, lead_name="Solo")
    assert lead_values(single) == frozenset({("Solo", None, None, ())})


def test_a_batch_is_never_cut_inside_a_collapsed_requests_span() -> None:
    r = merged(1, 9, contact_user_id="u1")
    others = [at(s, contact_user_id=f"o{s}") for s in (2, 3, 4)]
    items = sorted([*others, r, at(10, contact_user_id="late")], key=lambda q: span(q)[1])
    cut = list(batches(items, 1, lambda q: q))
    # everything up to r's last moment stays with r; the request after its span is cut off
    assert [len(b) for b in cut] == [4, 1]
    assert r in cut[0]


def test_without_collapsed_requests_batches_have_the_asked_sizes() -> None:
    items = [at(s % 60, contact_user_id=f"u{s}") for s in range(10)]
    assert [len(b) for b in batches(items, [3, 2], lambda q: q)] == [3, 2, 3, 2]


@budget(200)
@given(
    plan=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10)), min_size=1, max_size=25),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3),
)
def test_no_cut_ever_separates_a_collapsed_request_from_a_moment_inside_its_span(
    plan: list[tuple[int, int]], sizes: list[int]
) -> None:
    items = []
    for n, (start, length) in enumerate(plan):
        seconds = sorted({start, min(59, start + length)})
        items.append(
            merged(*seconds, contact_user_id=f"u{n}")
            if len(seconds) > 1
            else at(start, contact_user_id=f"u{n}")
        )
    items.sort(key=lambda q: span(q)[1])
    cut = list(batches(items, sizes, lambda q: q))
    assert [q for b in cut for q in b] == items
    where = {id(q): n for n, b in enumerate(cut) for q in b}
    for r in items:
        if not r.parts:
            continue
        first, last = span(r)
        for q in items:
            moments = [span(p)[1] for p in parts_of(q)]
            if q is not r and any(first < m < last for m in moments):
                assert where[id(q)] == where[id(r)]


def reach(
    req: UpsertRequest, *nodes: str, company_leads: tuple[str, ...] = (), person_leads: tuple[str, ...] = ()
) -> Reach:
    return Reach(
        req, req.lead_company_id, frozenset(nodes), frozenset(company_leads), frozenset(person_leads)
    )


def test_a_member_inside_a_span_that_meets_the_same_records_splits_the_collapsed_request() -> None:
    r = merged(1, 9, contact_user_id="u2", contact_name="Bob")
    visitor = at(5, contact_emails=("ann@x.example",), contact_name="Ann")
    seq = units([reach(r, "user:u2", "cont_1"), reach(visitor, "email:ann@x.example", "cont_1")])
    assert [(k, q.event_ids) for k, q in seq] == [(0, ("e1",)), (1, ("e5",)), (0, ("e9",))]


def test_members_that_touch_nothing_in_common_are_not_split() -> None:
    r = merged(1, 9, contact_user_id="u2")
    other = at(5, contact_user_id="u3")
    seq = units([reach(r, "user:u2"), reach(other, "user:u3")])
    assert [(k, q) for k, q in seq] == [(0, r), (1, other)]


def test_people_of_one_company_sharing_only_its_lead_with_the_same_values_are_not_split() -> None:
    """The chatty-identify case: splitting colleagues would undo collapsing."""
    a = merged(1, 9, contact_user_id="u1", lead_company_id="co1", lead_name="Acme")
    b = merged(2, 8, contact_user_id="u2", lead_company_id="co1", lead_name="Acme")
    lead = ("company:co1", "lead_1")
    seq = units(
        [
            reach(a, "user:u1", *lead, company_leads=("lead_1",)),
            reach(b, "user:u2", *lead, company_leads=("lead_1",)),
        ]
    )
    assert [k for k, _ in seq] == [0, 1]


def test_colleagues_who_disagree_on_the_lead_or_its_flags_are_split() -> None:
    a = merged(1, 9, contact_user_id="u1", lead_company_id="co1", lead_name="Acme")
    renamed = merged(2, 8, contact_user_id="u2", lead_company_id="co1", lead_name="Acme Inc")
    other_flags = merged(
        2,
        8,
        contact_user_id="u2",
        lead_company_id="co1",
        lead_name="Acme",
        flags=Flags(allow_updating_existing_leads=False),
    )
    lead = ("company:co1", "lead_1")
    for b in (renamed, other_flags):
        seq = units(
            [
                reach(a, "user:u1", *lead, company_leads=("lead_1",)),
                reach(b, "user:u2", *lead, company_leads=("lead_1",)),
            ]
        )
        assert len(seq) == 4


def test_a_colleague_whose_contact_lives_under_another_lead_is_split_from() -> None:
    """A company nobody has yet: whoever comes first may adopt their own lead."""
    a = merged(1, 9, contact_user_id="u1", lead_company_id="co1")
    b = at(5, contact_user_id="u2", lead_company_id="co1")
    seq = units(
        [
            reach(a, "user:u1", "company:co1"),
            reach(b, "user:u2", "company:co1", "cont_2", "lead_9", person_leads=("lead_9",)),
        ]
    )
    assert len(seq) == 3


def test_an_outcome_of_parts_is_the_weightiest_with_every_record_and_call() -> None:
    outs = [
        Outcome("unchanged", calls=1),
        Outcome("created", branch="nothing_found", lead_ids=("l1",), contact_ids=("c1",), calls=1),
        Outcome("updated", lead_ids=("l1",), calls=2, attempts=2),
    ]
    got = combine(outs)
    assert (got.kind, got.branch, got.lead_ids, got.contact_ids, got.calls, got.attempts) == (
        "created",
        "nothing_found",
        ("l1",),
        ("c1",),
        4,
        2,
    )
    assert combine([Outcome("updated"), Outcome("failed", reason="http_500")]).label == "failed:http_500"


def test_a_group_with_more_overlapping_pairs_than_can_be_compared_goes_part_by_part(monkeypatch) -> None:  # noqa: ANN001
    from closecrm.engine.ordering import spans

    members = [reach(merged(1, 9, contact_user_id=f"u{n}"), f"user:u{n}") for n in range(3)]
    assert len(units(members)) == 3  # nothing shared: no split
    monkeypatch.setattr(spans, "MAX_PAIRS_CHECKED", 1)
    assert len(units(members)) == 6


def test_colleagues_are_split_while_their_lead_is_new_and_another_member_writes_one_of_them() -> None:
    """Found by `make fuzz`: u2's company-less request, in the same group, gives u2 a contact that u2's
    request for the new company would adopt, unless u1's request (which creates the lead) went first."""
    u1 = merged(0, 4, contact_user_id="u1", lead_company_id="co2")
    u2_alone = at(1, contact_user_id="u2", contact_phones=("+14155550100",))
    u2_company = at(2, contact_user_id="u2", lead_company_id="co2")
    members = [
        reach(u2_alone, "user:u2"),
        reach(u2_company, "user:u2", "company:co2"),
        reach(u1, "user:u1", "company:co2"),
    ]
    members = [
        Reach(
            m.request,
            m.company_id,
            m.nodes,
            person_keys=frozenset(k for k in m.nodes if k.startswith("user:")),
        )
        for m in members
    ]
    assert [k for k, _ in units(members)] == [2, 0, 1, 2]
