"""`close-sync validate --probe`: each lookup shape the job sends, proven on the org's own records, with
nothing written; `--probe --write` proves the write shapes on one lead it deletes again."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.cli.helpers_user import DEMO_CONFIG, one_line_error

pytestmark = pytest.mark.integration

# The user's environment, plus PYTHONPATH when set: a checkout run this way tests its own code.
KEY = {"CLOSE_API_KEY": "cli_test_key_not_real"} | (
    {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
)
RECORDS = {
    "leads": [
        {
            "name": "Acme",
            "custom.cf_demo_company_id": "co_acme",
            "contacts": [
                {
                    "name": "Ann Lee",
                    "custom.cf_demo_user_id": "u_ann",
                    "emails": [{"email": "Ann.Lee@Acme.COM", "type": "office"}],
                }
            ],
        }
    ]
}


@pytest.fixture(autouse=True, params=["sensitive", "insensitive"])
def term_case(request, user_sim) -> str:  # type: ignore[no-untyped-def]
    """Every probe test with Close's `term` taken as case-sensitive and as case-insensitive, which Close
    does not document: the probe's verdicts must not depend on it."""
    user_sim._admin("PATCH", "config", {"term_case": request.param})
    yield request.param
    user_sim._admin("PATCH", "config", {"term_case": "sensitive"})


def _seeded(sim: Any) -> dict[str, Any]:
    sim._admin("POST", "seed", RECORDS)
    return sim.state()


def _probe(workdir, sim, *extra: str):  # type: ignore[no-untyped-def]
    before = sim.stats()["requests_total"]
    proc = workdir.run(
        "validate", "--config", str(DEMO_CONFIG), "--close-url", sim.base_url, "--probe", *extra, env=KEY
    )
    return proc, sim.stats()["requests_total"] - before


def _calls_reported(stdout: str) -> int:
    summary = [line for line in stdout.splitlines() if line.startswith("probe: ")][-1]
    return int(summary.split("; ")[1].split(" ")[0])


def test_the_probe_passes_every_shape_on_the_orgs_records_and_writes_nothing(workdir, user_sim):
    state = _seeded(user_sim)
    proc, calls = _probe(workdir, user_sim)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for shape in (
        "export page of contacts",
        "export page of leads",
        "contact by user id",
        "contact by email in another case",
        "lead by company id",
    ):
        assert any(line.startswith("pass") and shape in line for line in proc.stdout.splitlines()), proc.stdout
    assert "'ann.lee@acme.com'" in proc.stdout  # the stored capitals were looked up in lower case
    assert "0 failed" in proc.stdout and "nothing written" in proc.stdout
    probe_calls = _calls_reported(proc.stdout)
    before = user_sim.stats()["requests_total"]
    plain = workdir.run("validate", "--config", str(DEMO_CONFIG), "--close-url", user_sim.base_url, env=KEY)
    assert plain.returncode == 0, plain.stderr
    check_calls = user_sim.stats()["requests_total"] - before
    assert calls - check_calls == probe_calls <= 10  # what the simulator served, past validate's checks
    assert user_sim.state() == state
    assert user_sim.writes() == 0


@pytest.mark.parametrize(
    ("shape", "step"),
    [
        ("contact.custom_field:text", "contact by user id"),
        ("contact_email.email:text", "contact by email in another case"),
        ("lead.custom_field:text", "lead by company id"),
        ("lead.date_created:moment_range", None),  # not used by a one-page probe: must not fail it
        ("contact.custom_field:term", None),  # a shape the job no longer sends: must not fail it
    ],
)
def test_a_shape_close_refuses_fails_the_probe_naming_it(workdir, user_sim, shape, step):
    _seeded(user_sim)
    user_sim._admin("PATCH", "config", {"reject_shapes": [shape]})
    try:
        proc, _ = _probe(workdir, user_sim)
    finally:
        user_sim._admin("PATCH", "config", {"reject_shapes": []})
    if step is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return
    assert any(line.startswith("FAIL") and step in line for line in proc.stdout.splitlines()), proc.stdout
    one_line_error(proc, "probe failed", step, status=1)


def test_probe_write_checks_the_write_shapes_and_leaves_nothing_behind(workdir, user_sim):
    state = _seeded(user_sim)
    proc, _ = _probe(workdir, user_sim, "--write")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in (
        "create a lead with a nested contact",
        "read the lead back by id",
        "new contact by user id",
        "new contact by email in another case",
        "new lead by company id",
        "update a field and append an email",
        "delete the lead",
    ):
        assert any(line.startswith("pass") and step in line for line in proc.stdout.splitlines()), proc.stdout
    assert "created one lead and deleted it" in proc.stdout
    assert user_sim.state() == state


def test_write_goes_only_with_probe(workdir, user_sim):
    proc = workdir.run("validate", "--config", str(DEMO_CONFIG), "--close-url", user_sim.base_url, "--write", env=KEY)
    assert proc.returncode == 2 and "--write only goes with --probe" in proc.stderr


def test_probe_write_deletes_its_lead_even_when_a_shape_fails(workdir, user_sim):
    state = _seeded(user_sim)
    user_sim._admin("PATCH", "config", {"reject_shapes": ["lead.custom_field:text"]})
    try:
        proc, _ = _probe(workdir, user_sim, "--write")
    finally:
        user_sim._admin("PATCH", "config", {"reject_shapes": []})
    one_line_error(proc, "probe failed", "lead by company id", "new lead by company id", status=1)
    assert any(line.startswith("pass") and "delete the lead" in line for line in proc.stdout.splitlines())
    assert user_sim.state() == state
