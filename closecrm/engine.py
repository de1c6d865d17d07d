"""UpsertEngine: "Create or Update Contact and Lead" on Close's public API, one request or a batch at a time."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from closecrm import diff
from closecrm.cache import IdCache, RecordCache
from closecrm.client import AmbiguousWriteError, CloseAPIError, CloseClient
from closecrm.created_ids import CreatedIdLedger
from closecrm.lookup import Search, View, age, company_key, email_lookup_key, user_key
from closecrm.model import Outcome, Settings, UpsertRequest
from closecrm.normalize import email_key

log = logging.getLogger(__name__)

Record = dict[str, Any]
MAX_CONTACTS_PER_REQUEST = 10  # SPEC §3: act on at most 10 matched contacts, oldest first
MAX_CREATE_ATTEMPTS = 3
DRY_RUN_PREFIX = "dryrun_"
# upsert_stream: batches in flight at once, and the size of each batch's round of searches. A first
# sync is lead_write-bound at first (contacts wait for their lead); 5,000 requests of lookahead give
# the contact_write budget enough ready work (bench/engine_calls.py at x5: 0.89 at depth 10, 0.92 at 25).
STREAM_DEPTH = 25
STREAM_BATCH = 200
# Groups (requests that may touch the same lead, applied in order) running at once: the whole
# lookahead. Not what bounds the HTTP calls: the client's max_in_flight and the per-group pacers do.
# A group that waits for the lead_write pacer holds its slot, so any smaller bound idles the
# contact_write budget while a first sync creates leads (engine bench: 0.86 of the budget at 16
# slots, 0.93 at 1,024; a 50,000-user first sync through the pipeline: 0.1-0.4 for 12 s at 1,024).
MAX_CONCURRENCY = STREAM_DEPTH * STREAM_BATCH


class SettingsError(Exception):
    """The destination settings do not work against this Close organisation; the message says how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


async def _batches_of(
    batches: Iterable[Sequence[UpsertRequest]] | AsyncIterable[Sequence[UpsertRequest]],
) -> AsyncIterator[Sequence[UpsertRequest]]:
    if isinstance(batches, AsyncIterable):
        async for batch in batches:
            yield batch
    else:
        for batch in batches:
            yield batch


def _union_find() -> tuple[Callable[[str], str], Callable[[str, str], None]]:
    """Disjoint sets over strings (path halving): the ``find`` and ``union`` of one grouping."""
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

    return find, union


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

    def failed(self, exc: Exception, shared_calls: int = 0) -> Outcome:
        """How the request ended after ``exc``: Close's refusal, or an error of the engine itself
        (``engine_error:<type>``, e.g. a value a helper could not handle), with what it did so far."""
        if not isinstance(exc, CloseAPIError):
            return Outcome(
                kind="failed",
                reason=f"engine_error:{type(exc).__name__}",
                branch=self.branch,
                lead_ids=tuple(self.lead_ids),
                contact_ids=tuple(self.contact_ids),
                error_body=_describe(exc),
                calls=self.calls + shared_calls,
                changes=tuple(self.changes),
            )
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
            attempts=max(1, getattr(exc, "attempts", 1)),
            changes=tuple(self.changes),
        )


