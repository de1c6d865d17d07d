"""What `validate` says ok to, `run` can do: the custom fields and statuses the mappings name are checked
against Close, a trigger that could never match is refused, and a literal that reads like a path warns."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers_user import DEMO_CONFIG, one_line_error, sample_events

pytestmark = pytest.mark.integration

KEY = {"CLOSE_API_KEY": "cli_test_key_not_real"}


def _config(workdir, name: str, mapping: str) -> Path:
    path = workdir.path / name
    path.write_text(
        "settings:\n  lead_custom_field_id_for_company_id: cf_demo_company_id\n"
        "  contact_custom_field_id_for_user_id: cf_demo_user_id\n"
        "mappings:\n  - name: Identify to Close\n" + mapping
    )
    return path


def _both(workdir, sim, config: Path):
    validate = workdir.run("validate", "--config", config.name, "--close-url", sim.base_url, env=KEY)
    events = sample_events(workdir.path / "events.jsonl", 40)
    run = workdir.run(
        "run", "--config", config.name, "--source", "files", "--input", events.name,
        "--close-url", sim.base_url, "--dead-letter", "dead", "--quiet", env=KEY,
    )
    return validate, run


@pytest.mark.parametrize(
    ("fields", "needles"),
    [
        (
            "      lead_custom_fields: {cf_not_there: $.traits.plan}\n",
            ["mappings[0].fields.lead_custom_fields.cf_not_there", "no lead custom field cf_not_there", "Fix:"],
        ),
        (
            "      lead_custom_fields: {cf_demo_plan: $.traits.plan}\n",
            ["cf_demo_plan is a contact custom field, not a lead one", "move it to contact_custom_fields"],
        ),
        (
            "      lead_status_id: stat_not_there\n",
            ["mappings[0].fields.lead_status_id: no lead status stat_not_there exists", "Fix:"],
        ),
    ],
)
def test_a_mapping_naming_what_close_does_not_have_fails_validate_and_run_alike(workdir, user_sim, fields, needles):
    config = _config(workdir, "close.yaml", "    trigger: 'type = \"identify\"'\n    fields:\n" + fields)
    validate, run = _both(workdir, user_sim, config)
    one_line_error(validate, *needles, status=1)
    one_line_error(run, *needles, status=1)
    assert user_sim.writes() == 0
    assert not (workdir.path / "dead").exists()


@pytest.mark.parametrize(
    ("trigger", "needles"),
    [
        ("type = identify", ["mappings[0].trigger", "the bare word identify after '='", '"identify" in quotes']),
        ("'type = \"identfy\"'", ["mappings[0].trigger", '"identfy" is not an event type', 'did you mean "identify"?']),
    ],
)
def test_a_trigger_that_could_never_match_is_refused(workdir, user_sim, trigger, needles):
    config = _config(workdir, "close.yaml", f"    trigger: {trigger}\n")
    validate, run = _both(workdir, user_sim, config)
    one_line_error(validate, "invalid config close.yaml", *needles, status=1)
    one_line_error(run, "invalid config close.yaml", *needles, status=1)
    assert user_sim.stats()["requests_total"] == 0


def test_a_literal_that_reads_like_a_path_is_warned_about_with_its_path(workdir, user_sim):
    config = _config(
        workdir, "close.yaml", "    trigger: 'type = \"identify\"'\n    fields:\n      contact_email: traits.email\n"
    )
    proc = workdir.run("validate", "--config", config.name, "--close-url", user_sim.base_url, env=KEY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == (
        "warning: mappings[0].fields.contact_email: 'traits.email' is a literal, sent as is with every "
        "request; write $.traits.email to read it from the event"
    )
    assert proc.stdout.startswith("ok: config valid")


def test_the_demo_config_validates_against_a_simulator_seeded_with_its_fields(workdir, user_sim):
    proc = workdir.run("validate", "--config", str(DEMO_CONFIG), "--close-url", user_sim.base_url, env=KEY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("ok: config valid, 1 mapping(s)")
    assert "1 custom field/status id(s) the mappings name" in proc.stdout
