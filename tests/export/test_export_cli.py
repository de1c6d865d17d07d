"""`close-sync export` through click: Avro read back with fastavro, the key's sources, the summary line."""

import fastavro
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.export.conftest import assert_rows_match, expected_contact, expected_lead

pytestmark = pytest.mark.integration


def read_avro(path):
    with path.open("rb") as fh:
        return list(fastavro.reader(fh))


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "close.yaml"
    path.write_text(
        "settings:\n  lead_custom_field_id_for_company_id: cf_company\n  contact_custom_field_id_for_user_id: cf_user\n"
    )
    return path


def test_avro_export_through_the_cli_matches_field_by_field(org_sim, tmp_path, config_file, monkeypatch):
    monkeypatch.setenv("CLOSE_API_KEY", org_sim.api_key)
    leads, contacts = org_sim.leads(), org_sim.contacts()
    out = tmp_path / "out"
    args = ["export", "--out", str(out), "--format", "avro", "--config", str(config_file)]
    result = CliRunner().invoke(main, [*args, "--close-url", org_sim.base_url])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["contacts.avro", "leads.avro"]
    assert_rows_match(read_avro(out / "leads.avro"), [expected_lead(x) for x in leads])
    assert_rows_match(read_avro(out / "contacts.avro"), [expected_contact(c) for c in contacts])
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"exported {len(leads)} leads + {len(contacts)} contacts = ")
    assert "API calls" in line and "rows/s" in line


def test_api_key_file_and_an_empty_incremental_window(org_sim, tmp_path, monkeypatch):
    monkeypatch.delenv("CLOSE_API_KEY", raising=False)
    key_file = tmp_path / "key"
    key_file.write_text(org_sim.api_key + "\n")
    out = tmp_path / "out"
    args = ["export", "--out", str(out), "--updated-since", "2100-01-01", "--api-key-file", str(key_file)]
    result = CliRunner().invoke(main, [*args, "--close-url", org_sim.base_url])
    assert result.exit_code == 0, result.output
    assert "exported 0 leads + 0 contacts" in result.output
    leads = pq.read_table(out / "leads.parquet")
    assert (
        leads.num_rows == 0
        and "custom_company_id" in leads.schema.names
        and "company_id" in leads.schema.names
    )
    assert pq.read_table(out / "contacts.parquet").num_rows == 0


def test_no_key_is_a_one_line_error_without_writing(org_sim, tmp_path, monkeypatch):
    monkeypatch.delenv("CLOSE_API_KEY", raising=False)
    result = CliRunner().invoke(
        main, ["export", "--out", str(tmp_path / "out"), "--close-url", org_sim.base_url]
    )
    assert result.exit_code != 0
    assert "CLOSE_API_KEY" in result.output
    assert not (tmp_path / "out").exists()


def test_wrong_key_and_bad_timestamp_are_explained(org_sim, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOSE_API_KEY", "not-the-key")
    out = str(tmp_path / "out")
    result = CliRunner().invoke(main, ["export", "--out", out, "--close-url", org_sim.base_url])
    assert result.exit_code != 0 and "401" in result.output
    result = CliRunner().invoke(main, ["export", "--out", out, "--updated-since", "last tuesday"])
    assert result.exit_code != 0 and "ISO-8601" in result.output


def test_a_company_id_field_the_organisation_lacks_is_refused(org_sim, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOSE_API_KEY", org_sim.api_key)
    config = tmp_path / "c.yaml"
    config.write_text("settings:\n  lead_custom_field_id_for_company_id: cf_missing\n")
    args = [
        "export",
        "--out",
        str(tmp_path / "out"),
        "--config",
        str(config),
        "--close-url",
        org_sim.base_url,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "cf_missing" in result.output