def _describe(exc: BaseException, limit: int = 500) -> str:
    """An engine error for a dead letter: its type and message, bounded."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class UpsertEngine:
    """Applies UpsertRequests to Close following SPEC §3.

    ``upsert_one`` is the reference path (its own searches); ``upsert_batch`` resolves a whole
    batch with a few searches, then applies requests that may touch the same lead one after the
    other (input order) and independent ones concurrently, up to ``max_concurrency`` at a time.
    ``settle_seconds`` is the bound on how long search may lag behind a write. After an ambiguous
    create the engine searches until the record shows up, or until a search started that long after
    the failed POST has not found it either; only then does it send the create again. If every
    attempt is ambiguous the request fails as ``ambiguous_write`` and, for ``unsettled_seconds``,
    any create for the same identity first makes that same post-lag search.

    ``ledger`` (optional) is the created-id ledger: the engine reads what other engines created
    (an earlier run, the writer of an earlier bundle, the job before a restart) as id-cache hints,
    confirmed by GET like its own, and records there the lookup keys its writes give records.
    """

    def __init__(
        self,
        client: CloseClient,
        settings: Settings,
        *,
        max_concurrency: int = MAX_CONCURRENCY,
        id_cache_size: int = 100_000,
        settle_seconds: float = 3.0,
        unsettled_seconds: float = 120.0,
        ledger: CreatedIdLedger | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.max_concurrency = max(1, max_concurrency)
        self.settle_seconds = settle_seconds
        self.unsettled_seconds = unsettled_seconds
        # identity -> when an ambiguous create for it was left unconfirmed (bounded, oldest dropped)
        self._unsettled: OrderedDict[str, float] = OrderedDict()
        # What earlier runs and other writers created, for the lookups search cannot answer yet.
        self.ledger = ledger
        if ledger is not None:
            ledger.refresh()
        self.ids = IdCache(id_cache_size, remembered=ledger)
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

    async def upsert_many(
        self,
        reqs: Sequence[UpsertRequest],
        *,
        dry_run: bool = False,
        batch_size: int = STREAM_BATCH,
        depth: int = STREAM_DEPTH,
    ) -> list[Outcome]:
        """``upsert_stream`` over ``reqs`` cut into batches of ``batch_size``: one outcome per request, in order.

        For a caller with all its requests in hand (the engine bench; the pipeline's writer feeds
        ``upsert_stream`` directly, see transforms/feed.py): the same calls and end state as
        ``upsert_batch`` on each ``batch_size`` slice in turn, with searches overlapping writes and
        up to ``depth × batch_size`` requests of lookahead for the write budget.
        """
        size = max(1, batch_size)
        batches = (reqs[i : i + size] for i in range(0, len(reqs), size))
        out: list[Outcome] = []
        async for outs in self.upsert_stream(batches, dry_run=dry_run, depth=depth):
            out.extend(outs)
        return out

    async def upsert_stream(
        self,
        batches: Iterable[Sequence[UpsertRequest]] | AsyncIterable[Sequence[UpsertRequest]],
        *,
        dry_run: bool = False,
        depth: int = STREAM_DEPTH,
    ) -> AsyncIterator[list[Outcome]]:
        """``upsert_batch`` on each batch in turn, yielding each batch's outcomes in order, pipelined.

        Calling ``upsert_batch`` batch after batch leaves the write budget idle while a batch
        searches and while it waits for its longest group, and a first sync spends its first
        batches on lead creates alone. Here up to ``depth`` batches are in flight: a batch searches
        while earlier ones write, and each of its groups starts as soon as nothing it may touch is
        still in flight in an earlier batch. A group waits for every earlier group (of a batch that
        was still running when this batch searched) that claimed one of its lookup keys or records,
        joins with the other groups of its batch that wait for the same one, takes those groups'
        copies of the records it may touch, and confirms the rest as ``upsert_batch`` would.
        Requests that share a key or record stay serialised in input order across batches, so the
        end state and the calls are those of ``upsert_batch`` batch after batch. ``dry_run`` streams
        without overlap (a dry run writes nothing that a later batch could find).
        """
        source = _batches_of(batches)
        if dry_run or depth <= 1:
            async for batch in source:
                yield await self.upsert_batch(batch, dry_run=dry_run)
            return
        gate = _OrderedGate(self.max_concurrency)  # shared: the stream as a whole keeps the bound
        in_flight: deque[_Running] = deque()
        launched = count()
        # The next batch from the source, read ahead. An async source (a writer feeding the stream as
        # its input arrives) may be slow to give one: meanwhile launched batches go on writing and
        # finished ones are yielded, so a feeder waiting for outcomes never waits on itself.
        fetch: asyncio.Future[Sequence[UpsertRequest] | None] | None = asyncio.ensure_future(anext(source, None))
        following: tuple[asyncio.Future[_Prepared], list[_Running]] | None = None
        head: asyncio.Future[list[Outcome]] | None = None
        try:
            while True:
                if following is None and fetch is not None and fetch.done():
                    batch, fetch = fetch.result(), None
                    if batch is not None:
                        # The batches still writing when this search starts: what it may miss, so what to wait for.
                        running = [r for r in in_flight if not r.done()]
                        following = asyncio.ensure_future(self._prepare(list(batch))), running
                        fetch = asyncio.ensure_future(anext(source, None))
                if following is not None and len(in_flight) < depth:
                    prepared, running = following
                    following = None
                    in_flight.append(self._launch(await prepared, running, gate, next(launched)))
                    continue
                if following is None and fetch is None and not in_flight:
                    return
                if in_flight and head is None:
                    head = asyncio.ensure_future(in_flight[0].result())
                awaited = [f for f in (head, fetch if following is None else None) if f is not None]
                await asyncio.wait(awaited, return_when=asyncio.FIRST_COMPLETED)
                if head is not None and head.done():
                    outs, head = head.result(), None
                    in_flight.popleft()
                    yield outs
        finally:
            futures = [f for f in (fetch, head) if f is not None]
            if following is not None:
                futures.append(following[0])
            for r in in_flight:
                futures.extend(r.tasks)
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    def _launch(self, prep: _Prepared, running: list[_Running], gate: _OrderedGate, number: int) -> _Running:
        """Start a streamed batch's groups; each waits for the earlier groups it depends on."""
        reqs, outcomes, active, view = prep.reqs, prep.outcomes, prep.active, prep.view
        if not active:
            return _Running(outcomes, [], {})
        if prep.error is not None:
            for i in active:
                outcomes[i] = _Op(reqs[i], False).failed(prep.error)
            return _Running(outcomes, [], {})
        find, union = _union_find()

        def claimant(node: str) -> tuple[int, int] | None:
            """The latest group of a running batch that claimed this key or record: (batch, group)."""
            for b in range(len(running) - 1, -1, -1):
                g = running[b].claims.get(node)
                if g is not None:
                    return b, g
            return None

        nodes_of: dict[int, set[str]] = {}
        keys_of: dict[int, list[str]] = {}
        for i in active:
            me = f"req:{i}"
            find(me)
            keys = keys_of[i] = prep.keys[i]
            nodes = nodes_of[i] = self._claim_nodes(view, keys)
            for node in nodes:
                union(me, node)
                if running and (c := claimant(node)) is not None:
                    union(me, f"earlier:{c[0]}:{c[1]}")
        members: dict[str, list[int]] = {}
        for i in active:
            members.setdefault(find(f"req:{i}"), []).append(i)
        groups = sorted(members.values(), key=len, reverse=True)  # longest chains first
        shares = {i: _share(prep.lookup_calls, len(active), n) for n, i in enumerate(active)}
        claims: dict[str, int] = {}
        tasks: list[asyncio.Task[None]] = []
        for g, group in enumerate(groups):
            nodes = set().union(*(nodes_of[i] for i in group))
            keys = {k for i in group for k in keys_of[i]}
            found = {c for n in nodes if running and (c := claimant(n)) is not None}
            deps = {running[b].tasks[g2] for b, g2 in found}
            views = [running[b].view for b in sorted({b for b, _ in found})]
            for node in nodes:
                claims[node] = g
            tasks.append(
                asyncio.ensure_future(
                    self._run_streamed_group(
                        group, reqs, outcomes, view, shares, keys, nodes, deps, views, gate, (number, g)
                    )
                )
            )
        return _Running(outcomes, tasks, claims, view)

    def _claim_nodes(self, view: View, keys: list[str]) -> set[str]:
        """The lookup keys of a request and every record id they lead to (view or id cache), with contacts' leads."""
        nodes = set(keys)
        for key in keys:
            for record_id in view.ids_for(key) | set(self.ids.ids(key)):
                nodes.add(record_id)
                record = view.contacts.get(record_id) or self.records.get(record_id)
                if record is not None and record.get("lead_id"):
                    nodes.add(record["lead_id"])
        return nodes

    async def _run_streamed_group(
        self,
        group: list[int],
        reqs: list[UpsertRequest],
        outcomes: list[Outcome | None],
        view: View,
        shares: dict[int, int],
        keys: set[str],
        nodes: set[str],
        deps: set[asyncio.Task[None]],
        earlier: list[View | None],
        gate: _OrderedGate,
        priority: tuple[int, int],
    ) -> None:
        if deps:
            await asyncio.wait(deps)
        await gate.acquire(priority)
        try:
            try:
                for previous in earlier:  # oldest first: a later batch's copy is newer
                    if previous is not None:
                        _carry_over(view, previous, keys, nodes)
                confirm_calls = await self._confirm_cached(view, keys)
            except Exception as exc:  # noqa: BLE001 - Close unavailable, or a bug: this group fails, the stream goes on
                for i in group:
                    outcomes[i] = _Op(reqs[i], False).failed(exc, shares[i])
                return
            for n, i in enumerate(group):
                outcomes[i] = await self._apply(
                    reqs[i], view, False, shares[i] + (confirm_calls if n == 0 else 0)
                )
        finally:
            gate.release()

    async def _run(self, reqs: list[UpsertRequest], *, dry_run: bool) -> list[Outcome]:
        return await self._finish(await self._prepare(reqs), dry_run=dry_run)

    async def _prepare(self, reqs: list[UpsertRequest]) -> _Prepared:
        """The part of a batch that only reads: which requests can be looked up, and the batched searches."""
        prep = _Prepared(reqs, [None] * len(reqs), [], View(self.settings))
        terms: list[_Terms] = []
        for i, req in enumerate(reqs):
            try:
                found = self._terms(req)
            except Exception as exc:  # noqa: BLE001 - a value no lookup can use fails its own request only
                log.warning("request not looked up: %s", _describe(exc))
                prep.outcomes[i] = _Op(req, False).failed(exc)
                continue
            if found is None:
                prep.outcomes[i] = Outcome(kind="skipped", reason="no_identity", branch="identity")
            else:
                prep.active.append(i)
                prep.keys[i] = list(found.keys)
                terms.append(found)
        if prep.active:
            try:
                prep.lookup_calls = await self._search_into(prep.view, terms)
            except Exception as exc:  # noqa: BLE001 - Close unavailable (or a bug): the batch fails with the reason
                prep.error = exc
        return prep

    async def _finish(self, prep: _Prepared, *, dry_run: bool) -> list[Outcome]:
        reqs, outcomes, active, view = prep.reqs, prep.outcomes, prep.active, prep.view
        if not active:
            return [o for o in outcomes if o is not None]
        lookup_calls = prep.lookup_calls
        try:
            if prep.error is not None:
                raise prep.error
            keys = {k for i in active for k in prep.keys[i]}
            lookup_calls += await self._confirm_cached(view, keys)
        except Exception as exc:  # noqa: BLE001
            # Nothing can be decided without the lookup (Close unavailable): every request fails with the reason.
            for i in active:
                outcomes[i] = _Op(reqs[i], dry_run).failed(exc)
            return [o for o in outcomes if o is not None]
        groups = self._groups(view, [(i, prep.keys[i]) for i in active])
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

    def _terms(self, req: UpsertRequest) -> _Terms | None:
        """What one request looks Close up by; None when it has no identity. Raises on a value no
        lookup can use (e.g. an email that is not text): the caller fails that request alone."""
        company_id = diff.company_id_of(req, self.settings)
        user_id = diff.user_id_of(req, self.settings)
        emails = tuple(email_key(e) for e in req.contact_emails if e)
        lead_cfs = frozenset(cf for cf in req.lead_custom_fields if cf.removeprefix("custom."))
        contact_cfs = frozenset(cf for cf in req.contact_custom_fields if cf.removeprefix("custom."))
        identity = []
        if company_id:
            identity.append(company_key(company_id))
        if user_id:
            identity.append(user_key(user_id))
        if req.contact_email:
            identity.append(email_lookup_key(req.contact_email))
        if not identity:
            return None
        # Every key whose records this request may read or change (all its emails, not just the first).
        keys = tuple(dict.fromkeys([*identity, *(f"email:{e}" for e in emails)]))
        return _Terms(keys, company_id, user_id, emails, lead_cfs, contact_cfs)

    async def _search_into(self, view: View, terms: Sequence[_Terms]) -> int:
        """Fill the view for these requests with batched searches (``_confirm_cached`` then adds what search missed)."""
        before = self._search.calls
        company_ids = {t.company_id for t in terms if t.company_id}
        user_ids = {t.user_id for t in terms if t.user_id}
        emails = {e for t in terms for e in t.emails}
        lead_cfs = {cf for t in terms for cf in t.lead_cfs}
        contact_cfs = {cf for t in terms for cf in t.contact_cfs}
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
        return self._search.calls - before + known_before

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

    def _groups(self, view: View, indexed: list[tuple[int, list[str]]]) -> list[list[int]]:
        """Union-find over everything two requests could both touch (their lookup keys and the
        records those lead to); each group keeps input order."""
        find, union = _union_find()

        for i, keys in indexed:
            me = f"req:{i}"
            find(me)
            for key in keys:
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
        except Exception as exc:  # noqa: BLE001 - one request's bad value must not fail the others
            log.warning("upsert failed in the engine: %s", _describe(exc))
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
            updated = await self._call(op, "PUT", f"lead/{lead['id']}/", body)
            self._put_lead(view, updated)
            self._learned("lead", updated["id"], view.lead_keys(updated), before=view.lead_keys(lead))
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
            updated = await self._call(op, "PUT", f"contact/{contact['id']}/", body)
            self._put_contact(view, updated)
            self._learned(
                "contact", updated["id"], view.contact_keys(updated), before=view.contact_keys(contact)
            )
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
        sent = 0
        for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
            known = {cid for cid, c in view.contacts.items() if c.get("lead_id") == lead_id}
            try:
                contact = await self._call(op, "POST", "contact/", body)
            except AmbiguousWriteError as exc:
                sent += exc.attempts
                if attempt == MAX_CREATE_ATTEMPTS:
                    exc.attempts = sent  # the dead letter counts every POST, not just the last
                    raise
                # The lead's own GET lists its contacts without lag: did the POST happen?
                lead = await self._read(op, view, lead_id)
                new = [c for c in lead.get("contacts") or [] if c["id"] not in known and self._is_ours(op, c)]
                if new:
                    for c in new:  # search may not show it for a while yet
                        self._learned("contact", c["id"], view.contact_keys(c))
                    op.created = True
                    raise _Redo() from None
                continue
            self._put_contact(view, contact)
            self._learned("contact", contact["id"], view.contact_keys(contact))
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
        key = self._create_key(op.req)
        since = self._unsettled_since(key)
        if since is not None:
            # An earlier create for this identity may have happened without search showing it yet.
            if await self._appeared(op, view, since):
                raise _Redo()
            self._unsettled.pop(key, None)  # searched after the lag bound: it does not exist
        sent = 0
        for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
            try:
                lead = await self._call(op, "POST", "lead/", body)
            except AmbiguousWriteError as exc:
                # Whatever Close committed, it committed before this moment (the call may have
                # waited on pacing or 429s before it was sent): the lag bound counts from here.
                failed_at = time.monotonic()
                sent += exc.attempts
                if await self._appeared(op, view, failed_at):
                    op.created = True
                    raise _Redo() from None
                if attempt == MAX_CREATE_ATTEMPTS:
                    if key is not None:
                        self._mark_unsettled(key, failed_at)
                    exc.attempts = sent  # the dead letter counts every POST, not just the last
                    raise
                continue  # a search made after the lag bound did not find it: it was not created
            self._put_lead(view, lead)
            self._learned("lead", lead["id"], view.lead_keys(lead))
            op.touch(lead_id=lead["id"])
            for c in lead.get("contacts") or []:
                self._learned("contact", c["id"], view.contact_keys(c))
                op.touch(contact_id=c["id"])
            op.created = True
            return

    def _create_key(self, req: UpsertRequest) -> str | None:
        company_id = diff.company_id_of(req, self.settings)
        if company_id:
            return "company:" + company_id
        user_id = diff.user_id_of(req, self.settings)
        if user_id:
            return "user:" + user_id
        return "email:" + diff.email_key(req.contact_email) if req.contact_email else None

    def expect_unconfirmed(self, req: UpsertRequest) -> None:
        """Treat ``req``'s identity as possibly created just now (e.g. replaying an ``ambiguous_write``
        dead letter): before creating it, look for it with a search made after the lag bound."""
        key = self._create_key(req)
        if key is not None:
            self._mark_unsettled(key, time.monotonic())

    def _mark_unsettled(self, key: str, since: float) -> None:
        self._unsettled[key] = since
        self._unsettled.move_to_end(key)
        while len(self._unsettled) > 10_000:
            self._unsettled.popitem(last=False)

    def _unsettled_since(self, key: str | None) -> float | None:
        since = self._unsettled.get(key) if key is not None else None
        if since is not None and time.monotonic() - since > self.unsettled_seconds:
            del self._unsettled[key]
            return None
        return since

    async def _appeared(self, op: _Op, view: View, since: float) -> bool:
        """After an ambiguous POST /lead/ at ``since``: search (which lags) until the record shows up,
        or until a search *started* ``settle_seconds`` after ``since`` has not found it either."""
        req = op.req
        company_id = diff.company_id_of(req, self.settings)
        user_id = diff.user_id_of(req, self.settings)
        deadline = since + self.settle_seconds
        pause = max(0.05, self.settle_seconds / 6)
        while True:
            started = time.monotonic()
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
            if started >= deadline:
                return False
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())) or 0.01)

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

    def _learned(self, kind: str, record_id: str, keys: Iterable[str], before: Iterable[str] = ()) -> None:
        """A write gave this record these lookup keys: the ledger keeps the new ones for other engines
        (a re-run, a restart), whose searches may not show them for a while."""
        if self.ledger is None:
            return
        had = set(before)
        new = [k for k in keys if k not in had]
        if new:
            self.ledger.record(kind, record_id, new)

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


