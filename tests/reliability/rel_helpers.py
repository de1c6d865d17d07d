"""Shared helpers for the reliability suite: workloads, a job run that returns its counters, projections."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from closecrm.wiring import KeySource
from closesim import SimServer
from pipeline import summary
from pipeline.config import JobConfig
from pipeline.runjob import RunRequest, launch
from pipeline.sources import SourceOptions
from tests.pipeline.helpers import read_lines, sim_config
from transforms import metrics as m

AT = datetime(2026, 11, 1, tzinfo=UTC)


def identify(user: int, company: int, n: int, **traits: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"User {user}",
        "email": f"user{user}@c{company}.example.com",
        "company": {"id": f"comp_{company}", "name": f"Company {company}"},
    }
    body.update(traits)
    return {
        "type": "identify",
        "messageId": f"m_{user}_{n}",
        "userId": f"u_{user}",
        "timestamp": (AT + timedelta(seconds=60 * n + user)).isoformat(),
        "traits": body,
    }


def w1_events(users: int = 40, companies: int = 8, per_user: int = 10) -> list[dict[str, Any]]:
    """Chatty identify: mostly identical repeats; some change a scalar, some add a phone or an email."""
    out = []
    for n in range(per_user):
        for u in range(users):
            traits: dict[str, Any] = {}
            if u % 5 == 0 and n >= per_user // 2:
                traits["title"] = "CTO"  # a changed scalar
            if u % 4 == 1 and n >= 3:
                traits["phone"] = f"+1 415 555 {1000 + u:04d}"  # a phone added later
            if u % 10 == 3 and n == per_user - 1:
                traits["name"] = f"User {u} Renamed"
            out.append(identify(u, u % companies, n, **traits))
    return out


def w2_events(users: int = 100, companies: int = 20, first_user: int = 1000) -> list[dict[str, Any]]:
    """First sync: distinct new users, one identify each."""
    return [identify(first_user + u, 100 + u % companies, 0) for u in range(users)]


def projection(sim: SimServer, cf: dict[str, str]) -> dict[str, Any]:
    """Canonical state: leads by company id (name); contacts by user id (company, emails, phones, name, title)."""
    leads = {lead["id"]: lead for lead in sim.leads()}
    by_company = {lead.get(f"custom.{cf['company']}"): lead.get("name") for lead in leads.values()}
    contacts = {}
    for c in sim.contacts():
        contacts[c.get(f"custom.{cf['user']}")] = {
            "company": leads[c["lead_id"]].get(f"custom.{cf['company']}")
            if c.get("lead_id") in leads
            else None,
            "name": c.get("name"),
            "title": c.get("title"),
            "emails": sorted(e["email"].lower() for e in c.get("emails") or []),
            "phones": sorted(p["phone"] for p in c.get("phones") or []),
        }
    return {"leads": by_company, "contacts": contacts}


def duplicates(sim: SimServer, cf: dict[str, str]) -> dict[str, list[str]]:
    companies = [lead.get(f"custom.{cf['company']}") for lead in sim.leads()]
    users = [c.get(f"custom.{cf['user']}") for c in sim.contacts()]
    return {
        "leads": sorted({x for x in companies if companies.count(x) > 1}),
        "contacts": sorted({x for x in users if users.count(x) > 1}),
    }


def fresh(
    sim: SimServer, workdir: Path, extra: dict[str, Any] | None = None
) -> tuple[JobConfig, dict[str, str]]:
    """Reset the simulator's data and write a config for it under workdir."""
    sim.reset()
    workdir.mkdir(parents=True, exist_ok=True)
    return sim_config(sim, workdir, extra)


def run_job(
    sim: SimServer,
    config: JobConfig,
    source: SourceOptions,
    workdir: Path,
    monkeypatch: Any,
    key: str | None = None,
) -> dict[str, int]:
    """Runs the job to its end on the DirectRunner (audit log and dead letters on); returns its counters."""
    monkeypatch.setenv("CLOSE_API_KEY", key or sim.api_key)
    request = RunRequest(
        source=source,
        close_url=sim.base_url,
        key_source=KeySource(),
        dead_letter_dir=str(workdir / "dead"),
        audit_log=str(workdir / "audit.jsonl"),
        progress=False,
    )
    result = launch(config, request)
    result.wait_until_finish()
    return summary.collect(result)


def applied_ids(workdir: Path) -> list[str]:
    """Event ids of the audit lines whose request Close accepted (failed ones are dead letters)."""
    lines = read_lines(workdir / "audit.jsonl")
    return [
        e
        for line in lines
        if "intent" not in line and not str(line.get("outcome")).startswith("failed")
        for e in line["event_ids"]
    ]


def dead_letters(workdir: Path) -> list[dict[str, Any]]:
    dead = workdir / "dead"
    if not dead.exists():
        return []
    return [
        json.loads(line)
        for f in sorted(dead.rglob("*.jsonl"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]


def counters_line(values: dict[str, int]) -> str:
    keys = [
        m.EVENTS_READ,
        m.EVENTS_APPLIED,
        m.EVENTS_SKIPPED,
        m.EVENTS_DUPLICATE,
        m.EVENTS_DEAD_LETTERED,
        m.API_RETRIES,
    ]
    return ", ".join(f"{k}={values.get(k, 0)}" for k in keys)
