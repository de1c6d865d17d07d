"""closecrm.events.collapse: merges only equivalent neighbours; the algebra holds under hypothesis."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from closecrm.events.collapse import collapse, collapse_key, merge, parts_of
from closecrm.events.normalize import email_key, phone_key, url_key
from closecrm.model import Flags, UpsertRequest


def ts(second: int) -> str:
    return f"2024-05-01T10:00:{second:02d}.000000Z"


def req(i: int, second: int | None = None, **fields: Any) -> UpsertRequest:
    return UpsertRequest(event_ids=(f"e{i}",), timestamp=ts(i if second is None else second), **fields)


# ---------------------------------------------------------------------------- examples


def test_later_scalars_win_and_absent_ones_do_not_erase() -> None:
    merged = merge(
        req(1, contact_user_id="u", contact_name="Ann", contact_title="CTO", lead_name="Acme"),
        req(2, contact_user_id="u", contact_name="Anne", lead_description="d"),
    )
    assert (merged.contact_name, merged.contact_title, merged.lead_name, merged.lead_description) == (
        "Anne",
        "CTO",
        "Acme",
        "d",
    )
    assert merged.event_ids == ("e1", "e2") and merged.timestamp == ts(2)


def test_custom_fields_merge_key_wise_with_later_winning() -> None:
    merged = merge(
        req(1, contact_user_id="u", lead_custom_fields={"cf_a": 1, "cf_b": 2}),
        req(2, contact_user_id="u", lead_custom_fields={"cf_b": 3, "cf_c": [4]}),
    )
    assert merged.lead_custom_fields == {"cf_a": 1, "cf_b": 3, "cf_c": [4]}


def test_lists_accumulate_in_first_seen_order_deduped_as_the_engine_compares() -> None:
    merged = merge(
        req(
            1,
            contact_user_id="u",
            contact_emails=("Ann@Acme.com",),
            contact_phones=("+1 415 555 2671",),
            contact_urls=("https://www.acme.com/",),
        ),
        req(
            2,
            contact_user_id="u",
            contact_emails=("ann@acme.com",),
            contact_phones=("(415) 555-2671", "+14155550000"),
            contact_urls=("acme.com", "beta.io"),
        ),
    )
    assert merged.contact_emails == ("Ann@Acme.com",)
    assert merged.contact_phones == ("+1 415 555 2671", "+14155550000")
    assert merged.contact_urls == ("https://www.acme.com/", "beta.io")


def test_a_person_moving_company_stays_two_requests_in_order() -> None:
    a = req(1, contact_user_id="u", lead_company_id="c1")
    b = req(2, contact_user_id="u", lead_company_id="c2")
    c = req(3, contact_user_id="u", lead_company_id="c2", contact_name="Ann")
    out = collapse([c, a, b])
    assert [r.lead_company_id for r in out] == ["c1", "c2"]
    assert out[1].event_ids == ("e2", "e3")


def test_an_anonymous_visitor_typing_a_second_email_stays_separate() -> None:
    out = collapse([req(1, contact_emails=("a@x.com",)), req(2, contact_emails=("b@x.com",))])
    assert len(out) == 2


def test_same_lookup_email_in_another_case_merges() -> None:
    out = collapse(
        [req(1, contact_emails=("A@x.com",), contact_name="A"), req(2, contact_emails=("a@X.com",))]
    )
    assert len(out) == 1 and out[0].contact_emails == ("A@x.com",)


def test_with_a_user_id_a_different_lookup_email_is_not_merged() -> None:
    # When no contact has the user id yet the engine looks up by email, so these may diverge.
    out = collapse([req(1, contact_user_id="u"), req(2, contact_user_id="u", contact_emails=("b@x.com",))])
    assert len(out) == 2


def test_where_user_ids_find_contacts_one_persons_emails_merge_and_the_first_is_looked_up() -> None:
    # The first request leaves the user id on what the second looks up: its email no longer matters.
    a = req(1, lead_company_id="c", contact_user_id="u", contact_emails=("a@x.com",), contact_name="A")
    b = req(2, lead_company_id="c", contact_user_id="u", contact_emails=("b@x.com",), contact_title="CTO")
    [out] = collapse([a, b], by_user_id=True)
    assert out.contact_email == "a@x.com" and out.contact_emails == ("a@x.com", "b@x.com")
    assert (out.contact_name, out.contact_title, out.event_ids) == ("A", "CTO", ("e1", "e2"))
    assert len(collapse([a, b])) == 2  # without the user-id field the engine looks up by email


def test_a_switch_that_can_keep_the_user_id_off_keeps_the_emails_apart() -> None:
    # Stamping the user id onto a contact found by email is an update; creating may need a new lead,
    # a new contact or a duplicate under another lead. With any of them forbidden the first request
    # may leave no contact with the user id, and the second would look up by its own email.
    for flag in (
        "allow_updating_existing_contacts",
        "allow_creating_new_contacts",
        "allow_creating_new_leads",
        "allow_creating_duplicate_contacts",
    ):
        flags = Flags(**{flag: False})
        out = collapse(
            [
                req(1, contact_user_id="u", contact_emails=("a@x.com",), flags=flags),
                req(2, contact_user_id="u", contact_emails=("b@x.com",), flags=flags),
            ],
            by_user_id=True,
        )
        assert len(out) == 2, flag
    # Updating existing leads plays no part in where the user id ends up.
    flags = Flags(allow_updating_existing_leads=False)
    out = collapse(
        [
            req(1, contact_user_id="u", contact_emails=("a@x.com",), flags=flags),
            req(2, contact_user_id="u", contact_emails=("b@x.com",), flags=flags),
        ],
        by_user_id=True,
    )
    assert len(out) == 1


def test_without_a_user_id_or_a_first_lookup_email_requests_with_other_emails_stay_apart() -> None:
    visitor = [req(1, contact_emails=("a@x.com",)), req(2, contact_emails=("b@x.com",))]
    assert len(collapse(visitor, by_user_id=True)) == 2
    # A first request without an email looks up by user id alone; merged, it would use b@x.com.
    no_email_first = [req(1, contact_user_id="u"), req(2, contact_user_id="u", contact_emails=("b@x.com",))]
    assert len(collapse(no_email_first, by_user_id=True)) == 2
    # Aliases and requests that create anew are never merged, as before.
    aliases = [
        req(1, contact_user_id="u", alias_previous_id="p", contact_emails=("a@x.com",)),
        req(2, contact_user_id="u", alias_previous_id="p", contact_emails=("b@x.com",)),
    ]
    assert len(collapse(aliases, by_user_id=True)) == 2


def test_one_persons_changing_emails_merge_into_one_request_per_run_of_company() -> None:
    out = collapse(
        [
            req(1, lead_company_id="c1", contact_user_id="u", contact_emails=("a@x.com",)),
            req(2, lead_company_id="c1", contact_user_id="u", contact_emails=("b@x.com",)),
            req(3, lead_company_id="c1", contact_user_id="u", contact_emails=("A@X.com",)),
            req(4, lead_company_id="c2", contact_user_id="u", contact_emails=("c@x.com",)),
            req(5, lead_company_id="c2", contact_user_id="u", contact_emails=("a@x.com",)),
        ],
        by_user_id=True,
    )
    assert [(r.lead_company_id, r.contact_emails) for r in out] == [
        ("c1", ("a@x.com", "b@x.com")),
        ("c2", ("c@x.com", "a@x.com")),
    ]


def test_different_flags_are_never_merged() -> None:
    out = collapse(
        [
            req(1, contact_user_id="u"),
            req(2, contact_user_id="u", flags=Flags(allow_creating_new_leads=False)),
        ]
    )
    assert len(out) == 2


def test_non_adjacent_equal_keys_are_not_merged_across_another_key() -> None:
    out = collapse(
        [
            req(1, contact_user_id="u", lead_company_id="c1"),
            req(2, contact_user_id="u", lead_company_id="c2"),
            req(3, contact_user_id="u", lead_company_id="c1"),
        ]
    )
    assert [r.lead_company_id for r in out] == ["c1", "c2", "c1"]


def test_requests_are_ordered_by_timestamp_then_arrival() -> None:
    late = req(1, second=9, contact_user_id="u", contact_name="late")
    early_a = req(2, second=1, contact_user_id="u", contact_name="first")
    early_b = req(3, second=1, contact_user_id="u", contact_name="second")
    out = collapse([late, early_a, early_b])
    assert len(out) == 1
    assert out[0].contact_name == "late" and out[0].event_ids == ("e2", "e3", "e1")


def test_contact_requests_without_user_id_or_email_are_never_merged() -> None:
    # Each one would create a new contact under the company's lead.
    out = collapse(
        [req(1, lead_company_id="c", contact_name="A"), req(2, lead_company_id="c", contact_name="A")]
    )
    assert len(out) == 2


def test_with_updates_of_existing_contacts_forbidden_the_first_requests_contact_values_stand() -> None:
    # The first request may create the contact; the second could then not have changed it.
    flags = Flags(allow_updating_existing_contacts=False)
    [out] = collapse(
        [
            req(1, contact_user_id="u", contact_name="A", lead_name="L", flags=flags),
            req(
                2,
                contact_user_id="u",
                contact_title="CTO",
                contact_phones=("+14155550100",),
                lead_name="M",
                flags=flags,
            ),
        ]
    )
    assert (out.contact_name, out.contact_title, out.contact_phones) == ("A", None, ())
    assert out.lead_name == "M" and out.event_ids == ("e1", "e2")


def test_with_updates_of_existing_leads_forbidden_the_first_requests_lead_values_stand() -> None:
    flags = Flags(allow_updating_existing_leads=False)
    [out] = collapse(
        [
            req(1, lead_company_id="c", lead_name="A", lead_custom_fields={"cf_a": 1}, flags=flags),
            req(2, lead_company_id="c", lead_description="d", lead_custom_fields={"cf_a": 2}, flags=flags),
        ]
    )
    assert (out.lead_name, out.lead_description, out.lead_custom_fields) == ("A", None, {"cf_a": 1})


def test_lead_only_requests_of_one_company_merge() -> None:
    out = collapse(
        [req(1, lead_company_id="c", lead_name="A"), req(2, lead_company_id="c", lead_description="d")]
    )
    assert len(out) == 1 and (out[0].lead_name, out[0].lead_description) == ("A", "d")


def test_collapse_of_nothing_is_nothing() -> None:
    assert collapse([]) == []


# ---------------------------------------------------------------------------- properties

FLAGS = [
    Flags(),
    Flags(allow_creating_new_leads=False),
    Flags(allow_updating_existing_contacts=False),
    Flags(allow_updating_existing_leads=False),
]
TEXT = st.sampled_from([None, "x", "y"])


@st.composite
def requests(
    draw: st.DrawFn, max_size: int = 12, unique_times: bool = False, min_size: int = 0
) -> list[UpsertRequest]:
    n = draw(st.integers(min_size, max_size))
    if unique_times:
        seconds = draw(st.permutations(range(n)))
    else:
        seconds = [draw(st.integers(0, 4)) for _ in range(n)]
    out = []
    for i in range(n):
        out.append(
            UpsertRequest(
                lead_name=draw(TEXT),
                lead_company_id=draw(st.sampled_from([None, "c1", "c2"])),
                lead_description=draw(TEXT),
                lead_status_id=draw(st.sampled_from([None, "stat_1"])),
                lead_custom_fields=draw(
                    st.dictionaries(st.sampled_from(["cf_a", "cf_b"]), st.integers(0, 2), max_size=2)
                ),
                contact_name=draw(TEXT),
                contact_emails=draw(st.sampled_from([(), ("a@x.com",), ("A@X.com",), ("b@x.com",)])),
                contact_phones=tuple(
                    draw(
                        st.lists(
                            st.sampled_from(["+14155552671", "(415) 555-2671", "+14155550000"]), max_size=2
                        )
                    )
                ),
                contact_urls=tuple(
                    draw(
                        st.lists(
                            st.sampled_from(["acme.com", "https://www.acme.com/", "beta.io"]), max_size=2
                        )
                    )
                ),
                contact_title=draw(TEXT),
                contact_user_id=draw(st.sampled_from([None, "u1", "u1", "u2"])),
                contact_custom_fields=draw(
                    st.dictionaries(st.sampled_from(["cf_c"]), st.booleans(), max_size=1)
                ),
                flags=draw(st.sampled_from(FLAGS)),
                event_ids=(f"e{i}",),
                timestamp=ts(seconds[i]),
            )
        )
    return out


SCALARS = (
    "lead_name",
    "lead_company_id",
    "lead_description",
    "lead_status_id",
    "contact_name",
    "contact_title",
    "contact_user_id",
)
LISTS = {"contact_emails": email_key, "contact_phones": phone_key, "contact_urls": url_key}


CONTACT = {"contact_name", "contact_title", "contact_custom_fields", *LISTS}
LEAD = {"lead_name", "lead_description", "lead_status_id", "lead_custom_fields"}


def apply(state: dict[str, Any], r: UpsertRequest) -> None:
    """The reference semantics of applying one request to the records it looks up: the first
    creates them; a later one changes them only where its flags allow updates."""
    frozen: set[str] = set()
    if state.get("exists"):
        frozen |= set() if r.flags.allow_updating_existing_contacts else CONTACT
        frozen |= set() if r.flags.allow_updating_existing_leads else LEAD
    state["exists"] = True
    for name in SCALARS:
        if getattr(r, name) is not None and name not in frozen:
            state[name] = getattr(r, name)
    for name in ("lead_custom_fields", "contact_custom_fields"):
        if name not in frozen:
            state[name] = {**state.get(name, {}), **getattr(r, name)}
    for name, key in LISTS.items():
        if name in frozen:
            continue
        values = list(state.get(name, []))
        for value in getattr(r, name):
            if key(value) not in {key(v) for v in values}:
                values.append(value)
        state[name] = values


def fold(rs: list[UpsertRequest]) -> tuple[dict[Any, dict[str, Any]], list[Any]]:
    """Per-identity records plus the order identities were touched in (consecutive repeats dropped)."""
    states: dict[Any, dict[str, Any]] = {}
    history: list[Any] = []
    for r in rs:
        key = collapse_key(r)
        apply(states.setdefault(key, {}), r)
        if not history or history[-1] != key:
            history.append(key)
    return states, history


def in_time_order(rs: list[UpsertRequest]) -> list[UpsertRequest]:
    return [r for _, r in sorted(enumerate(rs), key=lambda pair: (pair[1].timestamp, pair[0]))]


@settings(max_examples=150, deadline=None)
@given(requests())
def test_collapsed_requests_leave_the_same_state_as_the_originals_in_time_order(
    rs: list[UpsertRequest],
) -> None:
    out = collapse(rs)
    assert fold(out) == fold(in_time_order(rs))
    assert len(out) <= len(rs)
    assert sorted(i for r in out for i in r.event_ids) == sorted(i for r in rs for i in r.event_ids)


@settings(max_examples=100, deadline=None)
@given(requests(), st.booleans())
def test_collapse_is_idempotent_and_stable(rs: list[UpsertRequest], by_user_id: bool) -> None:
    once = collapse(rs, by_user_id)
    assert collapse(once, by_user_id) == once
    assert all(
        collapse_key(a, by_user_id) != collapse_key(b, by_user_id)
        for a, b in zip(once, once[1:], strict=False)
    )
    assert [r.timestamp for r in once] == sorted(r.timestamp for r in once)


@settings(max_examples=150, deadline=None)
@given(requests())
def test_a_merged_request_looks_up_like_the_first_it_was_merged_from(rs: list[UpsertRequest]) -> None:
    for merged in collapse(rs, by_user_id=True):
        first = parts_of(merged)[0]
        assert (merged.lead_company_id, merged.contact_user_id, merged.flags) == (
            first.lead_company_id,
            first.contact_user_id,
            first.flags,
        )
        assert (merged.contact_email and email_key(merged.contact_email)) == (
            first.contact_email and email_key(first.contact_email)
        )


@settings(max_examples=150, deadline=None)
@given(
    requests(min_size=3, max_size=3),
    st.sampled_from([None, "u1"]),
    st.sampled_from([None, "c1"]),
    st.sampled_from(FLAGS),
)
def test_merge_is_associative_on_same_key_requests(rs, user, company, flags) -> None:
    a, b, c = (
        replace(
            r,
            contact_user_id=user,
            lead_company_id=company,
            flags=flags,
            contact_emails=r.contact_emails and ("a@x.com",),
        )
        for r in rs
    )
    assume(collapse_key(a) == collapse_key(b) == collapse_key(c))
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert collapse_key(merge(a, b)) == collapse_key(a)


@settings(max_examples=150, deadline=None)
@given(requests(min_size=3, max_size=3), st.sampled_from([None, "c1"]))
def test_merge_is_associative_on_one_users_requests_with_any_emails(rs, company) -> None:
    a, b, c = (
        replace(
            r,
            contact_user_id="u1",
            lead_company_id=company,
            flags=Flags(),
            contact_emails=r.contact_emails or ("z@x.com",),
        )
        for r in rs
    )
    assert collapse_key(a, True) == collapse_key(b, True) == collapse_key(c, True)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert collapse_key(merge(a, b), True) == collapse_key(a, True)
    assert merge(merge(a, b), c).contact_email == a.contact_email


@settings(max_examples=100, deadline=None)
@given(requests(unique_times=True), st.data())
def test_collapse_ignores_arrival_order_when_times_differ(rs, data) -> None:
    # A combiner meets a person's requests in whatever order its partitions arrive.
    buckets = data.draw(st.lists(st.integers(0, 3), min_size=len(rs), max_size=len(rs)))
    chunks = [[r for r, b in zip(rs, buckets, strict=True) if b == k] for k in range(4)]
    order = data.draw(st.permutations(range(4)))
    assert collapse([r for k in order for r in chunks[k]]) == collapse(rs)