@dataclass
class _Prepared:
    """A batch after its searches, before any decision: outcomes so far, the requests to apply, the view."""

    reqs: list[UpsertRequest]
    outcomes: list[Outcome | None]
    active: list[int]
    view: View
    lookup_calls: int = 0
    error: Exception | None = None
    keys: dict[int, list[str]] = field(default_factory=dict)  # each active request's lookup keys


@dataclass(frozen=True)
class _Terms:
    """One request's lookup: its keys, and the values the batched searches ask for."""

    keys: tuple[str, ...]
    company_id: str | None
    user_id: str | None
    emails: tuple[str, ...]  # compared form (email_key)
    lead_cfs: frozenset[str]
    contact_cfs: frozenset[str]


class _OrderedGate:
    """A semaphore whose waiters get in by priority (lowest first), then arrival.

    In a stream, a group of an older batch that had to wait for an earlier group goes before the
    groups of newer batches queued meanwhile: the oldest batch finishes first and the work that was
    waiting on a lead's creation is not starved by newer batches' creates.
    """

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: list[tuple[tuple[int, int], int, asyncio.Future[None]]] = []
        self._seq = count()

    async def acquire(self, priority: tuple[int, int]) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self._free += 1


@dataclass
class _Running:
    """A streamed batch whose groups are under way: their tasks, and what each claimed (key or id -> group)."""

    outcomes: list[Outcome | None]
    tasks: list[asyncio.Task[None]]
    claims: dict[str, int]
    view: View | None = None

    def done(self) -> bool:
        return all(t.done() for t in self.tasks)

    async def result(self) -> list[Outcome]:
        if self.tasks:
            await asyncio.gather(*self.tasks)
        return [o for o in self.outcomes if o is not None]


def _carry_over(view: View, previous: View, keys: set[str], nodes: set[str]) -> None:
    """Give `view` the previous batch's copy of the records these keys and ids lead to.

    Called once the previous batch's groups that claimed them are done. This batch's searches may
    have run while they were still writing, so a hit can predate (or miss) a write; the previous
    batch's copy is the newest state. Copies go in as search hits would (not fresh: a list merge
    still reads the record first), and never over a record this batch has itself written or read.
    """
    wanted = set(nodes)
    for key in keys:
        wanted |= previous.ids_for(key)
    for record_id in list(wanted):
        contact = previous.contacts.get(record_id)
        if contact is not None and contact.get("lead_id"):
            wanted.add(contact["lead_id"])
    for record_id in wanted:
        if record_id.startswith(DRY_RUN_PREFIX) or record_id in view.fresh:
            continue
        for theirs, ours, put in (
            (previous.leads, view.leads, view.put_lead),
            (previous.contacts, view.contacts, view.put_contact),
        ):
            record = theirs.get(record_id)
            if record is None:
                continue
            hit = ours.get(record_id)
            if hit is None or str(hit.get("date_updated") or "") <= str(record.get("date_updated") or ""):
                view.drop(record_id)
                put(record, fresh=False)
            break


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
