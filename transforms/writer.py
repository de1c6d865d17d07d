"""UpsertToClose: a stateful writer keyed by lead-identity shard that applies batches through the engine.

See docs/DESIGN.md#batching-and-the-writer.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window
from apache_beam.transforms.combiners import CountCombineFn
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    CombiningValueStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Duration, Timestamp

from closecrm.engine import MAX_CONCURRENCY
from closecrm.engine.ordering.spans import batches
from closecrm.events.parse import instant
from closecrm.model import Outcome, UpsertRequest, request_of_state
from closecrm.wiring import EngineSpec
from transforms import metrics
from transforms.client_metrics import ClientMetrics
from transforms.collapse import Pending
from transforms.deadletter import DEAD
from transforms.feed import EngineFeed
from transforms.keying import key_by_lead_shard, lead_identity
from transforms.ledger import LEDGER
from transforms.objects import BEAM_OBJECTS
from transforms.outcomes import audit_line, emit_outcome, intent_line
from transforms.sharded import PackShards, in_global_window, unpack

# Bounded input reaches the writer in packs of at most this many requests (one compressed pickled list
# per lead shard and bundle): the local runner keeps the writer's whole input, and then its state, in
# memory until the input ends, and a pack takes a fraction of the room of its requests one by one.
REQUESTS_PER_PACK = 2_000


def event_order(request: UpsertRequest) -> tuple[int, Any]:
    """A request's moment in UTC, requests without a usable timestamp first (as collapsing sorts)."""
    moment = instant(request.timestamp)
    return (0, 0) if moment is None else (1, moment)


# Between the event ids of a request kept aside (`EventIdsAside`): a character no id of a parsed event
# holds in practice; a request with an id that holds it is left whole.
_SEPARATOR = "\x00"


class EventIdsAside:
    """The event ids of the requests a writer has under way, by request, each request's as one string.

    Opened, a collapsed request's event ids (a string per event) are the largest part of it, and a
    bounded run's one flush holds every request at once. The engine never reads them; only what is
    made once a request has ended does (its ledger entries, audit line and dead letter). So a flush
    hands the engine each request without them (`put`), and they are put back when it has ended
    (`whole`, `take`). Thread-safe for one writer: `put` and `take` on Beam's thread, `whole` also
    on the engine's, before the request's outcome comes back.
    """

    def __init__(self) -> None:
        self._ids: dict[int, str] = {}

    def put(self, pending: Pending) -> Pending:
        ids = pending.request.event_ids
        if type(ids) is not tuple or len(ids) < 2 or not all(type(i) is str for i in ids):
            return pending
        text = _SEPARATOR.join(ids)
        if text.count(_SEPARATOR) != len(ids) - 1:
            return pending
        bare = request_of_state({**vars(pending.request), "event_ids": ()})
        self._ids[id(bare)] = text
        return Pending(pending.person, bare, pending.events)

    def whole(self, pending: Pending) -> Pending:
        """``pending`` with its event ids back (itself when none were put aside)."""
        return self._restored(pending, self._ids.get(id(pending.request)))

    def request(self, request: UpsertRequest) -> UpsertRequest:
        """``request`` with its event ids back (itself when none were put aside)."""
        return _with_ids(request, self._ids.get(id(request)))

    def take(self, pending: Pending) -> Pending:
        """`whole`, forgetting the ids kept aside: the request has ended."""
        return self._restored(pending, self._ids.pop(id(pending.request), None))

    def _restored(self, pending: Pending, text: str | None) -> Pending:
        if text is None:
            return pending
        return Pending(pending.person, _with_ids(pending.request, text), pending.events)

    def __len__(self) -> int:
        return len(self._ids)


def _with_ids(request: UpsertRequest, text: str | None) -> UpsertRequest:
    """``request`` holding the event ids `EventIdsAside.put` joined into ``text`` (itself for None)."""
    if text is None:
        return request
    return request_of_state({**vars(request), "event_ids": tuple(text.split(_SEPARATOR))})


def lead_of(pending: Pending) -> str:
    """What places a request among the writer's keys (`transforms.keying.lead_identity`)."""
    return lead_identity(pending.request)


def held(values: Iterable[Any]) -> Iterator[Pending]:
    """The requests a key's state holds, each pack (bytes, `PackByLeadShard`) opened in turn."""
    for value in values:
        if isinstance(value, bytes):
            yield from unpack(value)
        else:
            yield value


