"""UpsertEngine: "Create or Update Contact and Lead" on Close's public API, one request or a batch at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from closecrm import diff
from closecrm.cache import IdCache, RecordCache
from closecrm.client import AmbiguousWriteError, CloseAPIError, CloseClient
from closecrm.lookup import Search, View, age, company_key, email_lookup_key, user_key
from closecrm.model import Outcome, Settings, UpsertRequest

log = logging.getLogger(__name__)

Record = dict[str, Any]
MAX_CONTACTS_PER_REQUEST = 10  # SPEC §3: act on at most 10 matched contacts, oldest first
MAX_CREATE_ATTEMPTS = 3
DRY_RUN_PREFIX = "dryrun_"


class SettingsError(Exception):
    """The destination settings do not work against this Close organisation; the message says how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class _Redo(Exception):
    """An ambiguous create turned out to have happened: decide again with what is now known."""


@dataclass
class _Op:
    """What one request did so far: calls, writes, reasons it was held back, field changes."""

    req: UpsertRequest
    dry_run: bool
    calls: int = 0
    created: bool = False
    updated: bool = False
    branch: str | None = None
    blocked: list[str] = field(default_factory=list)
    changes: list[Record] = field(default_factory=list)
    lead_ids: list[str] = field(default_factory=list)
    contact_ids: list[str] = field(default_factory=list)

    def touch(self, lead_id: str | None = None, contact_id: str | None = None) -> None:
        if lead_id and lead_id not in self.lead_ids:
            self.lead_ids.append(lead_id)
        if contact_id and contact_id not in self.contact_ids:
            self.contact_ids.append(contact_id)

    def block(self, reason: str) -> None:
        if reason not in self.blocked:
            self.blocked.append(reason)

    def outcome(self, shared_calls: int = 0) -> Outcome:
        if self.created:
            kind, reason = "created", None
        elif self.updated:
            kind, reason = "updated", None
        elif self.blocked:
            kind, reason = "skipped", self.blocked[0]
        else:
            kind, reason = "unchanged", None
        return Outcome(
            kind=kind,  # type: ignore[arg-type]
            reason=reason,
            branch=self.branch,
            lead_ids=tuple(self.lead_ids),
            contact_ids=tuple(self.contact_ids),
            calls=self.calls + shared_calls,
            changes=tuple(self.changes),
        )

    def failed(self, exc: CloseAPIError, shared_calls: int = 0) -> Outcome:
        if isinstance(exc, AmbiguousWriteError):
            reason = "ambiguous_write"
        elif exc.status is None:
            reason = "no_response"
        else:
            reason = f"http_{exc.status}"
        return Outcome(
            kind="failed",
            reason=reason,
            branch=self.branch,
            lead_ids=tuple(self.lead_ids),
            contact_ids=tuple(self.contact_ids),
            http_status=exc.status,
            error_body=exc.body,
            calls=self.calls + shared_calls,
            changes=tuple(self.changes),
        )


