"""`--updated-since`: exactly the records changed since then, with their new values."""

from datetime import UTC, datetime

import httpx
import pyarrow.parquet as pq
import pytest

from tests.export.conftest import assert_rows_match, expected_contact, expected_lead, run_export

pytestmark = pytest.mark.integration


def test_updated_since_exports_exactly_the_records_changed_since(org_sim, tmp_path):
    since = datetime.now(UTC)
    leads = org_sim.leads()
    lead_ids = [leads[i]["id"] for i in (3, 250, 1999, 4998)]  # one of them from the group sharing a date
    contact_ids = [c["id"] for c in org_sim.contacts()[100:4000:600]]
    with httpx.Client(base_url=org_sim.base_url, auth=(org_sim.api_key, ""), timeout=10) as api:
        for n, lead_id in enumerate(lead_ids):
            body = {"name": f"Renamed {n}", "custom.cf_seats": 7, "custom.cf_tags": ["renewed"]}
            assert api.put(f"lead/{lead_id}/", json=body).status_code == 200
        for contact_id in contact_ids:
            body = {
                "title": "Moved on",
                "emails": [{"email": f"{contact_id}@new.io", "type": "home"}],
                "urls": [],
            }
            assert api.put(f"contact/{contact_id}/", json=body).status_code == 200

    result = run_export(org_sim, tmp_path, updated_since=since)

    assert (result.leads, result.contacts) == (len(lead_ids), len(contact_ids))
    now_leads = [x for x in org_sim.leads() if x["id"] in lead_ids]
    now_contacts = [c for c in org_sim.contacts() if c["id"] in contact_ids]
    leads_rows = pq.read_table(tmp_path / "leads.parquet").to_pylist()
    contacts_rows = pq.read_table(tmp_path / "contacts.parquet").to_pylist()
    assert_rows_match(leads_rows, [expected_lead(x) for x in now_leads])
    assert_rows_match(contacts_rows, [expected_contact(c) for c in now_contacts])
    assert {r["name"] for r in leads_rows} == {f"Renamed {n}" for n in range(4)}
    assert all(r["email_home"] == f"{r['id']}@new.io" and r["urls"] == [] for r in contacts_rows)
    # An incremental run reads only what changed: two searches per slice at most, per object type.
    assert result.counters["calls_by_group"]["search"] <= 2 * (2 + 4)


def test_updated_since_is_inclusive(org_sim, tmp_path):
    lead = sorted(org_sim.leads(), key=lambda x: x["date_updated"])[-60]  # a late one: a small export
    moment = datetime.fromisoformat(lead["date_updated"])
    result = run_export(org_sim, tmp_path, updated_since=moment)
    ids = set(pq.read_table(tmp_path / "leads.parquet").column("id").to_pylist())
    assert lead["id"] in ids
    assert ids == {x["id"] for x in org_sim.leads() if datetime.fromisoformat(x["date_updated"]) >= moment}
    assert result.leads == len(ids)
