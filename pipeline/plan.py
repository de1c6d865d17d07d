"""The dry-run plan: per request, the branch the engine took and the field-level changes it would make."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from closecrm.engine import DRY_RUN_MARK

WRITE_KINDS = ("lead create", "contact create", "lead update", "contact update")


def read_audit(path: str) -> list[dict[str, Any]]:
    """The audit log's JSON lines (one per request), in a stable order: by person."""
    file = Path(path)
    if not file.exists():
        return []
    records = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(records, key=lambda r: (str(r.get("person")), r.get("event_ids") or []))


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def change_text(change: dict[str, Any]) -> str:
    """`lead create name: 'Acme'` / `contact cont_1 update phones: [...] → [...]`."""
    target = change.get("object", "?")
    if change.get("id"):
        target += f" {change['id']}"
    head = f"{target} {change.get('action', '?')} {change.get('field', '?')}"
    if change.get("action") == "create" or change.get("old") is None:
        return f"{head}: {_short(change.get('new'))}"
    return f"{head}: {_short(change.get('old'), 30)} → {_short(change.get('new'))}"


def planned_writes(records: Iterable[dict[str, Any]]) -> Counter[str]:
    """What a dry run would write, per object kind (``WRITE_KINDS``), from its outcomes or audit records.

    A record the dry run would create has a made-up id (``lead_dry_…``) wherever it shows up; each
    request's updates are one write per record it changes.
    """
    created: dict[str, set[str]] = {"lead": set(), "contact": set()}
    out: Counter[str] = Counter()
    for record in records:
        for kind in created:
            created[kind].update(i for i in record.get(f"{kind}_ids") or [] if DRY_RUN_MARK in str(i))
        changes = record.get("changes") or []
        for kind, _ in {(c.get("object"), c.get("id")) for c in changes if c.get("action") == "update"}:
            out[f"{kind} update"] += 1
    for kind, ids in created.items():
        out[f"{kind} create"] += len(ids)
    return +out


def render_plan(records: list[dict[str, Any]], console: Console | None = None, limit: int = 200) -> None:
    """A table of what a dry run decided; the first `limit` requests, then a count of the rest."""
    console = console or Console()
    table = Table(title="dry run: what close-sync would do (nothing was written)", show_lines=True)
    table.add_column("person")
    table.add_column("events", justify="right")
    table.add_column("outcome")
    table.add_column("branch")
    table.add_column("changes it would make")
    for record in records[:limit]:
        changes = record.get("changes") or []
        table.add_row(
            str(record.get("person", "")),
            str(len(record.get("event_ids") or [])),
            str(record.get("outcome", "")),
            str(record.get("branch") or "-"),
            "\n".join(change_text(c) for c in changes) or "(none)",
        )
    console.print(table)
    if len(records) > limit:
        console.print(f"… and {len(records) - limit} more request(s); see --audit-log for all of them.")
    kinds: dict[str, int] = {}
    for record in records:
        kind = str(record.get("outcome", "")).split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    summary = ", ".join(f"{n} would be {k}" for k, n in sorted(kinds.items())) or "no requests"
    console.print(f"dry run: {len(records)} request(s): {summary}; nothing was written to Close.")
    planned = planned_writes(records)
    writes = ", ".join(f"{planned[k]} {k}(s)" for k in WRITE_KINDS if planned[k]) or "none"
    console.print(f"dry run: writes it would make: {writes}.")
