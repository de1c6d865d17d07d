"""UpsertEngine: "Create or Update Contact and Lead" on Close's public API, one request or a stream of batches."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

from closecrm.api.client import CloseClient
from closecrm.engine.lookups import Lookup
from closecrm.engine.ordering.scheduler import (
    MAX_CONCURRENCY,
    STREAM_BATCH,
    STREAM_DEPTH,
    Batches,
    Scheduler,
    Settled,
)
from closecrm.engine.ordering.spans import batches
from closecrm.engine.settings_check import check_settings
from closecrm.engine.writes.ambiguity import create_key
from closecrm.engine.writes.cache import IdCache, RecordCache
from closecrm.engine.writes.dry import DryWrites
from closecrm.engine.writes.layer import Ended, Intend, Store, Writes
from closecrm.engine.writes.ledger import CreatedIdLedger
from closecrm.journal import Recording
from closecrm.model import Outcome, Settings, UpsertRequest


class UpsertEngine:
    """Applies UpsertRequests to Close (docs/DESIGN.md, "Decision procedure").

    Every entry point runs the one scheduler (scheduler.py): ``upsert_one`` is a batch of one,
    ``upsert_batch`` a stream of one batch, ``upsert_many`` a stream of slices. ``dry_run`` runs the
    same scheduler over a write layer that writes nothing and remembers what it would have written
    for the engine's lifetime, so a dry run plans what a real run would write.

    ``settle_seconds`` is the bound on how long search may lag behind a write, and
    ``unsettled_seconds`` how long an identity whose create stayed ambiguous is handled with care
    (ambiguity.py). ``ledger`` (optional) is the created-id ledger: the engine reads what other
    engines created (an earlier run, the writer of an earlier bundle, the job before a restart) as
    id-cache hints, confirmed by GET like its own, and records there the lookup keys its writes give
    records.
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
        # What earlier runs and other writers created, for the lookups search cannot answer yet.
        self.ledger = ledger
        if ledger is not None:
            ledger.refresh()
        self.ids = IdCache(id_cache_size, remembered=ledger)
        self._record_cache_size = max(1_000, id_cache_size // 5)
        self.records = RecordCache(self._record_cache_size)
        self._lookup = Lookup(client, settings)
        self._writes = Writes(
            client,
            settings,
            self.ids,
            self.records,
            lookup=self._lookup,
            ledger=ledger,
            settle_seconds=settle_seconds,
            unsettled_seconds=unsettled_seconds,
        )
        self._dry: DryWrites | None = None
        self._scheduler = Scheduler(self._lookup, self.max_concurrency)

    async def validate_settings(self) -> None:
        """Fail fast with SettingsError, naming the setting and the fix."""
        self._lookup.know_custom_fields(await check_settings(self.client, self.settings))

    async def upsert_one(self, req: UpsertRequest, *, dry_run: bool = False) -> Outcome:
        """One request: its own searches, then the decision procedure."""
        return (await self.upsert_batch([req], dry_run=dry_run))[0]

    async def upsert_batch(self, reqs: Sequence[UpsertRequest], *, dry_run: bool = False) -> list[Outcome]:
        """Same end state as ``upsert_one`` on each request in order, with far fewer calls."""
        out: list[Outcome] = []
        async for outs in self.upsert_stream([list(reqs)], dry_run=dry_run):
            out.extend(outs)
        return out

    async def upsert_many(
        self,
        reqs: Sequence[UpsertRequest],
        *,
        dry_run: bool = False,
        batch_size: int = STREAM_BATCH,
        depth: int = STREAM_DEPTH,
    ) -> list[Outcome]:
        """``upsert_stream`` over ``reqs`` cut into batches of about ``batch_size`` (never across a collapsed
        request's span, spans.py): one outcome per request, in order.

        For a caller with all its requests in hand (the engine bench; the pipeline's writer feeds
        ``upsert_stream`` directly, see transforms/feed.py): the same calls and end state as
        ``upsert_batch`` on each ``batch_size`` slice in turn, with searches overlapping writes and
        up to ``depth × batch_size`` requests of lookahead for the write budget.
        """
        cut = batches(reqs, batch_size, lambda req: req)
        out: list[Outcome] = []
        async for outs in self.upsert_stream(cut, dry_run=dry_run, depth=depth):
            out.extend(outs)
        return out

    async def upsert_stream(
        self,
        batches: Batches,
        *,
        dry_run: bool = False,
        depth: int = STREAM_DEPTH,
        settled: Settled | None = None,
    ) -> AsyncIterator[list[Outcome]]:
        """``upsert_batch`` on each batch in turn, yielding each batch's outcomes in order, pipelined:
        up to ``depth`` batches in flight, a batch searching while earlier ones write (scheduler.py).
        The end state and the calls are those of ``upsert_batch`` batch after batch.

        With ``settled`` (batch number in this stream, index in the batch, outcome), each outcome is
        handed over as soon as it is final and the batch lets go of its request; each batch then
        yields None in its place (see ``Scheduler.stream``)."""
        async for outs in self._scheduler.stream(batches, self._layer(dry_run), depth, settled):
            yield outs

    def record(self, intend: Intend | None, recording: Recording | None, ended: Ended | None = None) -> None:
        """Record as writes happen: ``intend`` is called (off the event loop, awaited) with each lead
        merge's and contact deletion's request and change before the write is sent, and must have it
        on disk when it returns; ``ended`` with each group's requests and outcomes as the group ends,
        before the requests after it go on. Once ``recording`` holds a failure, every Close call of
        the write layer is refused (``RecordingStopped``): the request fails, and so does every later one."""
        self._writes.intend = intend
        self._writes.recording = recording
        self._writes.ended = ended

    def expect_unconfirmed(self, req: UpsertRequest) -> None:
        """Treat ``req``'s identity as possibly created just now (e.g. replaying an ``ambiguous_write``
        dead letter): before creating it, look for it with a search made after the lag bound."""
        key = create_key(req, self.settings)
        if key is not None:
            self._writes.unsettled.mark(key, time.monotonic())

    def _layer(self, dry_run: bool) -> Store:
        if not dry_run:
            return self._writes
        if self._dry is None:
            self._dry = DryWrites(self._writes, self._record_cache_size)
        return self._dry