class UpsertEngine:
    """Applies UpsertRequests to Close following SPEC §3.

    ``upsert_one`` is the reference path (its own searches); ``upsert_batch`` resolves a whole
    batch with a few searches, then applies requests that may touch the same lead one after the
    other (input order) and independent ones concurrently, up to ``max_concurrency`` at a time.
    ``settle_seconds`` is how long search may lag behind a write: after an ambiguous create the
    engine keeps looking for the record that long before it creates it again.
    """

    def __init__(
        self,
        client: CloseClient,
        settings: Settings,
        *,
        max_concurrency: int = 8,
        id_cache_size: int = 100_000,
        settle_seconds: float = 3.0,
    ) -> None:
        self.client = client
        self.settings = settings
        self.max_concurrency = max(1, max_concurrency)
        self.settle_seconds = settle_seconds
        self.ids = IdCache(id_cache_size)
        self.records = RecordCache(max(1_000, id_cache_size // 5))
        self._search = Search(client, settings)
        self._company_cf = (
            diff.cf_key(settings.lead_custom_field_id_for_company_id)
            if settings.lead_custom_field_id_for_company_id
            else ""
        )
        self._dry_ids = count(1)
        self._custom_fields: dict[str, set[str]] = {"lead": set(), "contact": set()}
        self._custom_fields_read_at = 0.0

    # ------------------------------------------------------------ settings

    async def validate_settings(self) -> None:
        """Fail fast, naming the setting and the fix (SPEC §2)."""
        try:
            await self.client.get("me/")
        except CloseAPIError as exc:
            if exc.status in (401, 403):
                raise SettingsError(
                    [
                        f"API key: Close rejected it (HTTP {exc.status}). Fix: set CLOSE_API_KEY (or api_key_file) "
                        "to a valid key from Close > Settings > Developer > API Keys."
                    ]
                ) from None
            raise SettingsError(
                [f"API key: could not check it, GET /me/ failed ({exc.status}): {exc.body!r}"]
            ) from None
        problems: list[str] = []
        wanted = (
            (
                "lead_custom_field_id_for_company_id",
                self.settings.lead_custom_field_id_for_company_id,
                "lead",
            ),
            (
                "contact_custom_field_id_for_user_id",
                self.settings.contact_custom_field_id_for_user_id,
                "contact",
            ),
        )
        fields_by_type: dict[str, dict[str, Record]] = {}
        for object_type in ("lead", "contact"):
            listing = await self.client.get(f"custom_field/{object_type}/")
            fields_by_type[object_type] = {f["id"]: f for f in listing.get("data") or []}
            self._custom_fields[object_type] = set(fields_by_type[object_type])
        self._custom_fields_read_at = time.monotonic()
        for setting, cf_id, object_type in wanted:
            if not cf_id:
                continue
            cf_id = cf_id.removeprefix("custom.")
            other = "contact" if object_type == "lead" else "lead"
            found = fields_by_type[object_type].get(cf_id)
            if found is None and cf_id in fields_by_type[other]:
                problems.append(
                    f"{setting}: {cf_id} is a {other} custom field, but it must be a {object_type} custom field. "
                    f"Fix: create a text {object_type} custom field and put its id (cf_…) here."
                )
            elif found is None:
                problems.append(
                    f"{setting}: no {object_type} custom field {cf_id} exists in this organisation. "
                    f"Fix: copy the id (cf_…) of a text {object_type} custom field from Close, or leave it empty."
                )
            elif found.get("type") != "text":
                problems.append(
                    f"{setting}: {cf_id} ({found.get('name')!r}) is of type {found.get('type')!r}, not 'text'. "
                    f"Fix: use a text {object_type} custom field."
                )
        status_id = self.settings.default_lead_status_id
        if status_id:
            statuses = await self.client.get("status/lead/")
            if status_id not in {s.get("id") for s in statuses.get("data") or []}:
                problems.append(
                    f"default_lead_status_id: no lead status {status_id} exists. "
                    "Fix: use an id from GET /status/lead/ (stat_…), or leave it empty."
                )
        if problems:
            raise SettingsError(problems)

    # ------------------------------------------------------------- entries

    async def upsert_one(self, req: UpsertRequest, *, dry_run: bool = False) -> Outcome:
        """The reference path: this request's own searches, then SPEC §3 steps 0–5."""
        return (await self._run([req], dry_run=dry_run))[0]

    async def upsert_batch(self, reqs: Sequence[UpsertRequest], *, dry_run: bool = False) -> list[Outcome]:
        """Same end state as ``upsert_one`` on each request in order, with far fewer calls."""
        return await self._run(list(reqs), dry_run=dry_run)

    async def _run(self, reqs: list[UpsertRequest], *, dry_run: bool) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(reqs)
        active = []
        for i, req in enumerate(reqs):
            if not self._identity_keys(req):
                outcomes[i] = Outcome(kind="skipped", reason="no_identity", branch="identity")
            else:
                active.append(i)
        if not active:
            return [o for o in outcomes if o is not None]
        view = View(self.settings)
        try:
            lookup_calls = await self._load(view, [reqs[i] for i in active])
        except CloseAPIError as exc:
            # Nothing can be decided without the lookup (Close unavailable): every request fails with the reason.
            for i in active:
                outcomes[i] = _Op(reqs[i], dry_run).failed(exc)
            return [o for o in outcomes if o is not None]
        groups = self._groups(view, [(i, reqs[i]) for i in active])
        shares = {i: _share(lookup_calls, len(active), n) for n, i in enumerate(active)}
        gate = asyncio.Semaphore(self.max_concurrency)

        async def run_group(members: list[int]) -> None:
            async with gate:
                for i in members:
                    outcomes[i] = await self._apply(reqs[i], view, dry_run, shares[i])

        # Longest chains first, so a batch does not end waiting on one long group.
        groups.sort(key=len, reverse=True)
        await asyncio.gather(*(run_group(g) for g in groups))
        return [o for o in outcomes if o is not None]

    # -------------------------------------------------------------- lookup

    def _identity_keys(self, req: UpsertRequest) -> list[str]:
        keys = []
        company_id = diff.company_id_of(req, self.settings)
        user_id = diff.user_id_of(req, self.settings)
        if company_id:
            keys.append(company_key(company_id))
        if user_id:
            keys.append(user_key(user_id))
        if req.contact_email:
            keys.append(email_lookup_key(req.contact_email))
        return keys

    def _lookup_keys(self, req: UpsertRequest) -> list[str]:
        """Every key whose records this request may read or change (all its emails, not just the first)."""
        keys = self._identity_keys(req)
        keys.extend(email_lookup_key(e) for e in req.contact_emails[1:] if e)
        return list(dict.fromkeys(keys))

    async def _load(self, view: View, reqs: Sequence[UpsertRequest]) -> int:
        """Fill the view for these requests: batched searches, then confirm cached ids the search missed."""
        before = self._search.calls
        company_ids = {c for r in reqs if (c := diff.company_id_of(r, self.settings))}
        user_ids = {u for r in reqs if (u := diff.user_id_of(r, self.settings))}
        emails = {e for r in reqs for e in r.contact_emails if e}
        lead_cfs = {cf for r in reqs for cf in r.lead_custom_fields}
        contact_cfs = {cf for r in reqs for cf in r.contact_custom_fields}
        known_before = await self._known_custom_fields(lead_cfs | contact_cfs)
        # Ask search only for custom fields that exist: one bad id in one request must not fail the batch.
        lead_cfs = {cf for cf in lead_cfs if cf.removeprefix("custom.") in self._custom_fields["lead"]}
        contact_cfs = {
            cf for cf in contact_cfs if cf.removeprefix("custom.") in self._custom_fields["contact"]
        }
        leads, contacts = await asyncio.gather(
            self._search.leads_by_company_ids(company_ids, lead_cfs),
            self._search.contacts_by_keys(user_ids, emails, contact_cfs),
        )
        self._take_hits(view, leads, contacts)
        calls = self._search.calls - before + known_before
        keys = {k for r in reqs for k in self._lookup_keys(r)}
        calls += await self._confirm_cached(view, keys)
        return calls

    async def _known_custom_fields(self, mentioned: set[str]) -> int:
        """Custom field ids per object type, read once (and again, at most once a minute, for unknown ids)."""
        unknown = (
            {cf.removeprefix("custom.") for cf in mentioned}
            - self._custom_fields["lead"]
            - self._custom_fields["contact"]
        )
        stale = time.monotonic() - self._custom_fields_read_at > 60.0
        if not unknown or (self._custom_fields_read_at and not stale):
            return 0
        self._custom_fields_read_at = time.monotonic()
        for object_type in ("lead", "contact"):
            listing = await self.client.get(f"custom_field/{object_type}/")
            self._custom_fields[object_type] = {f["id"] for f in listing.get("data") or []}
        return 2

    def _take_hits(self, view: View, leads: list[Record], contacts: list[Record]) -> None:
        for hit in leads:
            cached = self.records.get(hit["id"])
            if cached is not None:
                view.put_lead(cached, fresh=False)
            view.put_lead(hit, fresh=False)
            self.ids.add_all(view.lead_keys(view.leads[hit["id"]]), hit["id"])
        for hit in contacts:
            cached = self.records.get(hit["id"])
            if cached is not None:
                view.put_contact(cached, fresh=False)
            view.put_contact(hit, fresh=False)
            self.ids.add_all(view.contact_keys(view.contacts[hit["id"]]), hit["id"])

    async def _confirm_cached(self, view: View, keys: set[str]) -> int:
        """GET by id every cached record of these keys that the view lacks or shows without the key.

        Those are the records search has not caught up with (HARD-PARTS 3); a GET does not lag.
        """
        wanted: dict[str, set[str]] = {}
        for key in keys:
            for record_id in self.ids.ids(key):
                if not view.matches(record_id, key) and record_id not in view.fresh:
                    wanted.setdefault(record_id, set()).add(key)
        if not wanted:
            return 0
        tmp = _Op(UpsertRequest(), dry_run=False)
        results = await asyncio.gather(
            *(self._read(tmp, view, rid) for rid in wanted), return_exceptions=True
        )
        for record_id, result in zip(wanted, results, strict=True):
            if isinstance(result, CloseAPIError) and result.status == 404:
                self.ids.forget(record_id, wanted[record_id])
                self.records.forget(record_id)
            elif isinstance(result, BaseException):
                raise result
            elif not any(view.matches(record_id, k) for k in wanted[record_id]):
                self.ids.forget(record_id, wanted[record_id])  # it no longer carries that key
        return tmp.calls

    async def _read(self, op: _Op, view: View, record_id: str) -> Record:
        """GET a lead (with its contacts) or a contact by id into the view."""
        if record_id.startswith("lead_"):
            lead = await self._call(op, "GET", f"lead/{record_id}/")
            self._put_lead(view, lead)
            return lead
        contact = await self._call(op, "GET", f"contact/{record_id}/")
        self._put_contact(view, contact)
        return contact

    # ------------------------------------------------------------ grouping

    def _groups(self, view: View, indexed: list[tuple[int, UpsertRequest]]) -> list[list[int]]:
        """Union-find over everything two requests could both touch; each group keeps input order."""
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def union(a: str, b: str) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[rb] = ra

        for i, req in indexed:
            me = f"req:{i}"
            find(me)
            for key in self._lookup_keys(req):
                union(me, key)
                for record_id in view.ids_for(key):
                    union(me, record_id)
                    contact = view.contacts.get(record_id)
                    if contact is not None and contact.get("lead_id"):
                        union(me, contact["lead_id"])
        groups: dict[str, list[int]] = {}
        for i, _ in indexed:
            groups.setdefault(find(f"req:{i}"), []).append(i)
        return list(groups.values())

    # ---------------------------------------------------------------- apply

    async def _apply(self, req: UpsertRequest, view: View, dry_run: bool, shared_calls: int) -> Outcome:
        op = _Op(req, dry_run)
        try:
            for _ in range(MAX_CREATE_ATTEMPTS + 1):
                try:
                    await self._decide(op, view)
                    break
                except _Redo:
                    continue
            return op.outcome(shared_calls)
        except CloseAPIError as exc:
            log.info("upsert failed: %s", exc)
            return op.failed(exc, shared_calls)

    async def _decide(self, op: _Op, view: View) -> None:
        req, settings, flags = op.req, self.settings, op.req.flags
        company_id = diff.company_id_of(req, settings)
        user_id = diff.user_id_of(req, settings)
        email = req.contact_email
        with_contact = diff.has_contact_fields(req, settings)

        # Step 1: the lead by company id (the oldest when there are several).
        if company_id:
            leads = view.leads_with_company(company_id)
            if leads:
                op.branch = "lead_by_company_id"
                lead = leads[0]
                await self._update_lead(op, view, lead, with_company_id=False)
                if not with_contact:
                    return
                inside = view.match_contacts(user_id, email, lead_id=lead["id"])
                if inside:
                    for contact in inside[:MAX_CONTACTS_PER_REQUEST]:
                        await self._update_contact(op, view, contact)
                    return
                if not flags.allow_creating_new_contacts:
                    op.block("creating_new_contacts_not_allowed")
                elif view.match_contacts(user_id, email) and not flags.allow_creating_duplicate_contacts:
                    op.block("creating_duplicate_contacts_not_allowed")
                else:
                    await self._create_contact(op, view, lead["id"])
                return

        # Step 2: contacts by user id, then email, across the organisation.
        matched = view.match_contacts(user_id, email)[:MAX_CONTACTS_PER_REQUEST] if with_contact else []
        if matched and not company_id:
            op.branch = "contacts_without_company_id"
            for contact in matched:
                await self._update_contact(op, view, contact)
            if diff.lead_scalars(req, settings, with_company_id=False):
                for lead_id in dict.fromkeys(c["lead_id"] for c in matched):
                    lead = await self._lead(op, view, lead_id)
                    if lead is not None:
                        await self._update_lead(op, view, lead, with_company_id=False)
            return
        if matched:
            oldest_lead = await self._lead(op, view, matched[0]["lead_id"])
            if oldest_lead is not None and oldest_lead.get(self._company_cf) in (None, ""):
                op.branch = "adopt_lead"
                await self._update_lead(op, view, oldest_lead, with_company_id=True)
                for contact in matched:
                    if contact["lead_id"] == oldest_lead["id"]:
                        await self._update_contact(op, view, contact)
                return
            op.branch = "duplicate_under_new_lead"
            for allowed, reason in (
                (flags.allow_creating_duplicate_contacts, "creating_duplicate_contacts_not_allowed"),
                (flags.allow_creating_new_leads, "creating_new_leads_not_allowed"),
                (flags.allow_creating_new_contacts, "creating_new_contacts_not_allowed"),
            ):
                if not allowed:
                    op.block(reason)
                    return
            await self._create_lead(op, view, with_contact=True)
            return

        # Step 3: nothing found.
        op.branch = "nothing_found"
        if not flags.allow_creating_new_leads:
            op.block("creating_new_leads_not_allowed")
        elif with_contact and not flags.allow_creating_new_contacts:
            op.block("creating_new_contacts_not_allowed")
        else:
            await self._create_lead(op, view, with_contact=with_contact)

    # ----------------------------------------------------------- the writes

    async def _update_lead(self, op: _Op, view: View, lead: Record, *, with_company_id: bool) -> None:
        op.touch(lead_id=lead["id"])
        body = diff.lead_update(lead, op.req, self.settings, with_company_id=with_company_id)
        if not body:
            return
        if not op.req.flags.allow_updating_existing_leads:
            op.block("updating_existing_leads_not_allowed")
            return
        op.changes.extend(diff.field_changes("lead", lead["id"], "update", lead, body))
        if op.dry_run:
            self._put_lead(view, {**lead, **body, "date_updated": _dry_now()}, remember=False)
        else:
            self._put_lead(view, await self._call(op, "PUT", f"lead/{lead['id']}/", body))
        op.updated = True

    async def _update_contact(self, op: _Op, view: View, contact: Record) -> None:
        op.touch(lead_id=contact.get("lead_id"), contact_id=contact["id"])
        body = {
            **diff.contact_scalar_update(contact, op.req, self.settings),
            **diff.contact_list_update(contact, op.req),
        }
        if not body:
            return
        if not op.req.flags.allow_updating_existing_contacts:
            op.block("updating_existing_contacts_not_allowed")
            return
        if any(k in body for k in ("emails", "phones", "urls")) and contact["id"] not in view.fresh:
            # PUT replaces whole lists: merge onto what a GET says, never onto a search hit (HARD-PARTS 5).
            if not contact["id"].startswith(DRY_RUN_PREFIX):
                contact = await self._read(op, view, contact["id"])
                contact = view.contacts.get(contact["id"], contact)
            body = {
                **diff.contact_scalar_update(contact, op.req, self.settings),
                **diff.contact_list_update(contact, op.req),
            }
            if not body:
                return
        op.changes.extend(diff.field_changes("contact", contact["id"], "update", contact, body))
        if op.dry_run:
            self._put_contact(view, {**contact, **body, "date_updated": _dry_now()}, remember=False)
        else:
            self._put_contact(view, await self._call(op, "PUT", f"contact/{contact['id']}/", body))
        op.updated = True

    async def _create_contact(self, op: _Op, view: View, lead_id: str) -> None:
        body = {**diff.new_contact(op.req, self.settings), "lead_id": lead_id}
        op.changes.extend(diff.field_changes("contact", None, "create", {}, body))
        if op.dry_run:
            contact = {
                **body,
                "id": f"{DRY_RUN_PREFIX}cont_{next(self._dry_ids)}",
                "date_created": _dry_now(),
            }
            self._put_contact(view, {**contact, "date_updated": contact["date_created"]}, remember=False)
            op.touch(lead_id=lead_id, contact_id=contact["id"])
            op.created = True
            return
        for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
            known = {cid for cid, c in view.contacts.items() if c.get("lead_id") == lead_id}
            try:
                contact = await self._call(op, "POST", "contact/", body)
            except AmbiguousWriteError:
                if attempt == MAX_CREATE_ATTEMPTS:
                    raise
                # The lead's own GET lists its contacts without lag: did the POST happen?
                lead = await self._read(op, view, lead_id)
                new = [c for c in lead.get("contacts") or [] if c["id"] not in known and self._is_ours(op, c)]
                if new:
                    op.created = True
                    raise _Redo() from None
                continue
            self._put_contact(view, contact)
            op.touch(lead_id=lead_id, contact_id=contact["id"])
            op.created = True
            return

    async def _create_lead(self, op: _Op, view: View, *, with_contact: bool) -> None:
        body = diff.new_lead(op.req, self.settings, with_contact=with_contact)
        op.changes.extend(diff.field_changes("lead", None, "create", {}, body))
        if with_contact:
            op.changes.extend(diff.field_changes("contact", None, "create", {}, body["contacts"][0]))
        if op.dry_run:
            now = _dry_now()
            lead_id = f"{DRY_RUN_PREFIX}lead_{next(self._dry_ids)}"
            contacts = [
                {
                    **c,
                    "id": f"{DRY_RUN_PREFIX}cont_{next(self._dry_ids)}",
                    "lead_id": lead_id,
                    "date_created": now,
                    "date_updated": now,
                }
                for c in body.get("contacts") or []
            ]
            self._put_lead(
                view,
                {**body, "id": lead_id, "contacts": contacts, "date_created": now, "date_updated": now},
                remember=False,
            )
            op.touch(lead_id=lead_id)
            for c in contacts:
                op.touch(contact_id=c["id"])
            op.created = True
            return
        for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
            try:
                lead = await self._call(op, "POST", "lead/", body)
            except AmbiguousWriteError:
                if attempt == MAX_CREATE_ATTEMPTS:
                    raise
                if await self._appeared(op, view):
                    op.created = True
                    raise _Redo() from None
                continue
            self._put_lead(view, lead)
            op.touch(lead_id=lead["id"])
            for c in lead.get("contacts") or []:
                op.touch(contact_id=c["id"])
            op.created = True
            return

    async def _appeared(self, op: _Op, view: View) -> bool:
        """After an ambiguous POST /lead/: search (which lags) until the record shows up or settle time passes."""
        req = op.req
        company_id = diff.company_id_of(req, self.settings)
        user_id = diff.user_id_of(req, self.settings)
        deadline = time.monotonic() + self.settle_seconds
        pause = max(0.05, self.settle_seconds / 6)
        while True:
            before = self._search.calls
            leads, contacts = await asyncio.gather(
                self._search.leads_by_company_ids([company_id] if company_id else [], req.lead_custom_fields),
                self._search.contacts_by_keys(
                    [user_id] if user_id else [], req.contact_emails[:1], req.contact_custom_fields
                ),
            )
            op.calls += self._search.calls - before
            self._take_hits(view, leads, contacts)
            if company_id and (found := view.leads_with_company(company_id)):
                await self._read(op, view, found[0]["id"])  # its contacts, without search lag
                return True
            if not company_id and view.match_contacts(user_id, req.contact_email):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause)

    def _is_ours(self, op: _Op, contact: Record) -> bool:
        """Does a contact that appeared after an ambiguous POST look like the one this request sent?"""
        user_id = diff.user_id_of(op.req, self.settings)
        if user_id:
            return contact.get(diff.cf_key(self.settings.contact_custom_field_id_for_user_id)) == user_id
        wanted = diff.new_contact(op.req, self.settings)
        return all(
            diff.same_value(contact.get(k), v)
            for k, v in wanted.items()
            if k not in ("emails", "phones", "urls")
        ) and (
            not op.req.contact_email
            or any(
                diff.email_key(str(e.get("email", ""))) == diff.email_key(op.req.contact_email)
                for e in contact.get("emails") or []
            )
        )

    # -------------------------------------------------------------- helpers

    async def _lead(self, op: _Op, view: View, lead_id: str) -> Record | None:
        """A matched contact's lead: from the view when it holds it, else by GET."""
        lead = view.leads.get(lead_id)
        if lead is not None:
            return lead
        if lead_id.startswith(DRY_RUN_PREFIX):
            return None
        try:
            await self._read(op, view, lead_id)
        except CloseAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return view.leads.get(lead_id)

    async def _call(self, op: _Op, method: str, path: str, body: Any = None) -> Any:
        op.calls += 1
        return await self.client.request(method, path, json=body)

    def _put_lead(self, view: View, lead: Record, *, remember: bool = True) -> None:
        view.put_lead(lead, fresh=True)
        if remember and not lead["id"].startswith(DRY_RUN_PREFIX):
            self.records.put({k: v for k, v in lead.items() if k != "contacts"})
            self.ids.add_all(view.lead_keys(lead), lead["id"])
            for contact in lead.get("contacts") or []:
                self.records.put(contact)
                self.ids.add_all(view.contact_keys(contact), contact["id"])

    def _put_contact(self, view: View, contact: Record, *, remember: bool = True) -> None:
        view.put_contact(contact, fresh=True)
        if remember and not contact["id"].startswith(DRY_RUN_PREFIX):
            self.records.put(contact)
            self.ids.add_all(view.contact_keys(contact), contact["id"])


def _share(total: int, n: int, position: int) -> int:
    """Split `total` shared calls over `n` requests as integers that add up to `total`."""
    if n <= 0:
        return 0
    return total // n + (1 if position < total % n else 0)


_dry_clock = count(1)


def _dry_now() -> str:
    """A date after every real one, increasing, so simulated records sort as the newest."""
    return f"9999-12-31T23:59:59.{next(_dry_clock):06d}+00:00"


__all__ = ["SettingsError", "UpsertEngine", "age"]
