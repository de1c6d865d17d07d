"""Each branch of the decision procedure (docs/DESIGN.md#decision-procedure), pinned against the simulator
through upsert_one."""

from __future__ import annotations

from typing import Any

import pytest

from closecrm.model import Flags, Settings, UpsertRequest
from tests.engine.conftest import CloseEnv

pytestmark = pytest.mark.integration


def writes(env: CloseEnv) -> dict[str, int]:
    by_endpoint = env.sim.stats()["by_endpoint"]
    return {k: v for k, v in by_endpoint.items() if k.split()[0] in ("POST", "PUT") and "search" not in k}


def lead(env: CloseEnv, company_id: str | None, *contacts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {**fields, "contacts": list(contacts)}
    if company_id:
        out[env.company_cf] = company_id
    return out


def contact(env: CloseEnv, user_id: str | None = None, *emails: str, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {**fields, "emails": [{"email": e, "type": "office"} for e in emails]}
    if user_id:
        out[env.user_cf] = user_id
    return out


# ------------------------------------------------------------------ step 0


def test_request_without_company_user_or_email_is_skipped_without_calls(close: CloseEnv) -> None:
    [out] = close.one(UpsertRequest(contact_name="Nobody", lead_name="Nothing"))
    assert out.label == "skipped:no_identity"
    assert out.calls == 0
    assert close.sim.stats()["requests_total"] == 0


def test_company_id_counts_as_identity_only_when_its_custom_field_is_configured(close: CloseEnv) -> None:
    close.settings = Settings(
        contact_custom_field_id_for_user_id=close.settings.contact_custom_field_id_for_user_id
    )
    [out] = close.one(UpsertRequest(lead_company_id="acme", contact_name="Ann"))
    assert out.label == "skipped:no_identity"


# ------------------------------------------------------------------ step 3


def test_nothing_found_creates_one_lead_with_the_contact_nested_in_one_write(close: CloseEnv) -> None:
    req = UpsertRequest(
        lead_name="Acme",
        lead_company_id="acme",
        contact_name="Ann",
        contact_emails=("Ann@Acme.com",),
        contact_phones=("(415) 555-0100",),
        contact_urls=("acme.com/ann",),
        contact_user_id="u1",
    )
    [out] = close.one(req)
    assert out.label == "created" and out.branch == "nothing_found"
    assert writes(close) == {"POST /lead/": 1}
    [created] = close.leads()
    assert created["name"] == "Acme" and created[close.company_cf] == "acme"
    [c] = created["contacts"]
    assert c[close.user_cf] == "u1" and c["name"] == "Ann"
    assert c["phones"][0]["phone"] == "+14155550100"
    assert out.lead_ids == (created["id"],) and out.contact_ids == (c["id"],)
    assert out.calls == 3  # two searches (lead, contact) and the create


def test_a_lead_created_without_a_name_has_none(close: CloseEnv) -> None:
    close.one(UpsertRequest(contact_user_id="u1", contact_emails=("a@x.com",)))
    [created] = close.leads()
    assert created["name"] is None and created["display_name"] == "a@x.com"


def test_request_without_contact_fields_creates_the_lead_alone(close: CloseEnv) -> None:
    [out] = close.one(UpsertRequest(lead_company_id="acme", lead_name="Acme"))
    assert out.label == "created"
    [created] = close.leads()
    assert created["contacts"] == []


def test_default_lead_status_applies_to_created_leads_unless_the_request_has_one(close: CloseEnv) -> None:
    won = close.sim.create_status("Won")
    lost = close.sim.create_status("Lost")
    close.settings = Settings(
        close.settings.lead_custom_field_id_for_company_id,
        close.settings.contact_custom_field_id_for_user_id,
        won,
    )
    close.one(UpsertRequest(lead_company_id="a"), UpsertRequest(lead_company_id="b", lead_status_id=lost))
    assert [lead["status_id"] for lead in close.leads()] == [won, lost]
    close.one(UpsertRequest(lead_company_id="b", lead_name="B"))  # updates keep the status
    assert close.leads_of("b")[0]["status_id"] == lost


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (Flags(allow_creating_new_leads=False), "creating_new_leads_not_allowed"),
        (Flags(allow_creating_new_contacts=False), "creating_new_contacts_not_allowed"),
    ],
)
def test_nothing_found_respects_the_creation_flags(close: CloseEnv, flags: Flags, reason: str) -> None:
    [out] = close.one(UpsertRequest(lead_company_id="acme", contact_user_id="u1", flags=flags))
    assert out.label == f"skipped:{reason}"
    assert close.leads() == []


