"""Nested creation (rules/nest.py): the new people of a new company go into its one ``POST /lead/``.

Against the simulator over HTTP: one call for a company's new people, the cap, a lost answer to a
nested create (looked for, never sent again, on both transports), faults at random, and a refused
value that fails only its own request. Each ends as applying the requests one at a time does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from closecrm.engine import UpsertEngine
from closecrm.engine.rules.nest import MAX_NESTED_CONTACTS
from closecrm.engine.writes.ambiguity import MAX_CREATE_ATTEMPTS
from closecrm.model import Flags, Outcome, UpsertRequest
from pipeline.plan import change_text
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_alias_faults import watch

pytestmark = pytest.mark.integration

LAG = 0.3
CREATE_LEAD, CREATE_CONTACT = "POST /lead/", "POST /contact/"


def person(company: str, n: int, **more: Any) -> UpsertRequest:
    return UpsertRequest(
        lead_company_id=company,
        lead_name=f"Company {company}",
        contact_user_id=f"{company}-u{n}",
        contact_name=f"Person {n}",
        contact_emails=(f"p{n}@{company}.example.com",),
        **more,
    )


def writes(env: CloseEnv) -> dict[str, int]:
    by_endpoint = env.sim.stats()["by_endpoint"]
    return {k: v for k, v in by_endpoint.items() if k in (CREATE_LEAD, CREATE_CONTACT) or k.startswith("PUT")}


def one_at_a_time(env: CloseEnv, reqs: list[UpsertRequest]) -> tuple[list[str], list[Any]]:
    """The reference: each request its own batch, on a fresh organisation; its labels and end state."""
    env.fresh_org()
    outs = env.one(*reqs)
    labels, state = [o.label for o in outs], env.projection()
    env.fresh_org()
    return labels, state


def assert_each_person_once(env: CloseEnv, reqs: list[UpsertRequest]) -> None:
    users = Counter(c[env.user_cf] for c in env.sim.contacts())
    assert users == Counter(str(r.contact_user_id) for r in reqs)
    companies = [lead[env.company_cf] for lead in env.leads()]
    assert sorted(companies) == sorted({str(r.lead_company_id) for r in reqs})


def nested(out: Outcome) -> bool:
    return any(c.get("nested") for c in out.changes)


# ------------------------------------------------------------------ one call


def test_several_new_people_of_a_new_company_make_one_call(close: CloseEnv) -> None:
    reqs = [person("acme", n) for n in range(6)]
    labels, reference = one_at_a_time(close, reqs)
    outs = close.batch(reqs)
    assert writes(close) == {CREATE_LEAD: 1}
    assert (
        close.sim.stats()["by_group"]["lead_write"] == 1
        and "contact_write" not in close.sim.stats()["by_group"]
    )
    assert [o.label for o in outs] == labels == ["created"] * 6
    assert [o.branch for o in outs] == ["nothing_found"] + ["lead_by_company_id"] * 5
    [lead] = close.leads()
    assert all(o.lead_ids == (lead["id"],) for o in outs)
    # each request names its own contact, and the audit shows the followers' were created nested
    by_user = {c[close.user_cf]: c["id"] for c in lead["contacts"]}
    assert [o.contact_ids for o in outs] == [(by_user[f"acme-u{n}"],) for n in range(6)]
    assert [nested(o) for o in outs] == [False] + [True] * 5
    assert {c["field"] for c in outs[1].changes} == {"name", "emails", close.user_cf, "lead_id"}
    assert change_text(outs[1].changes[0]) == "contact create (nested) name: Person 1"
    assert sum(o.calls for o in outs) == close.sim.stats()["requests_total"]
    by_group = close.sim.stats()["by_group"]
    assert close.sim.stats()["requests_total"] == by_group["search"] + 1  # the searches, and the one write
    assert close.projection() == reference


def test_the_dry_run_plans_the_same_nesting(close: CloseEnv) -> None:
    reqs = [person("acme", n) for n in range(4)]

    async def go(engine: UpsertEngine) -> list[Outcome]:
        return await engine.upsert_batch(reqs, dry_run=True)

    plan = close.run(go)
    assert close.leads() == []
    assert [o.label for o in plan] == ["created"] * 4 and [nested(o) for o in plan] == [
        False,
        True,
        True,
        True,
    ]
    outs = close.batch(reqs)
    assert writes(close) == {CREATE_LEAD: 1}
    assert [(o.label, o.branch) for o in plan] == [(o.label, o.branch) for o in outs]


def test_what_one_at_a_time_would_do_otherwise_is_not_nested(close: CloseEnv) -> None:
    """A follower that would change the new lead, that is not allowed new contacts, that is already
    someone, that has no key to be found by, or that is the creating request's person again ends the
    run of followers: it and those after it go one at a time."""

    def seed() -> None:
        close.seed_leads(
            {"name": "Other", "contacts": [{close.user_cf: "known", "emails": [{"email": "k@x.example"}]}]}
        )

    cases = [
        person("co1", 1, lead_description="Another"),
        person("co2", 1, flags=Flags(allow_creating_new_contacts=False)),
        UpsertRequest(lead_company_id="co3", lead_name="Company co3", contact_user_id="known"),
        UpsertRequest(lead_company_id="co4", lead_name="Company co4", contact_name="Nameless"),
        person("co5", 0, contact_title="CEO"),
    ]
    reqs = [
        r
        for case in cases
        for r in (person(str(case.lead_company_id), 0), case, person(str(case.lead_company_id), 2))
    ]
    close.fresh_org()
    seed()
    reference_outs = close.one(*reqs)
    reference = close.projection()
    close.fresh_org()
    seed()
    outs = close.batch(reqs)
    assert [o.label for o in outs] == [o.label for o in reference_outs]
    assert "skipped:creating_new_contacts_not_allowed" in [o.label for o in outs]
    assert not any(nested(o) for o in outs)  # the follower after each is not reached either
    assert close.projection() == reference


# ------------------------------------------------------------------ the cap


def test_past_the_cap_the_rest_follow_as_contact_creations(close: CloseEnv) -> None:
    extra = 4
    reqs = [person("big", n) for n in range(1 + MAX_NESTED_CONTACTS + extra)]
    outs = close.batch(reqs)
    assert [o.label for o in outs] == ["created"] * len(reqs)
    assert writes(close) == {CREATE_LEAD: 1, CREATE_CONTACT: extra}
    assert [nested(o) for o in outs] == [False] + [True] * MAX_NESTED_CONTACTS + [False] * extra
    assert_each_person_once(close, reqs)


def test_a_request_in_between_ends_the_run_of_followers(close: CloseEnv) -> None:
    """Units are offered in the group's order: only consecutive ones are taken. Here a request for
    the second person (no company) comes before the third person."""
    between = UpsertRequest(contact_user_id="a-u1", contact_title="CTO")
    reqs = [person("a", 0), person("a", 1), between, person("a", 2)]
    labels, reference = one_at_a_time(close, reqs)
    outs = close.batch(reqs)
    assert [o.label for o in outs] == labels == ["created", "created", "updated", "created"]
    assert [nested(o) for o in outs] == [False, True, False, False]
    assert writes(close) == {CREATE_LEAD: 1, "PUT /contact/{id}/": 1, CREATE_CONTACT: 1}
    assert close.projection() == reference


# ------------------------------------------------------------------ lost answers


@pytest.mark.parametrize(
    ("backend", "outcome"),
    [(b, o) for b in ("httpx", "aiohttp") for o in (502, 504, "drop")],
)
def test_a_lost_answer_to_a_nested_create_is_looked_for_not_sent_again(
    close: CloseEnv, monkeypatch: pytest.MonkeyPatch, backend: str, outcome: int | str
) -> None:
    seen = watch(close, monkeypatch)
    seen.plan = {CREATE_LEAD: iter([("after", outcome)])}  # the create is made, its answer lost
    reqs = [person("acme", n) for n in range(5)]

    async def go(engine: UpsertEngine) -> list[Outcome]:
        await engine.client.get("me/")  # a kept-alive connection, as in a running job
        return await engine.upsert_batch(reqs)

    outs = close.run(go, settle_seconds=2 * LAG, client_kw={"backoff_base": 0.01, "http_backend": backend})
    assert seen.forced == Counter({(CREATE_LEAD, "after", str(outcome)): 1})
    assert (
        seen.calls[CREATE_LEAD] == 1 and seen.calls[CREATE_CONTACT] == 0
    )  # looked for, found: not sent again
    assert [o.label for o in outs] == ["created"] * 5
    assert [nested(o) for o in outs] == [False] + [True] * 4  # their contacts came with the lost create
    [lead] = close.leads()
    assert all(o.lead_ids == (lead["id"],) for o in outs)
    assert sorted(o.contact_ids[0] for o in outs) == sorted(c["id"] for c in lead["contacts"])
    assert_each_person_once(close, reqs)


def test_a_nested_create_that_never_reached_close_is_sent_again_once_search_shows_nothing(
    close: CloseEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = watch(close, monkeypatch)
    seen.plan = {CREATE_LEAD: iter([("before", 502)])}  # lost before Close made it: in doubt all the same
    close.sim.configure(search_lag=LAG)
    reqs = [person("acme", n) for n in range(4)]
    outs = close.run(lambda e: e.upsert_batch(reqs), settle_seconds=2 * LAG, client_kw={"backoff_base": 0.01})
    assert seen.calls[CREATE_LEAD] == 2 and seen.calls[CREATE_CONTACT] == 0
    assert [o.label for o in outs] == ["created"] * 4 and [nested(o) for o in outs] == [False] + [True] * 3
    assert_each_person_once(close, reqs)


def test_a_creating_request_that_runs_out_of_attempts_leaves_its_followers_to_go_on(
    close: CloseEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every attempt of the first POST /lead/ lost (and never made): that request fails as
    ambiguous_write, and the people it carried are not counted as done: the next one creates the
    lead (after looking for one once more), nesting the rest."""
    seen = watch(close, monkeypatch)
    seen.plan = {CREATE_LEAD: iter([("before", 502)] * MAX_CREATE_ATTEMPTS)}
    reqs = [person("acme", n) for n in range(4)]
    outs = close.run(lambda e: e.upsert_batch(reqs), settle_seconds=2 * LAG, client_kw={"backoff_base": 0.01})
    assert [o.label for o in outs] == ["failed:ambiguous_write", "created", "created", "created"]
    assert [nested(o) for o in outs] == [False, False, True, True]
    assert seen.calls[CREATE_LEAD] == MAX_CREATE_ATTEMPTS + 1 and seen.calls[CREATE_CONTACT] == 0
    assert_each_person_once(close, reqs[1:])


