import time

import pytest

pytestmark = pytest.mark.integration


def object_type(t):
    return {"type": "object_type", "object_type": t}


def cf_term(cf, values):
    """Records whose text custom field holds one of ``values``: one exact_value text condition each."""
    exact = [
        {
            "type": "field_condition",
            "field": {"type": "custom_field", "custom_field_id": cf},
            "condition": {"type": "text", "mode": "exact_value", "value": v},
        }
        for v in values
    ]
    return exact[0] if len(exact) == 1 else {"type": "or", "queries": exact}


def email_related(condition):
    return {
        "type": "has_related",
        "this_object_type": "contact",
        "related_object_type": "contact_email",
        "related_query": {
            "type": "field_condition",
            "field": {"type": "regular_field", "object_type": "contact_email", "field_name": "email"},
            "condition": condition,
        },
    }


def search(api, query, **extra):
    r = api.post("data/search/", json={"query": query, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_term_list_on_lead_custom_field_finds_each_value(sim, api):
    cf = sim.create_custom_field("lead", "Company ID")
    ids = {c: api.post("lead/", json={"name": c, f"custom.{cf}": c}).json()["id"] for c in ("c1", "c2", "c3")}
    body = search(api, {"type": "and", "queries": [object_type("lead"), cf_term(cf, ["c1", "c3", "c9"])]}, _limit=50)
    assert {d["id"] for d in body["data"]} == {ids["c1"], ids["c3"]}
    assert all(d["__object_type"] == "lead" for d in body["data"])
    assert body["cursor"] is None


def test_term_is_exact_string_compare(sim, api):
    sim.configure(term_case="sensitive")
    cf = sim.create_custom_field("contact", "Plan", type="choices", choices=["u-1", "U-1", "u-"])
    contact = api.post("contact/", json={"name": "A", f"custom.{cf}": "u-1"}).json()
    term = {"type": "field_condition", "field": {"type": "custom_field", "custom_field_id": cf}}
    q = {"type": "and", "queries": [object_type("contact"), {**term, "condition": {"type": "term", "values": ["U-1", "u-"]}}]}
    assert search(api, q)["data"] == []
    q = {"type": "and", "queries": [object_type("contact"), {**term, "condition": {"type": "term", "values": ["u-1"]}}]}
    assert [d["id"] for d in search(api, q)["data"]] == [contact["id"]]


def test_exact_value_matches_the_whole_value_in_any_case_and_term_on_text_is_refused(sim, api):
    cf = sim.create_custom_field("contact", "User ID")
    contact = api.post("contact/", json={"name": "A", f"custom.{cf}": "u-1"}).json()
    api.post("contact/", json={"name": "B", f"custom.{cf}": "u-10"})
    for case in ("sensitive", "insensitive"):
        sim.configure(term_case=case)
        q = {"type": "and", "queries": [object_type("contact"), cf_term(cf, ["U-1", "u-"])]}
        assert [d["id"] for d in search(api, q)["data"]] == [contact["id"]]
    field = {"type": "custom_field", "custom_field_id": cf}
    q = {"type": "and", "queries": [object_type("contact"), {"type": "field_condition", "field": field,
                                                              "condition": {"type": "term", "values": ["u-1"]}}]}
    r = api.post("data/search/", json={"query": q})
    assert r.status_code == 400 and "exact_value" in r.text


def test_contacts_found_by_email_term_case_insensitively(sim, api):
    sim.configure(term_case="insensitive")
    a = api.post("contact/", json={"name": "A", "emails": [{"email": "Ann@Acme.com"}]}).json()
    b = api.post("contact/", json={"name": "B", "emails": [{"email": "x@y.com"}, {"email": "bob@b.io"}]}).json()
    api.post("contact/", json={"name": "C", "emails": [{"email": "ann@acme.com.au"}]})
    q = {"type": "and", "queries": [object_type("contact"),
                                    email_related({"type": "term", "values": ["ann@acme.com", "BOB@B.IO"]})]}
    body = search(api, q, _fields={"contact": ["lead_id", "emails"]})
    assert {d["id"] for d in body["data"]} == {a["id"], b["id"]}
    by_id = {d["id"]: d for d in body["data"]}
    assert by_id[a["id"]]["lead_id"] == a["lead_id"]
    assert by_id[a["id"]]["emails"] == [{"email": "Ann@Acme.com", "type": "office"}]
    sim.configure(term_case="sensitive")  # the other reading: terms compare emails as stored
    assert search(api, q)["data"] == []


def test_text_condition_is_not_exact(api):
    exact = api.post("contact/", json={"name": "A", "emails": [{"email": "john@acme.com"}]}).json()
    longer = api.post("contact/", json={"name": "B", "emails": [{"email": "john@acme.com.au"}]}).json()
    api.post("contact/", json={"name": "C", "emails": [{"email": "jane@acme.com"}]})
    q = {"type": "and", "queries": [object_type("contact"),
                                    email_related({"type": "text", "mode": "full_words", "value": "john@acme.com"})]}
    assert {d["id"] for d in search(api, q)["data"]} == {exact["id"], longer["id"]}


def test_object_type_and_or(sim, api):
    cf = sim.create_custom_field("lead", "Company ID")
    lead = api.post("lead/", json={"name": "L", f"custom.{cf}": "c1", "contacts": [{"name": "C"}]}).json()
    leads_only = search(api, object_type("lead"))["data"]
    contacts_only = search(api, object_type("contact"))["data"]
    assert [d["id"] for d in leads_only] == [lead["id"]]
    assert [d["id"] for d in contacts_only] == lead["contact_ids"]
    both = search(api, {"type": "or", "queries": [object_type("lead"), object_type("contact")]})["data"]
    assert {d["__object_type"] for d in both} == {"lead", "contact"}
    q = {"type": "and", "queries": [object_type("lead"),
                                    {"type": "or", "queries": [cf_term(cf, ["zz"]), cf_term(cf, ["c1"])]}]}
    assert [d["id"] for d in search(api, q)["data"]] == [lead["id"]]


def test_lead_has_related_contact(api):
    lead = api.post("lead/", json={"name": "L", "contacts": [{"name": "Zed", "emails": [{"email": "z@z.com"}]}]}).json()
    api.post("lead/", json={"name": "M", "contacts": [{"name": "Other"}]})
    q = {"type": "and", "queries": [object_type("lead"), {
        "type": "has_related", "this_object_type": "lead", "related_object_type": "contact",
        "related_query": {"type": "field_condition",
                          "field": {"type": "regular_field", "object_type": "contact", "field_name": "name"},
                          "condition": {"type": "term", "values": ["Zed"]}}}]}
    assert [d["id"] for d in search(api, q)["data"]] == [lead["id"]]


def test_cursor_pages_through_everything_once_in_sort_order(sim, api):
    sim.seed({"leads": [{"name": f"L{i:02d}"} for i in range(25)]})
    sort = [{"direction": "asc", "field": {"type": "regular_field", "object_type": "lead", "field_name": "date_created"}}]
    seen, cursor, pages = [], None, 0
    while True:
        body = search(api, object_type("lead"), _limit=10, cursor=cursor, sort=sort,
                      _fields={"lead": ["name", "date_created"]})
        seen += body["data"]
        pages += 1
        cursor = body["cursor"]
        if cursor is None:
            break
        api.post("lead/", json={"name": "added during paging"})  # newer records land after the cursor
    assert pages == 3
    names = [d["name"] for d in seen]
    assert names[:25] == [f"L{i:02d}" for i in range(25)]
    assert len({d["id"] for d in seen}) == len(seen)


def test_sort_desc_by_date_created_and_by_name(api):
    ids = [api.post("lead/", json={"name": n}).json()["id"] for n in ("b", "c", "a")]
    desc = [{"direction": "desc", "field": {"type": "regular_field", "object_type": "lead", "field_name": "date_created"}}]
    assert [d["id"] for d in search(api, object_type("lead"), sort=desc)["data"]] == ids[::-1]
    by_name = [{"direction": "asc", "field": {"type": "regular_field", "object_type": "lead", "field_name": "name"}}]
    body = search(api, object_type("lead"), sort=by_name, _fields={"lead": ["name"]})
    assert [d["name"] for d in body["data"]] == ["a", "b", "c"]


def test_fields_select_only_requested_keys(sim, api):
    cf = sim.create_custom_field("lead", "Company ID")
    api.post("lead/", json={"name": "Acme", f"custom.{cf}": "c1", "description": "secret"})
    body = search(api, object_type("lead"), _fields={"lead": ["name", f"custom.{cf}", "status_id"]})
    (row,) = body["data"]
    assert set(row) == {"__object_type", "id", "name", f"custom.{cf}", "status_id"}
    assert row[f"custom.{cf}"] == "c1"


@pytest.mark.parametrize(
    "body",
    [
        {"query": {"type": "bogus"}},
        {"query": {"type": "and", "queries": [{"type": "object_type", "object_type": "lead"}, {"type": "bogus"}]}},
        {"query": {"type": "object_type", "object_type": "lead"}, "_fields": {"lead": ["nonsense"]}},
        {"query": {"type": "and", "queries": [{"type": "object_type", "object_type": "lead"},
                                              {"type": "field_condition",
                                               "field": {"type": "custom_field", "custom_field_id": "cf_nope"},
                                               "condition": {"type": "term", "values": ["x"]}}]}},
        {"query": {"type": "object_type", "object_type": "lead"}, "_limit": 201},
        {"query": {"type": "object_type", "object_type": "lead"}, "cursor": "garbage"},
        {"query": {"type": "object_type", "object_type": "lead"}, "unexpected": 1},
        {"query": {"type": "field_condition",
                   "field": {"type": "regular_field", "object_type": "lead", "field_name": "name"},
                   "condition": {"type": "term", "values": ["x"]}}},
    ],
)
def test_invalid_search_bodies_are_400(api, body):
    r = api.post("data/search/", json=body)
    assert r.status_code == 400
    assert set(r.json()) == {"errors", "field-errors"}


def test_limit_200_is_accepted(api):
    assert api.post("data/search/", json={"query": object_type("lead"), "_limit": 200}).status_code == 200


def test_search_lags_behind_writes_while_get_sees_them(sim, api):
    cf = sim.create_custom_field("lead", "Company ID")
    sim.configure(search_lag=0.3)
    lead = api.post("lead/", json={"name": "Fresh", f"custom.{cf}": "c1"}).json()
    q = {"type": "and", "queries": [object_type("lead"), cf_term(cf, ["c1"])]}
    assert search(api, q)["data"] == []
    assert api.get(f"lead/{lead['id']}/").status_code == 200
    # An update is seen by search in its old form during the lag.
    time.sleep(0.35)
    assert [d["id"] for d in search(api, q)["data"]] == [lead["id"]]
    api.put(f"lead/{lead['id']}/", json={f"custom.{cf}": "c2"})
    assert [d["id"] for d in search(api, q)["data"]] == [lead["id"]]
    api.delete(f"lead/{lead['id']}/")
    assert api.get(f"lead/{lead['id']}/").status_code == 404
    assert [d["id"] for d in search(api, q)["data"]] == [lead["id"]]
    time.sleep(0.35)
    assert search(api, q)["data"] == []