# ------------------------------------------------------------------ step 1


def test_lead_found_by_company_id_is_updated_and_its_contact_matched_by_user_id(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme", contact(close, "u1", "ann@acme.com", name="Ann"), name="Old"))
    [out] = close.one(
        UpsertRequest(
            lead_company_id="acme", lead_name="Acme", contact_user_id="u1", contact_emails=("ann2@acme.com",)
        )
    )
    assert out.label == "updated" and out.branch == "lead_by_company_id"
    [found] = close.leads()
    assert found["name"] == "Acme"
    [c] = found["contacts"]
    assert [e["email"] for e in c["emails"]] == ["ann@acme.com", "ann2@acme.com"]  # appended, not replaced
    assert c["name"] == "Ann"  # scalars only overwritten by values present


def test_several_leads_with_the_company_id_update_the_oldest(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, "acme", name="Newer", date_created="2021-01-01T00:00:00+00:00"),
        lead(close, "acme", name="Oldest", date_created="2020-01-01T00:00:00+00:00"),
    )
    close.one(UpsertRequest(lead_company_id="acme", lead_description="updated"))
    by_name = {x["name"]: x for x in close.leads()}
    assert by_name["Oldest"]["description"] == "updated"
    assert by_name["Newer"]["description"] == ""


def test_contact_missing_from_the_lead_is_created_under_it(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme", contact(close, "u1", "ann@acme.com")))
    [out] = close.one(
        UpsertRequest(lead_company_id="acme", contact_user_id="u2", contact_emails=("bob@acme.com",))
    )
    assert out.label == "created"
    assert writes(close) == {"POST /contact/": 1}
    [found] = close.leads()
    assert len(found["contacts"]) == 2


def test_contact_matched_by_email_case_insensitively_gets_the_user_id(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme", contact(close, None, "Ann@Acme.COM")))
    [out] = close.one(
        UpsertRequest(lead_company_id="acme", contact_user_id="u1", contact_emails=("ann@acme.com",))
    )
    assert out.label == "updated"
    [c] = close.leads()[0]["contacts"]
    assert c[close.user_cf] == "u1"
    assert [e["email"] for e in c["emails"]] == ["Ann@Acme.COM"]


def test_contact_under_another_lead_is_duplicated_only_when_allowed(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, "acme"),
        lead(close, "other", contact(close, "u1", "ann@acme.com")),
    )
    req = UpsertRequest(lead_company_id="acme", contact_user_id="u1", contact_name="Ann")
    [out] = close.one(
        UpsertRequest(**{**req.__dict__, "flags": Flags(allow_creating_duplicate_contacts=False)})
    )
    assert out.label == "skipped:creating_duplicate_contacts_not_allowed"
    assert close.leads_of("acme")[0]["contacts"] == []
    [out] = close.one(req)
    assert out.label == "created"
    assert len(close.contacts_with_user("u1")) == 2


def test_new_contacts_disallowed_under_a_found_lead_is_skipped(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme"))
    [out] = close.one(
        UpsertRequest(
            lead_company_id="acme", contact_user_id="u9", flags=Flags(allow_creating_new_contacts=False)
        )
    )
    assert out.label == "skipped:creating_new_contacts_not_allowed"


def test_request_without_contact_fields_only_touches_the_lead(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme", contact(close, "u1", "ann@acme.com")))
    [out] = close.one(UpsertRequest(lead_company_id="acme", lead_name="Acme"))
    assert out.label == "updated"
    assert writes(close) == {"PUT /lead/{id}/": 1}


def test_at_most_ten_matching_contacts_are_updated_oldest_first(close: CloseEnv) -> None:
    contacts = [
        contact(
            close,
            None,
            "shared@acme.com",
            name=f"c{i:02d}",
            date_created=f"2020-01-{i + 1:02d}T00:00:00+00:00",
        )
        for i in range(12)
    ]
    close.seed_leads(lead(close, "acme", *reversed(contacts)))
    close.one(UpsertRequest(lead_company_id="acme", contact_emails=("shared@acme.com",), contact_title="CTO"))
    titled = sorted(c["name"] for c in close.sim.contacts() if c["title"] == "CTO")
    assert titled == [f"c{i:02d}" for i in range(10)]


def test_same_request_twice_is_unchanged_without_writes(close: CloseEnv) -> None:
    req = UpsertRequest(
        lead_company_id="acme",
        lead_name="Acme",
        lead_custom_fields={},
        contact_user_id="u1",
        contact_emails=("ann@acme.com",),
        contact_phones=("+1 415 555 0100",),
        contact_urls=("https://www.acme.com/",),
        contact_name="Ann",
    )
    first, second = close.one(req, req)
    assert first.label == "created"
    assert second.label == "unchanged"
    assert writes(close) == {"POST /lead/": 1}


def test_equal_phone_and_url_in_another_format_are_not_appended(close: CloseEnv) -> None:
    close.seed_leads(
        lead(
            close,
            "acme",
            contact(
                close,
                "u1",
                "ann@acme.com",
                phones=[{"phone": "+14155550100", "type": "office"}],
                urls=[{"url": "https://acme.com", "type": "url"}],
            ),
        )
    )
    [out] = close.one(
        UpsertRequest(
            lead_company_id="acme",
            contact_user_id="u1",
            contact_emails=("ANN@acme.com",),
            contact_phones=("(415) 555-0100",),
            contact_urls=("http://www.ACME.com/",),
        )
    )
    assert out.label == "unchanged"
    assert writes(close) == {}


def test_updating_existing_leads_disallowed_leaves_the_lead(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme", name="Old"))
    [out] = close.one(
        UpsertRequest(
            lead_company_id="acme", lead_name="New", flags=Flags(allow_updating_existing_leads=False)
        )
    )
    assert out.label == "skipped:updating_existing_leads_not_allowed"
    assert close.leads()[0]["name"] == "Old"


def test_updating_existing_contacts_disallowed_leaves_the_contact(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme", contact(close, "u1", "a@acme.com", title="Old")))
    [out] = close.one(
        UpsertRequest(
            lead_company_id="acme",
            contact_user_id="u1",
            contact_title="New",
            flags=Flags(allow_updating_existing_contacts=False),
        )
    )
    assert out.label == "skipped:updating_existing_contacts_not_allowed"
    assert close.sim.contacts()[0]["title"] == "Old"


def test_custom_fields_are_written_and_compared(close: CloseEnv) -> None:
    plan = close.sim.create_custom_field("lead", "Plan")
    seats = close.sim.create_custom_field("contact", "Seats", type="number")
    req = UpsertRequest(
        lead_company_id="acme",
        lead_custom_fields={plan: "pro"},
        contact_user_id="u1",
        contact_custom_fields={seats: 5},
    )
    first, second = close.one(req, req)
    assert (first.label, second.label) == ("created", "unchanged")
    [found] = close.leads()
    assert found[f"custom.{plan}"] == "pro" and found["contacts"][0][f"custom.{seats}"] == 5


# ------------------------------------------------------------------ step 2


def test_without_company_id_every_matched_contact_and_each_of_their_leads_is_updated(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, None, contact(close, None, "ann@x.com"), contact(close, None, "ann@x.com"), name="L1"),
        lead(close, "beta", contact(close, None, "ann@x.com"), name="L2"),
    )
    [out] = close.one(UpsertRequest(contact_emails=("ann@x.com",), contact_title="CEO", lead_description="d"))
    assert out.label == "updated" and out.branch == "contacts_without_company_id"
    assert all(c["title"] == "CEO" for c in close.sim.contacts())
    assert all(x["description"] == "d" for x in close.leads())
    assert writes(close) == {"PUT /contact/{id}/": 3, "PUT /lead/{id}/": 2}


def test_user_id_match_wins_over_email_match(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, None, contact(close, None, "ann@x.com", name="by email")),
        lead(close, None, contact(close, "u1", "other@x.com", name="by user id")),
    )
    close.one(UpsertRequest(contact_user_id="u1", contact_emails=("ann@x.com",), contact_title="CEO"))
    titled = [c["name"] for c in close.sim.contacts() if c["title"] == "CEO"]
    assert titled == ["by user id"]


def test_company_id_adopts_the_oldest_contacts_lead_when_it_has_no_company_id(close: CloseEnv) -> None:
    close.seed_leads(lead(close, None, contact(close, None, "ann@acme.com"), name="Unowned"))
    [out] = close.one(
        UpsertRequest(
            lead_company_id="acme", lead_name="Acme", contact_emails=("ann@acme.com",), contact_user_id="u1"
        )
    )
    assert out.label == "updated" and out.branch == "adopt_lead"
    [adopted] = close.leads()
    assert adopted[close.company_cf] == "acme" and adopted["name"] == "Acme"
    assert adopted["contacts"][0][close.user_cf] == "u1"


def test_company_id_with_the_contact_under_another_company_creates_lead_and_contact(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "old-co", contact(close, "u1", "ann@x.com")))
    [out] = close.one(UpsertRequest(lead_company_id="new-co", contact_user_id="u1", contact_name="Ann"))
    assert out.label == "created" and out.branch == "duplicate_under_new_lead"
    assert len(close.leads_of("new-co")[0]["contacts"]) == 1
    assert len(close.contacts_with_user("u1")) == 2


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (Flags(allow_creating_duplicate_contacts=False), "creating_duplicate_contacts_not_allowed"),
        (Flags(allow_creating_new_leads=False), "creating_new_leads_not_allowed"),
        (Flags(allow_creating_new_contacts=False), "creating_new_contacts_not_allowed"),
    ],
)
def test_moving_to_a_new_company_needs_all_three_creation_flags(
    close: CloseEnv, flags: Flags, reason: str
) -> None:
    close.seed_leads(lead(close, "old-co", contact(close, "u1", "ann@x.com")))
    [out] = close.one(UpsertRequest(lead_company_id="new-co", contact_user_id="u1", flags=flags))
    assert out.label == f"skipped:{reason}"
    assert len(close.leads()) == 1