# ------------------------------------------------------------------ faults at random


def workload() -> list[UpsertRequest]:
    """New companies of one to eight new people, some of whom come back with a phone."""
    reqs = []
    for c in range(14):
        company = f"co{c}"
        reqs += [person(company, n) for n in range(1 + c % 8)]
        if c % 3 == 0:
            reqs.append(person(company, 0, contact_phones=(f"+1415555{c:04d}",)))
    return reqs


@pytest.mark.parametrize("seed", [3, 17])
def test_faults_at_random_end_as_a_clean_run(close: CloseEnv, seed: int) -> None:
    reqs = workload()

    def run() -> list[Outcome]:
        async def go(engine: UpsertEngine) -> list[Outcome]:
            outs: list[Outcome] = []
            for i in range(0, len(reqs), 25):
                outs += await engine.upsert_batch(reqs[i : i + 25])
            return outs

        return close.run(go, settle_seconds=2 * LAG, client_kw={"backoff_base": 0.01})

    clean = run()
    assert any(nested(o) for o in clean)
    expected, clean_writes = close.projection(), writes(close)
    close.fresh_org()
    close.sim.configure(fault_rate=0.1, ambiguous_rate=0.1, search_lag=LAG, random_seed=seed)
    outs = run()
    stats = close.sim.stats()
    assert stats["faults_injected"] > 0 and stats["ambiguous_injected"] > 0
    assert [o.label for o in outs] == [o.label for o in clean]
    assert_each_person_once(close, [r for r in reqs if r.contact_phones == ()])
    assert close.projection() == expected
    assert clean_writes[CREATE_LEAD] == 14