def flush_order(batch: Iterable[Pending]) -> list[Pending]:
    """A flush as the engine applies it: in event time, ties in arrival order.

    Requests of different people and leads can meet on one record (an email one of them appends is
    how an anonymous visitor's request finds the contact; a person's company-less request creates
    the lead their next request must not duplicate under another), so the order between them is
    the order of their events. The engine keeps it: requests that may touch the same records share
    a group, which runs in this order.
    """
    return sorted(batch, key=lambda p: event_order(p.request))


class ApplyBatches(beam.DoFn):
    """Buffers requests per shard (bag state) and applies them in event time (`flush_order`).

    Bounded input holds every request of a key (arriving in packs, `held`) until the end of input (the
    window-end timer), then applies them all in event time, handed to the engine in flushes of up to
    ``batch_size``: requests arrive in no particular order, so a flush applied before the input ended
    could come before an earlier event of the same lead still on its way. Splitting the input into
    flushes of any size ends where one flush does. The flushes join one engine stream (`EngineFeed`) and
    the writer submits the next while earlier ones write: outcomes are emitted as each request's group
    ends, and a flush waits only until the earlier ones are down to the stream's lookahead. Input
    whose requests carry no event time (``in_event_time=False``: a snapshot's rows) has no order to wait
    for: it flushes on size, in arrival order, and holds no more than the flushes in hand.

    Unbounded input flushes on size, after ``flush_seconds`` and at window end, each flush in event
    time, and settles each before going on (`ApplyBatchesStreaming`). Beam serialises the
    processing of one key, and each DoFn instance has one engine stream that every flush joins, so
    requests that may touch the same lead are applied in order across flushes and shards. Either way
    every outcome is emitted before the bundle finishes.

    Every batch leaves state through `_flush`, which clears all of it. The state specs are declared
    here once; the streaming writer adds only its processing-time timer. Bounded input declares none:
    Beam's DirectRunner counts a DoFn with one as unsupported by its in-process batch runner.
    """

    BUFFER = BagStateSpec("buffer", PickleCoder())
    COUNT = CombiningValueStateSpec("count", combine_fn=CountCombineFn())
    WINDOW_END = TimerSpec("window_end", TimeDomain.WATERMARK)
    OVERLAP = True  # submit the next flush while earlier ones write (bounded input)
    # Bounded input looks a whole flush up at once: a new lead carries the new people of its own
    # lookup batch nested in its one create, and a first sync's people of one company are spread
    # over its whole input (docs/DESIGN.md "Nested creation"; figures in bench/RESULTS.md).
    WHOLE_FLUSH_LOOKUPS = True

    def __init__(
        self,
        spec: EngineSpec,
        batch_size: int,
        flush_seconds: float,
        dry_run: bool,
        in_event_time: bool = True,
        run_id: str | None = None,
        audit_log: str | None = None,
    ):
        self._spec = spec
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._dry_run = dry_run
        self._in_event_time = in_event_time
        self._run_id = run_id
        self._audit_log = audit_log

    def setup(self) -> None:
        # One loop and one HTTP client per DoFn instance, never one per element or per flush.
        # The loop runs in its own thread; every coroutine of this instance runs there.
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="close-writer", daemon=True)
        self._loop_thread.start()
        self._client, self._engine = self._spec.build()
        lookups = {"batch_size": self._batch_size} if self.WHOLE_FLUSH_LOOKUPS else {}
        self._feed = EngineFeed(self._loop, self._engine, dry_run=self._dry_run, **lookups)
        self._aside = EventIdsAside()
        self._record_setup()
        self._client_metrics = ClientMetrics(self._client)
        self._sent = metrics.counter(metrics.REQUESTS_SENT)
        self._batch_sizes = metrics.distribution(metrics.BATCH_SIZE)

    def teardown(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is None:
            return
        if loop.is_running():
            self._feed.close()
            asyncio.run_coroutine_threadsafe(self._client.aclose(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            self._loop_thread.join()
        loop.close()
        self._flush_ledger()

    def _flush_ledger(self) -> None:
        # Object stores get the ids created so far as one object; local ledgers are written as they come.
        ledger = getattr(self._engine, "ledger", None)
        if ledger is not None:
            ledger.flush()

    def process(
        self,
        item: tuple[int, Any],  # a Pending, or a pack of them (bounded input in event time)
        buffer=beam.DoFn.StateParam(BUFFER),
        count=beam.DoFn.StateParam(COUNT),
        window_end=beam.DoFn.TimerParam(WINDOW_END),
        w=beam.DoFn.WindowParam,
    ):
        if self._in_event_time:
            # Nothing is applied before the input ends: a later flush could hold an earlier event.
            self._hold(item, buffer, count, window_end, w)
            return
        yield from self._buffer(item, buffer, count, window_end, w)

    def _hold(self, item, buffer, count, window_end, w) -> int:
        """Adds the request to the key's state (the first one sets the window-end timer); returns
        how many the state holds."""
        buffer.add(item[1])
        count.add(1)
        n = count.read()
        if n == 1:
            window_end.set(w.max_timestamp())
        return n

    def _buffer(self, item, buffer, count, window_end, w, flush_timer=None) -> Iterable[Any]:
        if self._hold(item, buffer, count, window_end, w) >= self._batch_size:
            yield from self._flush(buffer, count, flush_timer)
        elif self._feed.outstanding:
            yield from self._emit(self._feed.ready())

    @on_timer(WINDOW_END)
    def on_window_end(self, buffer=beam.DoFn.StateParam(BUFFER), count=beam.DoFn.StateParam(COUNT)):
        yield from self._flush(buffer, count)
        yield from self._emit(self._feed.wait_until(0))

    def finish_bundle(self) -> Iterable[Any]:
        # What is still writing belongs to this bundle: its requests left the state already.
        for out in self._emit(self._feed.wait_until(0)):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, in_global_window(out.value))
            else:
                yield in_global_window(out)
        self._flush_ledger()

    def _flush(self, buffer, count, flush_timer=None) -> Iterable[Any]:
        """Takes what the state holds out of it (buffer, count and, when given, the flush timer all
        cleared) and hands it to the engine stream in event time, in flushes of up to batch_size
        (longer where a cut would split a collapsed request's span); yields the outcomes that are in."""
        # Each request without its event ids, put aside as its pack is opened (`EventIdsAside`).
        ordered = flush_order(map(self._aside.put, held(buffer.read())))
        buffer.clear()
        count.clear()
        if flush_timer is not None:
            flush_timer.clear()
        # Each flush is let go once handed on, so a request's memory goes with its outcome.
        flushes = deque(batches(ordered, self._batch_size, lambda p: p.request))
        del ordered
        while flushes:
            batch = flushes.popleft()
            self._batch_sizes.update(len(batch))
            self._sent.inc(len(batch))
            # Earlier flushes go on writing; keep no more than the stream's lookahead of them ahead.
            yield from self._emit(self._feed.wait_until(MAX_CONCURRENCY))
            self._feed.submit(batch)
            del batch  # the stream lets go of each request as it settles; so does this frame
        yield from self._emit(self._feed.wait_until(0) if not self.OVERLAP else self._feed.ready())

    def _record_setup(self) -> None:
        """The audit log is written here, as writes happen (see docs/DESIGN.md, "Durable records"): a
        merge's or deletion's line before it is sent (the engine calls `_intend`), each request's
        line before its outcome is emitted. Once an append of this run failed, the engine sends no
        more writes and the writer stops the job (`_record`)."""
        from closecrm.journal import Journal, Recording

        self._recording = Recording.of(self._run_id)
        self._audit = Journal(self._audit_log, self._run_id, BEAM_OBJECTS) if self._audit_log else None
        self._recorded: set[int] = set()  # ids of the Pendings whose line the engine's hook appended
        if not self._dry_run:
            audited = self._audit is not None
            self._engine.record(
                self._intend if audited else None, self._recording, self._ended if audited else None
            )

    def _intend(self, request: UpsertRequest, change: dict[str, Any]) -> None:
        assert self._audit is not None
        self._audit.append([intent_line(self._aside.request(request), change, self._run_id)])

    def _ended(self, done: list[tuple[UpsertRequest, Outcome]]) -> None:
        """A group's requests ended in the engine: their lines now, not when their lookup batch is
        handed back (engine thread; the line of a request not found here is appended at `_record`)."""
        assert self._audit is not None
        found = [(pending, outcome) for request, outcome in done if (pending := self._feed.item_for(request))]
        lines = [audit_line((self._aside.whole(pending), outcome), self._run_id) for pending, outcome in found]
        self._audit.append(lines, sync=any(outcome.changes for _, outcome in found))
        self._recorded.update(id(pending) for pending, _ in found)

    def _record(self, pending: Pending, whole: Pending, outcome: Outcome) -> None:
        """The request's audit line on disk (fsync-ed when it changed something), before its outcome
        goes on; then raises the run's first failed append (`JournalError`), if any, which ends the job.
        ``pending`` as the engine had it, ``whole`` with its event ids back."""
        if id(pending) in self._recorded:
            self._recorded.discard(id(pending))
        elif self._audit is not None:
            line = audit_line((whole, outcome), self._run_id, self._dry_run)
            self._audit.append([line], sync=bool(outcome.changes) and not self._dry_run)
        if self._recording.failure is not None:
            raise self._recording.failure

    def _emit(self, pairs: Iterable[tuple[Pending, Outcome]]) -> Iterable[Any]:
        emitted = False
        for pending, outcome in pairs:
            emitted = True
            whole = self._aside.take(pending)
            self._record(pending, whole, outcome)
            yield from emit_outcome(whole, outcome)
        if emitted:
            self._client_metrics.report()


class ApplyBatchesStreaming(ApplyBatches):
    """Unbounded input also flushes a partial batch after flush_seconds of processing time, and
    settles each flush before going on (small flushes, whose outcomes should not wait for the next)."""

    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)
    OVERLAP = False
    WHOLE_FLUSH_LOOKUPS = False  # small flushes, each settled before the next: the engine's own batches

    def process(
        self,
        item: tuple[int, Pending],
        buffer=beam.DoFn.StateParam(ApplyBatches.BUFFER),
        count=beam.DoFn.StateParam(ApplyBatches.COUNT),
        window_end=beam.DoFn.TimerParam(ApplyBatches.WINDOW_END),
        flush=beam.DoFn.TimerParam(FLUSH),
        w=beam.DoFn.WindowParam,
    ):
        if count.read() == 0:
            flush.set(Timestamp.now() + Duration(seconds=self._flush_seconds))
        yield from self._buffer(item, buffer, count, window_end, w, flush)

    @on_timer(FLUSH)
    def on_flush(
        self,
        buffer=beam.DoFn.StateParam(ApplyBatches.BUFFER),
        count=beam.DoFn.StateParam(ApplyBatches.COUNT),
    ):
        yield from self._flush(buffer, count)


class UpsertToClose(beam.PTransform):
    """Pending → (Pending, Outcome). Tagged outputs: DEAD (DeadLetter), LEDGER.

    ``in_event_time``: bounded input is applied in event time across flushes (held to the end of
    input); False for requests without event times, which bounded input then flushes as they come.

    With ``audit_log`` the writer appends the audit log itself, as it writes (`ApplyBatches._record_setup`).
    """

    def __init__(
        self,
        spec: EngineSpec,
        *,
        shards: int,
        batch_size: int,
        flush_seconds: float,
        streaming: bool,
        dry_run: bool,
        in_event_time: bool = True,
        run_id: str | None = None,
        audit_log: str | None = None,
    ) -> None:
        super().__init__()
        self._spec = spec
        self._shards = shards
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._streaming = streaming
        self._dry_run = dry_run
        self._in_event_time = in_event_time
        self._run_id = run_id
        self._audit_log = audit_log

    def expand(self, pendings):
        kind = ApplyBatchesStreaming if self._streaming else ApplyBatches
        held_whole = not self._streaming and self._in_event_time  # held until the input ends: packed
        writer = kind(
            self._spec,
            self._batch_size,
            self._flush_seconds,
            self._dry_run,
            in_event_time=self._in_event_time,
            run_id=self._run_id,
            audit_log=self._audit_log,
        )
        windowed = pendings | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        if held_whole:
            keyed = windowed | "PackByLeadShard" >> beam.ParDo(
                PackShards(lead_of, self._shards, REQUESTS_PER_PACK)
            ).with_output_types(tuple[int, bytes])
        else:
            keyed = windowed | "KeyByLeadShard" >> key_by_lead_shard(self._shards)
        return keyed | "ApplyBatches" >> beam.ParDo(writer).with_outputs(DEAD, LEDGER, main="outcomes")