# ------------------------------------------------------------ failures, dry run


def test_a_400_fails_only_its_request_with_closes_error_body(close: CloseEnv) -> None:
    bad = UpsertRequest(lead_company_id="bad", contact_user_id="u1", contact_emails=("not an email",))
    good = UpsertRequest(lead_company_id="good", contact_user_id="u2")
    out_bad, out_good = close.batch([bad, good])
    assert out_bad.kind == "failed" and out_bad.reason == "http_400" and out_bad.http_status == 400
    assert "field-errors" in out_bad.error_body
    assert out_good.label == "created"


def test_dry_run_reads_only_and_reports_the_field_changes(close: CloseEnv) -> None:
    close.seed_leads(lead(close, "acme", contact(close, "u1", "ann@acme.com"), name="Old"))
    before = close.projection()
    [plan] = close.one(
        UpsertRequest(
            lead_company_id="acme", lead_name="New", contact_user_id="u1", contact_emails=("b@acme.com",)
        ),
        UpsertRequest(lead_company_id="zeta", contact_user_id="u9"),
        dry_run=True,
    )[:1]
    assert plan.label == "updated" and plan.branch == "lead_by_company_id"
    changed = {(c["object"], c["field"]) for c in plan.changes}
    assert changed == {("lead", "name"), ("contact", "emails")}
    assert close.projection() == before
    assert writes(close) == {}
