"""Search: `moment_range` conditions on date fields (what the export's keyset paging relies on)."""

import pytest

pytestmark = pytest.mark.integration

DATES = [
    "2021-03-01T10:00:00.000000+00:00",
    "2021-03-01T12:00:00.000000+00:00",
    "2021-03-02T00:00:00.000000+00:00",
]


def date_range(field, on_or_after=None, before=None, object_type="lead"):
    condition = {"type": "moment_range"}
    if on_or_after is not None:
        condition["on_or_after"] = on_or_after
    if before is not None:
        condition["before"] = before
    return {
        "type": "and",
        "queries": [
            {"type": "object_type", "object_type": object_type},
            {
                "type": "field_condition",
                "field": {"type": "regular_field", "object_type": object_type, "field_name": field},
                "condition": condition,
            },
        ],
    }


def utc(value):
    return {"type": "fixed_utc", "value": value}


@pytest.fixture
def ids(sim):
    sim.seed(
        {"leads": [{"id": f"lead_{i}", "name": f"L{i}", "date_created": d} for i, d in enumerate(DATES)]}
    )
    return ["lead_0", "lead_1", "lead_2"]


def names(api, query):
    r = api.post("data/search/", json={"query": query, "_limit": 50})
    assert r.status_code == 200, r.text
    return [d["id"] for d in r.json()["data"]]


def test_on_or_after_is_inclusive_and_before_exclusive(api, ids):
    q = date_range("date_created", utc(DATES[1]), utc(DATES[2]))
    assert names(api, q) == ["lead_1"]


def test_either_bound_alone(api, ids):
    assert names(api, date_range("date_created", on_or_after=utc(DATES[1]))) == ["lead_1", "lead_2"]
    assert names(api, date_range("date_created", before=utc(DATES[1]))) == ["lead_0"]


def test_fixed_utc_accepts_z_other_offsets_and_naive_as_utc(api, ids):
    assert names(api, date_range("date_created", utc("2021-03-01T11:00:00Z"))) == ["lead_1", "lead_2"]
    assert names(api, date_range("date_created", utc("2021-03-01T13:00:00+02:00"))) == ["lead_1", "lead_2"]
    assert names(api, date_range("date_created", before=utc("2021-03-01T10:00:00.000001"))) == ["lead_0"]


def test_fixed_local_date_start_and_end_of_day_in_utc(api, ids):
    day = {"type": "fixed_local_date", "value": "2021-03-01", "which": "start"}
    end = {"type": "fixed_local_date", "value": "2021-03-01", "which": "end"}
    assert names(api, date_range("date_created", day, end)) == ["lead_0", "lead_1"]


def test_on_date_updated_and_contacts(sim, api):
    sim.seed(
        {
            "leads": [
                {
                    "id": "lead_a",
                    "date_created": DATES[0],
                    "contacts": [
                        {"id": "cont_a", "date_created": DATES[0], "date_updated": DATES[2]},
                        {"id": "cont_b", "date_created": DATES[0], "date_updated": DATES[0]},
                    ],
                }
            ]
        }
    )
    assert names(api, date_range("date_updated", utc(DATES[1]), object_type="contact")) == ["cont_a"]


@pytest.mark.parametrize(
    "condition",
    [
        {"type": "moment_range"},
        {"type": "moment_range", "on_or_after": {"type": "relative", "value": "now"}},
        {"type": "moment_range", "on_or_after": {"type": "fixed_utc", "value": "yesterday"}},
        {"type": "moment_range", "on_or_after": {"type": "fixed_utc"}},
        {"type": "moment_range", "after": {"type": "fixed_utc", "value": "2021-01-01"}},
        {
            "type": "moment_range",
            "before": {"type": "fixed_local_date", "value": "2021-01-01", "which": "noon"},
        },
    ],
)
def test_invalid_moment_ranges_are_400(api, condition):
    q = date_range("date_created")
    q["queries"][1]["condition"] = condition
    r = api.post("data/search/", json={"query": q})
    assert r.status_code == 400, r.text
