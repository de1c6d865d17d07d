"""The export asks Close only what Close documents or public code shows it answering: it sorts on the
key date alone, keeps each `_fields` list short, reads shared fields, and takes a field's
multiplicity from `accepts_multiple_values`. The simulator refuses anything else with a 400."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from closesim import SimServer
from tests.export.conftest import run_export

pytestmark = pytest.mark.integration


def rows(path: Path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: r["id"])


def fields_and_leads(sim: SimServer, fields: list[dict], leads: list[dict]) -> None:
    sim.configure(time_scale=200.0)
    sim.seed(
        {
            "custom_fields": {
                "lead": [{"id": "cf_company", "name": "Company ID"}, *fields],
                "contact": [{"id": "cf_user", "name": "User ID"}],
            },
            "leads": leads,
        }
    )


def test_a_multi_value_field_is_exported_as_a_list(sim: SimServer, tmp_path: Path) -> None:
    tags = {"id": "cf_tags", "name": "Tags", "type": "text", "accepts_multiple_values": True}
    fields_and_leads(sim, [tags], [{"id": "lead_a", "custom.cf_company": "a", "custom.cf_tags": ["vip", "eu"]}])
    result = run_export(sim, tmp_path)
    [lead] = rows(result.paths[0])
    assert lead["custom_tags"] == ["vip", "eu"]


def test_shared_fields_are_exported_on_every_object_they_are_associated_with(
    sim: SimServer, tmp_path: Path
) -> None:
    fields_and_leads(sim, [], [])
    region = sim.create_shared_custom_field("Region", associations=("lead", "contact"))
    sim.seed(
        {
            "leads": [
                {
                    "id": "lead_a",
                    "custom.cf_company": "a",
                    f"custom.{region}": "EU",
                    "contacts": [{"id": "cont_a", "custom.cf_user": "u", f"custom.{region}": "US"}],
                }
            ]
        }
    )
    result = run_export(sim, tmp_path)
    [lead], [contact] = rows(result.paths[0]), rows(result.paths[1])
    assert lead["custom_region"] == "EU" and contact["custom_region"] == "US"


def test_more_custom_fields_than_one_fields_list_may_name_are_all_exported(
    sim: SimServer, tmp_path: Path
) -> None:
    many = [{"id": f"cf_f{i:02d}", "name": f"F {i:02d}"} for i in range(70)]
    leads = [
        {
            "id": f"lead_{n}",
            "date_created": f"2024-01-0{n + 1}T00:00:00+00:00",
            "custom.cf_company": f"c{n}",
            **{f"custom.cf_f{i:02d}": f"v{n}.{i}" for i in range(70)},
        }
        for n in range(3)
    ]
    fields_and_leads(sim, many, leads)
    result = run_export(sim, tmp_path, page_size=2)
    got = rows(result.paths[0])
    assert [r["company_id"] for r in got] == ["c0", "c1", "c2"]
    assert all(r[f"custom_f_{i:02d}"] == f"v{n}.{i}" for n, r in enumerate(got) for i in range(70))
