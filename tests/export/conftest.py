"""An organisation to export: 5,000 leads / 12,000 contacts in Close's shapes, built once per session."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from closecrm.api.client import CloseClient
from closecrm.reverse_etl.export import ExportRequest, ExportResult, export
from closesim import SimConfig, SimServer
from tests.conftest import SIM_TEST_DEFAULTS

N_LEADS = 5_000
N_CONTACTS = 12_000
TIE_GROUP = 250  # leads created at one instant: more than a search page holds
EPOCH = datetime(2021, 1, 1, tzinfo=UTC)

LEAD_FIELDS = [
    {"id": "cf_company", "name": "Company ID", "type": "text"},
    {"id": "cf_plan", "name": "Plan", "type": "choices", "choices": ["free", "pro", "enterprise"]},
    {"id": "cf_seats", "name": "Seats", "type": "number"},
    {"id": "cf_renewal", "name": "Renewal Date", "type": "date"},
    {"id": "cf_tags", "name": "Tags", "type": "text", "accepts_multiple_values": True},
    {"id": "cf_seen", "name": "Last Seen (UTC)", "type": "datetime"},
]
CONTACT_FIELDS = [
    {"id": "cf_user", "name": "User ID", "type": "text"},
    {"id": "cf_score", "name": "Score", "type": "number"},
    {"id": "cf_signup", "name": "Signed up", "type": "datetime"},
]
EMAIL_TYPES = [
    "office",
    "home",
    "direct",
    "mobile",
    "other",
    "work",
]  # "work" is not Close's: flattened as other
PHONE_TYPES = ["office", "mobile", "home", "direct", "fax", "other"]
URL_TYPES = ["url", "office", "home", "blog"]


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds")


def organisation(seed: int = 7) -> dict[str, Any]:
    """Leads spread over two years (plus one group sharing a date_created), 2–3 contacts each."""
    rng = random.Random(seed)
    leads = []
    n_contact = 0
    for i in range(N_LEADS):
        created = (
            EPOCH + timedelta(days=365)
            if i < TIE_GROUP
            else EPOCH + timedelta(seconds=rng.randrange(2 * 365 * 86400))
        )
        updated = created + timedelta(seconds=rng.randrange(86400 * 30))
        lead: dict[str, Any] = {
            "id": f"lead_{i:05d}",
            "name": f"Company {i}" if i % 17 else None,
            "status_label": rng.choice(["Potential", "Bad Fit", "Qualified", "Customer"]),
            "date_created": _iso(created),
            "date_updated": _iso(updated),
            "custom.cf_company": f"co-{i}",
        }
        if i % 3:
            lead["custom.cf_plan"] = rng.choice(["free", "pro", "enterprise"])
        if i % 4:
            lead["custom.cf_seats"] = rng.randrange(1, 500) if i % 8 else rng.randrange(1, 500) + 0.5
        if i % 5:
            lead["custom.cf_renewal"] = (EPOCH + timedelta(days=rng.randrange(1000))).date().isoformat()
        if i % 6:
            lead["custom.cf_tags"] = rng.sample(["a", "b", "c", "vip", "trial"], rng.randrange(1, 4))
        if i % 7:
            lead["custom.cf_seen"] = _iso(updated + timedelta(hours=rng.randrange(100)))
        contacts = []
        for k in range(3 if i % 5 < 2 else 2):
            j = n_contact
            n_contact += 1
            c_created = created + timedelta(seconds=k)
            contact: dict[str, Any] = {
                "id": f"cont_{j:05d}",
                "name": f"Person {j}" if j % 11 else None,
                "title": rng.choice([None, "CEO", "CTO", "Buyer"]),
                "date_created": _iso(c_created),
                "date_updated": _iso(c_created + timedelta(seconds=rng.randrange(86400 * 30))),
                "emails": [
                    {"email": f"p{j}.{n}@ex{n}.com", "type": rng.choice(EMAIL_TYPES)}
                    for n in range(rng.randrange(0, 4))
                ],
                "phones": [
                    {"phone": f"+1 415 555 {1000 + (j * 3 + n) % 9000:04d}", "type": rng.choice(PHONE_TYPES)}
                    for n in range(rng.randrange(0, 3))
                ],
                "urls": [
                    {"url": f"https://ex.com/{j}/{n}", "type": rng.choice(URL_TYPES)}
                    for n in range(rng.randrange(0, 3))
                ],
                "custom.cf_user": f"u-{j}",
            }
            if j % 2:
                contact["custom.cf_score"] = rng.randrange(100)
            if j % 3:
                contact["custom.cf_signup"] = _iso(c_created - timedelta(days=rng.randrange(30)))
            contacts.append(contact)
        lead["contacts"] = contacts
        leads.append(lead)
    assert n_contact == N_CONTACTS
    return {"custom_fields": {"lead": LEAD_FIELDS, "contact": CONTACT_FIELDS}, "leads": leads}


# Column names the custom fields get (slug of the name), and how to read a stored value.
LEAD_COLUMNS = {
    "cf_company": ("custom_company_id", str),
    "cf_plan": ("custom_plan", str),
    "cf_seats": ("custom_seats", float),
    "cf_renewal": ("custom_renewal_date", date.fromisoformat),
    "cf_tags": ("custom_tags", list),
    "cf_seen": ("custom_last_seen_utc", lambda v: datetime.fromisoformat(v)),
}
CONTACT_COLUMNS = {
    "cf_user": ("custom_user_id", str),
    "cf_score": ("custom_score", float),
    "cf_signup": ("custom_signed_up", lambda v: datetime.fromisoformat(v)),
}
KNOWN = {
    "email": ("office", "home", "direct", "mobile", "other"),
    "phone": ("office", "mobile", "home", "direct", "fax", "other"),
    "url": ("url", "office", "home", "other"),
}


def _custom(record: dict[str, Any], columns: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for cf_id, (column, read) in columns.items():
        value = record.get(f"custom.{cf_id}")
        out[column] = None if value is None else read(value)
    return out


def expected_lead(lead: dict[str, Any]) -> dict[str, Any]:
    """The export row of a lead as the simulator renders it, computed without the export's code."""
    return {
        "id": lead["id"],
        "name": lead["name"],
        "status_id": lead["status_id"],
        "status_label": lead["status_label"],
        "company_id": lead.get("custom.cf_company"),
        "date_created": datetime.fromisoformat(lead["date_created"]),
        "date_updated": datetime.fromisoformat(lead["date_updated"]),
        **_custom(lead, LEAD_COLUMNS),
    }


