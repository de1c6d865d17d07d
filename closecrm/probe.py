"""`close-sync validate --probe`: every lookup shape the job sends, tried once against the org's own records.

Read-only by default: one page of the export's search body per object type finds a contact with the
user-id field and a lead with the company id, then the engine's own lookups (closecrm/engine/view.py)
must find them again: the contact by its user id and by its email, the lead by its company id.
With ``write=True`` it also creates one lead (named so nobody mistakes it) with a nested contact,
reads it back, finds it through every lookup, updates it with the engine's own bodies
(closecrm/engine/diff.py) and deletes it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from closecrm.api.client import CloseAPIError, CloseClient
from closecrm.engine.diff import cf_key, contact_list_update, contact_scalar_update, new_lead
from closecrm.engine.view import Search
from closecrm.events.normalize import email_key, phone_key, url_key
from closecrm.model import Settings, UpsertRequest
from closecrm.reverse_etl import export

Record = dict[str, Any]
SEARCH_TRIES = 6  # Close's search lags writes by a few seconds: a new record may need a few looks


class StepFailed(Exception):
    """A probe step whose answer is not what the job relies on."""


@dataclass
class Step:
    name: str
    status: str  # "pass", "FAIL" or "skip"
    detail: str
    calls: int

    def line(self) -> str:
        return f"{self.status:<4}  {self.name} ({self.calls} call{'s' if self.calls != 1 else ''}): {self.detail}"


@dataclass
class ProbeReport:
    steps: list[Step] = field(default_factory=list)
    wrote: bool = False

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.steps)

    @property
    def failed(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "FAIL"]

    def summary(self) -> str:
        counts = {k: sum(1 for s in self.steps if s.status == k) for k in ("pass", "FAIL", "skip")}
        deleted = any(s.name == "delete the lead" and s.status == "pass" for s in self.steps)
        effect = "nothing written"
        if self.wrote:
            effect = (
                "created one lead and deleted it" if deleted else "created one lead and could NOT delete it"
            )
        return (
            f"probe: {counts['pass']} passed, {counts['FAIL']} failed, {counts['skip']} skipped; "
            f"{self.calls} Close API call(s), {effect}"
        )


class Probe:
    def __init__(self, client: CloseClient, settings: Settings, *, search_wait: float = 2.0) -> None:
        self.client = client
        self.settings = settings
        self.search = Search(client, settings)
        self.report = ProbeReport()
        self.search_wait = search_wait
        self._user_cf = settings.contact_custom_field_id_for_user_id
        self._company_cf = settings.lead_custom_field_id_for_company_id

    async def step(self, name: str, run: Callable[[], Awaitable[str]]) -> bool:
        """Run one step; its detail line, or why it failed. Never raises for a Close answer."""
        before = self.client.calls
        try:
            detail, status = await run(), "pass"
        except StepFailed as exc:
            detail, status = str(exc), "FAIL"
        except CloseAPIError as exc:
            detail, status = f"Close answered {exc.status or 'nothing'}: {_short(exc.body)}", "FAIL"
        self.report.steps.append(Step(name, status, detail, self.client.calls - before))
        return status == "pass"

    def skip(self, name: str, why: str) -> None:
        self.report.steps.append(Step(name, "skip", why, 0))

    # ------------------------------------------------------------------ read-only

    async def read_only(self) -> None:
        contacts: list[Record] = []
        leads: list[Record] = []

        async def page(object_type: str, fields: tuple[str, ...], cf: str, out: list[Record]) -> str:
            pager = export.SearchPager(
                self.client, object_type, "date_created", [*fields, *([cf_key(cf)] if cf else [])]
            )
            docs, _ = await pager._search(pager._body(None, None, limit=export.PAGE_SIZE, desc=True))
            out.extend(d for d in docs if isinstance(d, dict))
            return f"{len(out)} {object_type}(s) read, newest first"

        await self.step(
            "export page of contacts", lambda: page("contact", export.CONTACT_FIELDS, self._user_cf, contacts)
        )
        await self.step(
            "export page of leads", lambda: page("lead", export.LEAD_FIELDS, self._company_cf, leads)
        )

        user_cf = cf_key(self._user_cf) if self._user_cf else ""
        with_user = next((c for c in contacts if user_cf and c.get(user_cf) not in (None, "")), None)
        if not self._user_cf:
            self.skip("contact by user id", "contact_custom_field_id_for_user_id is not configured")
        elif with_user is None:
            self.skip(
                "contact by user id", "no contact with the user-id field among the newest ones (try --write)"
            )
        else:
            await self.step("contact by user id", lambda: self.find_contact_by_user(with_user, tries=1))

        # The contact found by user id, found again by its email. When its email is all lower case and
        # another contact's has capitals, that other one: the lookup's lower case then differs from
        # what is stored, which is the point.
        by_email = sorted((c for c in contacts if _emails(c)), key=lambda c: c is not with_user)
        with_email = _mixed_case_first(by_email)
        if with_email is None:
            self.skip("contact by email in another case", "no contact with an email among the newest ones")
        else:
            await self.step(
                "contact by email in another case", lambda: self.find_contact_by_email(with_email, tries=1)
            )

        company_cf = cf_key(self._company_cf) if self._company_cf else ""
        with_company = next((ld for ld in leads if company_cf and ld.get(company_cf) not in (None, "")), None)
        if not self._company_cf:
            self.skip("lead by company id", "lead_custom_field_id_for_company_id is not configured")
        elif with_company is None:
            self.skip(
                "lead by company id", "no lead with the company-id field among the newest ones (try --write)"
            )
        else:
            await self.step("lead by company id", lambda: self.find_lead_by_company(with_company, tries=1))

    async def _found(self, lookup: Callable[[], Awaitable[list[Record]]], record_id: str, tries: int) -> None:
        for attempt in range(tries):
            if record_id in {h.get("id") for h in await lookup()}:
                return
            if attempt + 1 < tries:
                await asyncio.sleep(self.search_wait)
        raise StepFailed(f"{record_id} was not among the hits")

    async def find_contact_by_user(self, contact: Record, tries: int) -> str:
        user_id = str(contact[cf_key(self._user_cf)])
        await self._found(lambda: self.search.contacts_by_keys([user_id], []), contact["id"], tries)
        return f"found {contact['id']} by {self._user_cf} = {user_id!r}"

    async def find_contact_by_email(self, contact: Record, tries: int) -> str:
        stored = _emails(contact)[0]
        asked = stored.swapcase()
        await self._found(lambda: self.search.contacts_by_keys([], [asked]), contact["id"], tries)
        sent = email_key(asked)
        note = "" if sent != stored else " (stored in that case already: case not exercised; --write does)"
        return f"found {contact['id']} stored as {stored!r}, asked as {asked!r}, searched as {sent!r}{note}"

    async def find_lead_by_company(self, lead: Record, tries: int) -> str:
        company_id = str(lead[cf_key(self._company_cf)])
        await self._found(lambda: self.search.leads_by_company_ids([company_id]), lead["id"], tries)
        return f"found {lead['id']} by {self._company_cf} = {company_id!r}"

    # ------------------------------------------------------------------ writes

    async def write_shapes(self) -> None:
        now = datetime.now(UTC)
        token = f"close-sync-probe-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        req = UpsertRequest(
            lead_name=f"close-sync probe {now:%Y-%m-%d %H:%M:%S} UTC (safe to delete)",
            lead_company_id=token,
            contact_name="close-sync probe",
            contact_title="probe",
            contact_user_id=token,
            contact_emails=(f"Probe.{token[-6:]}@Example.COM",),
            contact_phones=("+1 415 555 0134",),
            contact_urls=("https://example.com/close-sync-probe",),
        )
        created: list[Record] = []
        if not self._user_cf or not self._company_cf:
            self.skip("write shapes", "both lookup custom fields must be configured")
            return

        async def create() -> str:
            lead = await self.client.post("lead/", new_lead(req, self.settings, with_contact=True))
            created.append(lead)
            return f"created {lead.get('id')} {req.lead_name!r}"

        try:
            if not await self.step("create a lead with a nested contact", create):
                self.report.steps[
                    -1
                ].detail += f"; if Close made it anyway, delete the lead named {req.lead_name!r}"
                return
            self.report.wrote = True
            lead_id = created[0]["id"]
            got: list[Record] = []

            async def read_back() -> str:
                lead = await self.client.get(f"lead/{lead_id}/")
                got.append(lead)
                return self._check_read_back(lead, req)

            if not await self.step("read the lead back by id", read_back):
                return
            contact = dict((got[0].get("contacts") or [{}])[0])
            contact.setdefault("lead_id", lead_id)
            tries = SEARCH_TRIES
            await self.step("new contact by user id", lambda: self.find_contact_by_user(contact, tries))
            await self.step(
                "new contact by email in another case", lambda: self.find_contact_by_email(contact, tries)
            )
            await self.step("new lead by company id", lambda: self.find_lead_by_company(got[0], tries))

            async def update() -> str:
                more = UpsertRequest(
                    contact_title="probe (updated)", contact_emails=(f"second.{token[-6:]}@example.com",)
                )
                body = {
                    **contact_scalar_update(contact, more, self.settings),
                    **contact_list_update(contact, more),
                }
                await self.client.put(f"contact/{contact['id']}/", body)
                after = await self.client.get(f"contact/{contact['id']}/")
                if after.get("title") != "probe (updated)":
                    raise StepFailed(f"title is {after.get('title')!r} after the update")
                keys = {email_key(e) for e in _emails(after)}
                wanted = {email_key(e) for e in (*req.contact_emails, *more.contact_emails)}
                if keys != wanted:
                    raise StepFailed(f"emails are {sorted(keys)} after appending one, not {sorted(wanted)}")
                if str(after.get(cf_key(self._user_cf))) != token:
                    raise StepFailed("the user-id field was lost by the update")
                return "title updated, one email appended, the other fields kept"

            await self.step("update a field and append an email", update)
        finally:
            if created:
                await self._delete(created[0]["id"])

    def _check_read_back(self, lead: Record, req: UpsertRequest) -> str:
        if str(lead.get(cf_key(self._company_cf))) != req.lead_company_id:
            raise StepFailed(
                f"the lead's {self._company_cf} came back as {lead.get(cf_key(self._company_cf))!r}"
            )
        contacts = lead.get("contacts") or []
        if len(contacts) != 1:
            raise StepFailed(f"{len(contacts)} nested contact(s) came back, not 1")
        contact = contacts[0]
        if str(contact.get(cf_key(self._user_cf))) != req.contact_user_id:
            raise StepFailed(
                f"the nested contact's {self._user_cf} came back as {contact.get(cf_key(self._user_cf))!r}: "
                "Close dropped the custom field of a contact created inside a lead"
            )
        checks = (
            ("emails", "email", email_key, req.contact_emails),
            ("phones", "phone", phone_key, req.contact_phones),
            ("urls", "url", url_key, req.contact_urls),
        )
        for list_key, item_key, keyfn, sent in checks:
            items = [i.get(item_key) for i in contact.get(list_key) or [] if isinstance(i, dict)]
            if [keyfn(str(i)) for i in items] != [keyfn(v) for v in sent]:
                raise StepFailed(f"{list_key} came back as {items!r} for {list(sent)!r}")
        return f"company id, nested contact's user id, email, phone and url came back as sent ({contact.get('id')})"

    async def _delete(self, lead_id: str) -> None:
        async def delete() -> str:
            await self.client.request("DELETE", f"lead/{lead_id}/")
            try:
                await self.client.get(f"lead/{lead_id}/")
            except CloseAPIError as exc:
                if exc.status == 404:
                    return f"deleted {lead_id}; a read now answers 404"
                raise
            raise StepFailed(f"{lead_id} can still be read after the delete: delete it by hand")

        if not await self.step("delete the lead", delete):
            self.report.steps[-1].detail += f" (delete {lead_id} by hand)"


async def run_probe(
    client: CloseClient, settings: Settings, *, write: bool = False, search_wait: float = 2.0
) -> ProbeReport:
    probe = Probe(client, settings, search_wait=search_wait)
    await probe.read_only()
    if write:
        await probe.write_shapes()
    return probe.report


def _emails(record: Record) -> list[str]:
    return [str(e["email"]) for e in record.get("emails") or [] if isinstance(e, dict) and e.get("email")]


def _mixed_case_first(contacts: list[Record]) -> Record | None:
    """A contact whose first email has capitals (the lookup's lower case then differs), else any."""
    return next(
        (c for c in contacts if _emails(c)[0] != _emails(c)[0].lower()), contacts[0] if contacts else None
    )


def _short(body: Any, limit: int = 200) -> str:
    text = str(body)
    return text if len(text) <= limit else text[: limit - 1] + "…"
