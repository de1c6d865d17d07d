"""The dry-run plan: per request, the branch the engine took and the field-level changes it would make."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console

from closecrm.engine import DRY_RUN_MARK

WRITE_KINDS = ("lead create", "contact create", "lead update", "contact update", "lead merge", "contact delete")


def read_audit(path: str) -> list[dict[str, Any]]:
    """The audit log's request lines (one per request), in a stable order: by person. Lines of writes
    about to be sent (``intent``) are left out, and so is a line a failed append left torn."""
    file = Path(path)
    if not file.exists():
        return []
    records = []
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(record, dict) and "intent" not in record:
            records.append(record)
    return sorted(records, key=lambda r: (str(r.get("person")), r.get("event_ids") or []))


# Free text longer than this is cut; ids, emails and phones never are (no email exceeds 254 characters),
# so the plan can be searched and copied from at any terminal width.
TEXT_LIMIT = 300
LIST_LIMIT = 10


def _text(value: Any) -> str:
    if isinstance(value, str):
        if len(value) > TEXT_LIMIT and " " in value:
            return value[:TEXT_LIMIT] + f"… ({len(value):,} characters)"
        return value
    if isinstance(value, list | tuple):
        shown = [json.dumps(item, default=str, ensure_ascii=False) for item in value[:LIST_LIMIT]]
        more = [f"… {len(value) - LIST_LIMIT} more"] if len(value) > LIST_LIMIT else []
        return "[" + ", ".join(shown + more) + "]"
    return json.dumps(value, default=str, ensure_ascii=False)


def change_text(change: dict[str, Any]) -> str:
    """`lead create name: Acme` / `contact cont_1 update phones: [...] → [...]`, every id and email whole."""
    target = change.get("object", "?")
    if change.get("id"):
        target += f" {change['id']}"
    if change.get("action") == "merge":  # an alias: this lead goes into another
        return f"{target} merge into {change.get('into', '?')}"
    if change.get("action") == "delete":  # an alias: this contact's lists went to another first
        return f"{target} delete (merged into {change.get('merged_into', '?')}): {_text(change.get('old'))}"
    action = change.get("action", "?")
    if change.get("nested"):  # sent inside another request's POST /lead/ (closecrm/engine/rules/nest.py)
        action = f"{action} (nested)"
    head = f"{target} {action} {change.get('field', '?')}"
    if change.get("action") == "create" or change.get("old") is None:
        return f"{head}: {_text(change.get('new'))}"
    return f"{head}: {_text(change.get('old'))} → {_text(change.get('new'))}"


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
        for c in changes:
            if c.get("action") in ("merge", "delete"):
                out[f"{c.get('object')} {c.get('action')}"] += 1
    for kind, ids in created.items():
        out[f"{kind} create"] += len(ids)
    return +out


def render_plan(records: list[dict[str, Any]], console: Console | None = None, limit: int = 200) -> None:
    """What a dry run decided, the first `limit` requests, then a count of the rest.

    One line per request and an indented line per change, not a table: a table's columns cut or
    fold ids and emails at 80 columns, while a line that is too long only wraps, whole, in the terminal.
    """
    console = console or Console()

    def say(text: str = "", **style: Any) -> None:
        console.print(text, soft_wrap=True, markup=False, highlight=False, **style)

    say("dry run: what close-sync would do (nothing was written)", style="bold")
    for record in records[:limit]:
        events = len(record.get("event_ids") or [])
        say(
            f"{record.get('person', '')} · {events} event(s) · {record.get('outcome', '')} · "
            f"branch {record.get('branch') or '-'}"
        )
        for change in record.get("changes") or []:
            say("    " + change_text(change))
    if len(records) > limit:
        say(f"… and {len(records) - limit} more request(s); --audit-log FILE keeps every one of them.")
    kinds: dict[str, int] = {}
    for record in records:
        kind = str(record.get("outcome", "")).split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    summary = ", ".join(f"{n} would be {k}" for k, n in sorted(kinds.items())) or "no requests"
    say(f"dry run: {len(records)} request(s): {summary}; nothing was written to Close.")
    planned = planned_writes(records)
    writes = ", ".join(f"{planned[k]} {k}(s)" for k in WRITE_KINDS if planned[k]) or "none"
    say(f"dry run: writes it would make: {writes}.")