def expected_contact(contact: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": contact["id"],
        "lead_id": contact["lead_id"],
        "name": contact["name"],
        "title": contact["title"],
        "user_id": contact.get("custom.cf_user"),
        "emails": [{"email": e["email"], "type": e["type"]} for e in contact["emails"]],
        "phones": [
            {"phone": p["phone"], "phone_formatted": p["phone_formatted"], "type": p["type"]}
            for p in contact["phones"]
        ],
        "urls": [{"url": u["url"], "type": u["type"]} for u in contact["urls"]],
    }
    for kind, key in (("email", "emails"), ("phone", "phones"), ("url", "urls")):
        for t in KNOWN[kind]:
            matches = [
                i[kind] for i in contact[key] if (i["type"] if i["type"] in KNOWN[kind] else "other") == t
            ]
            row[f"{kind}_{t}"] = matches[0] if matches else None
    row["date_created"] = datetime.fromisoformat(contact["date_created"])
    row["date_updated"] = datetime.fromisoformat(contact["date_updated"])
    row.update(_custom(contact, CONTACT_COLUMNS))
    return row


def assert_rows_match(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Same ids, and every field of every row equal (reported per field, for readable failures)."""
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "a record was written twice"
    assert set(by_id) == {e["id"] for e in expected}
    for want in expected:
        got = by_id[want["id"]]
        assert set(got) == set(want), want["id"]
        diffs = {k: (got[k], v) for k, v in want.items() if got[k] != v}
        assert not diffs, f"{want['id']}: {diffs}"


def run_export(server: SimServer, out: Path, **request: Any) -> ExportResult:
    async def go() -> ExportResult:
        async with CloseClient(server.base_url, server.api_key) as client:
            return await export(
                client, ExportRequest(out, company_id_field="cf_company", user_id_field="cf_user", **request)
            )

    return asyncio.run(go())


@pytest.fixture(scope="session")
def org_sim() -> Iterator[SimServer]:
    """A simulator of its own holding the organisation, seeded once for the session.

    Limits are off; the large time scale makes the budget its header announces large too, so the
    client's pacing does not slow these tests. Tests that write to it compare against its state then.
    """
    server = SimServer(SimConfig(**(SIM_TEST_DEFAULTS | {"time_scale": 200.0})))
    server.start()
    server.seed(organisation())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def full_export(org_sim: SimServer, tmp_path_factory: pytest.TempPathFactory):
    """One full Parquet export of the organisation, with the state it was taken from."""
    leads, contacts = org_sim.leads(), org_sim.contacts()
    calls_before = org_sim.stats()["requests_total"]
    result = run_export(org_sim, tmp_path_factory.mktemp("full"))
    return result, leads, contacts, org_sim.stats()["requests_total"] - calls_before