# ------------------------------------------------------------------ refusals


def test_a_refused_value_of_one_follower_fails_only_that_follower(close: CloseEnv) -> None:
    bad = person("acme", 2, contact_phones=("12",))  # not a phone number: Close refuses it
    reqs = [
        person("acme", 0),
        person("acme", 1),
        bad,
        person("acme", 3),
        person("beta", 0),
        person("beta", 1),
    ]
    labels, reference = one_at_a_time(close, reqs)
    assert labels[2] == "failed:http_400" and labels.count("created") == 5
    outs = close.batch(reqs)
    assert [o.label for o in outs] == labels
    assert outs[2].branch == "lead_by_company_id"
    # acme: refused with the bad follower in it, then alone; then each follower on its own
    assert writes(close) == {CREATE_LEAD: 3, CREATE_CONTACT: 3}
    assert close.projection() == reference


def test_a_refused_value_of_the_creating_request_fails_only_it(close: CloseEnv) -> None:
    reqs = [person("acme", 0, contact_phones=("12",)), person("acme", 1), person("acme", 2)]
    labels, reference = one_at_a_time(close, reqs)
    outs = close.batch(reqs)
    assert [o.label for o in outs] == labels == ["failed:http_400", "created", "created"]
    assert close.projection() == reference
    assert [nested(o) for o in outs] == [
        False,
        False,
        True,
    ]  # the next one creates the lead, nesting the last


def test_a_value_that_cannot_be_sent_is_not_nested(close: CloseEnv) -> None:
    seats = close.sim.create_custom_field("contact", "Seats", type="number")
    bad = person("acme", 1, contact_custom_fields={seats: float("nan")})
    outs = close.batch([person("acme", 0), bad, person("acme", 2)])
    assert [o.label for o in outs] == ["created", "failed:engine_error:ValueError", "created"]
    assert writes(close) == {CREATE_LEAD: 1, CREATE_CONTACT: 1}
