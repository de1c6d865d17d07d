"""Rows: flattening by type, custom field columns and conversions, time slices, timestamps."""

from datetime import UTC, date, datetime, timedelta

import pytest

from closecrm.reverse_etl.export import RowBuilder, TimeSlice, flatten_by_type, parse_moment, split
from closecrm.reverse_etl.export_schema import custom_columns, slug


def test_flattening_takes_the_first_value_of_each_type():
    emails = [
        {"email": "a@x.io", "type": "office"},
        {"email": "b@x.io", "type": "office"},
        {"email": "c@x.io", "type": "Home"},
    ]
    assert flatten_by_type("email", emails) == {
        "email_office": "a@x.io",
        "email_home": "c@x.io",
        "email_direct": None,
        "email_mobile": None,
        "email_other": None,
    }


def test_unknown_and_missing_types_flatten_as_other_after_a_real_other():
    phones = [{"phone": "+1", "type": "pager"}, {"phone": "+2", "type": "other"}, {"phone": "+3"}]
    assert flatten_by_type("phone", phones)["phone_other"] == "+1"
    urls = [{"url": "https://a", "type": ""}, {"url": "https://b", "type": "url"}]
    flat = flatten_by_type("url", urls)
    assert flat["url_other"] == "https://a" and flat["url_url"] == "https://b"


def test_no_values_flatten_to_all_null():
    assert set(flatten_by_type("url", []).values()) == {None}


def test_contact_row_keeps_lists_and_flattened_columns():
    doc = {
        "id": "cont_1",
        "lead_id": "lead_1",
        "name": "Ann",
        "emails": [{"email": "ann@x.io", "type": "work"}],
        "phones": [{"phone": "+14155550100", "phone_formatted": "+1 415-555-0100", "type": "mobile"}],
        "date_created": "2024-01-02T03:04:05.000006+00:00",
        "date_updated": "2024-01-02T03:04:05.000006Z",
        "custom.cf_u": "u-1",
    }
    row = RowBuilder(custom_columns([{"id": "cf_u", "name": "User ID", "type": "text"}]), "cf_u").contact(doc)
    assert row["emails"] == [{"email": "ann@x.io", "type": "work"}] and row["email_other"] == "ann@x.io"
    assert row["phone_mobile"] == "+14155550100" and row["urls"] == [] and row["title"] is None
    assert row["user_id"] == "u-1" == row["custom_user_id"]
    assert row["date_created"] == datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC) == row["date_updated"]


def test_custom_columns_are_slugged_ordered_and_disambiguated():
    defs = [
        {"id": "cf_b", "name": "Plan!", "type": "text"},
        {"id": "cf_a", "name": "plan", "type": "text"},
        {"id": "cf_c", "name": "Über Score (%)", "type": "number"},
        {"id": "cf_d", "name": "2nd phone", "type": "text", "accepts_multiple_values": True},
    ]
    columns = custom_columns(defs)
    assert [(c.column, c.cf_id) for c in columns] == [
        ("custom_2nd_phone", "cf_d"),
        ("custom_plan", "cf_a"),
        ("custom_plan_2", "cf_b"),
        ("custom_uber_score", "cf_c"),
    ]
    assert slug("  ") == "field"


def test_custom_values_convert_to_their_field_type():
    defs = [
        {"id": "cf_n", "name": "n", "type": "number"},
        {"id": "cf_d", "name": "d", "type": "date"},
        {"id": "cf_t", "name": "t", "type": "datetime"},
        {"id": "cf_m", "name": "m", "type": "choices", "accepts_multiple_values": True},
        {"id": "cf_u", "name": "u", "type": "user"},
    ]
    rows = RowBuilder(custom_columns(defs), "")
    doc = {
        "custom.cf_n": 3,
        "custom.cf_d": "2024-02-29",
        "custom.cf_t": "2024-02-29T10:00:00+02:00",
        "custom.cf_m": ["a", "b"],
        "custom.cf_u": "user_1",
    }
    assert rows.custom(doc) == {
        "custom_n": 3.0,
        "custom_d": date(2024, 2, 29),
        "custom_t": datetime(2024, 2, 29, 8, tzinfo=UTC),
        "custom_m": ["a", "b"],
        "custom_u": "user_1",
    }
    assert set(rows.custom({}).values()) == {None}
    assert rows.unconvertible == 0


def test_a_value_that_does_not_fit_its_type_is_null_and_counted():
    rows = RowBuilder(custom_columns([{"id": "cf_n", "name": "n", "type": "number"}]), "")
    assert rows.custom({"custom.cf_n": "lots"}) == {"custom_n": None}
    assert rows.unconvertible == 1


def test_time_slices_cover_the_range_and_the_last_is_open_ended():
    first, last = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 5, tzinfo=UTC)
    parts = split(first, last, 4, None)
    assert parts[0] == TimeSlice(None, datetime(2024, 1, 2, tzinfo=UTC))
    assert parts[-1] == TimeSlice(datetime(2024, 1, 4, tzinfo=UTC), None)
    assert all(a.end == b.start for a, b in zip(parts, parts[1:], strict=False))
    since = first - timedelta(days=3)
    assert split(first, last, 2, since)[0].start == since


def test_a_range_narrower_than_the_slice_count_is_not_split_finer_than_a_microsecond():
    t = datetime(2024, 1, 1, tzinfo=UTC)
    assert split(t, t, 4, None) == [TimeSlice(None, None)]
    assert len(split(t, t + timedelta(microseconds=2), 8, None)) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-06-01", datetime(2024, 6, 1, tzinfo=UTC)),
        ("2024-06-01T12:30:00", datetime(2024, 6, 1, 12, 30, tzinfo=UTC)),
        ("2024-06-01T12:30:00Z", datetime(2024, 6, 1, 12, 30, tzinfo=UTC)),
        ("2024-06-01T14:30:00+02:00", datetime(2024, 6, 1, 12, 30, tzinfo=UTC)),
    ],
)
def test_moments_are_utc(text, expected):
    assert parse_moment(text) == expected and parse_moment(text).utcoffset() == timedelta(0)


def test_a_moment_that_is_not_iso_is_refused():
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_moment("yesterday")
