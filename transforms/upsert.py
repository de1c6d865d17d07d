"""UpsertToClose: a stateful writer keyed by lead-identity shard that applies batches through the engine."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterable
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
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from closecrm.credentials import ApiKey, EngineSpec, KeySource  # noqa: F401 - callers import them from here
from closecrm.engine import MAX_CONCURRENCY
from closecrm.model import DeadLetter, Outcome, UpsertRequest
from transforms import metrics
from transforms.collapse import Pending
from transforms.deadletter import DEAD
from transforms.feed import EngineFeed
from transforms.ledger import APPLIED, LEDGER, SKIPPED
from transforms.ledger import DEAD as LEDGER_DEAD


def lead_identity(request: UpsertRequest) -> str:
    """What decides which lead a request may touch: company id, else user id, else email."""
    if request.lead_company_id:
        return "company:" + request.lead_company_id
    if request.contact_user_id:
        return "user:" + request.contact_user_id
    return "email:" + (request.contact_email or "").lower()


def shard_of(identity: str, shards: int) -> int:
    return int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "big") % shards


def ledger_status(outcome: Outcome) -> str:
    if outcome.kind == "failed":
        return LEDGER_DEAD
    if outcome.kind == "skipped":
        return SKIPPED
    return APPLIED


def letter_for(pending: Pending, outcome: Outcome) -> DeadLetter:
    events = list(pending.events)
    return DeadLetter(
        stage="upsert",
        reason=outcome.reason or "failed",
        event=events[0] if len(events) == 1 else events,
        request=pending.request.to_json(),
        error={"http_status": outcome.http_status, "body": outcome.error_body, "outcome": outcome.label},
        attempts=outcome.attempts,
        event_ids=pending.request.event_ids,
    )


class _ApplyBatches(beam.DoFn):
    """Buffers requests per shard (bag state) and flushes on size, on a timer, or at window end.

    Beam serialises the processing of one key, and each DoFn instance has one engine stream
    (``EngineFeed``) that every flush joins, so requests that may touch the same lead are applied
    in order across flushes and shards. A flush is sorted by lead identity (stable), so a lead's
    requests sit together in the engine's lookup batches: in a first sync a lookahead of shuffled
    people was mostly lead creations (one per company), and contact_write idled until the leads
    existed. The order of different people in a flush is whatever the shuffle gave, so sorting it
    changes no outcome.

    On bounded input a flush joins the stream and the writer goes on buffering the next while it
    writes: outcomes are emitted as each lookup batch finishes, and a flush waits only until the
    earlier ones are down to the stream's lookahead. Streaming input settles each flush before going
    on. Either way every outcome is emitted before the bundle finishes.
    """

    BUFFER = BagStateSpec("buffer", PickleCoder())
    COUNT = CombiningValueStateSpec("count", combine_fn=CountCombineFn())
    WINDOW_END = TimerSpec("window_end", TimeDomain.WATERMARK)
    OVERLAP = True  # keep buffering while a flush writes (bounded input)

    def __init__(self, spec: EngineSpec, batch_size: int, flush_seconds: float, dry_run: bool):
        self._spec = spec
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._dry_run = dry_run

    def setup(self) -> None:
        # One loop and one HTTP client per DoFn instance (HARD-PARTS 7), never one per element.
        # The loop runs in its own thread; every coroutine of this instance runs there.
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="close-writer", daemon=True)
        self._loop_thread.start()
        self._client, self._engine = self._spec.build()
        self._feed = EngineFeed(self._loop, self._engine, dry_run=self._dry_run)
        self._seen_counts: dict[str, int] = {}
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
        item: tuple[int, Pending],
        buffer=beam.DoFn.StateParam(BUFFER),
        count=beam.DoFn.StateParam(COUNT),
        window_end=beam.DoFn.TimerParam(WINDOW_END),
        w=beam.DoFn.WindowParam,
    ):
        yield from self._buffer(item, buffer, count, window_end, w)

    def _buffer(self, item, buffer, count, window_end, w) -> Iterable[Any]:
        buffer.add(item[1])
        count.add(1)
        n = count.read()
        if n == 1:
            window_end.set(w.max_timestamp())
        if n >= self._batch_size:
            yield from self._flush(buffer, count)
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
                yield beam.pvalue.TaggedOutput(out.tag, _in_global_window(out.value))
            else:
                yield _in_global_window(out)
        self._flush_ledger()

    def _flush(self, buffer, count) -> Iterable[Any]:
        batch: list[Pending] = list(buffer.read())
        buffer.clear()
        count.clear()
        if batch:
            batch.sort(key=lambda p: lead_identity(p.request))
            self._batch_sizes.update(len(batch))
            self._sent.inc(len(batch))
            # Earlier flushes go on writing; keep no more than the stream's lookahead of them ahead.
            yield from self._emit(self._feed.wait_until(MAX_CONCURRENCY))
            self._feed.submit(batch)
        yield from self._emit(self._feed.wait_until(0) if not self.OVERLAP else self._feed.ready())

    def _emit(self, pairs: Iterable[tuple[Pending, Outcome]]) -> Iterable[Any]:
        emitted = False
        for pending, outcome in pairs:
            emitted = True
            yield from emit_outcome(pending, outcome)
        if emitted:
            self._report_client_counters()

    def _report_client_counters(self) -> None:
        for name, value in client_counters(self._client).items():
            delta = value - self._seen_counts.get(name, 0)
            if delta:
                metrics.counter(name).inc(int(delta))
            self._seen_counts[name] = value
        # This DoFn owns its client, so it may drain the client's latency samples into Beam.
        samples = getattr(self._client, "latencies_ms", None)
        latency = metrics.distribution(metrics.LATENCY_MS)
        while samples:
            latency.update(int(samples.popleft()))


class _ApplyBatchesStreaming(_ApplyBatches):
    """Unbounded input also flushes a partial batch after flush_seconds of processing time, and
    settles each flush before going on (small flushes, whose outcomes should not wait for the next)."""

    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)
    OVERLAP = False

    def process(
        self,
        item: tuple[int, Pending],
        buffer=beam.DoFn.StateParam(_ApplyBatches.BUFFER),
        count=beam.DoFn.StateParam(_ApplyBatches.COUNT),
        window_end=beam.DoFn.TimerParam(_ApplyBatches.WINDOW_END),
        flush=beam.DoFn.TimerParam(FLUSH),
        w=beam.DoFn.WindowParam,
    ):
        if count.read() == 0:
            flush.set(Timestamp.now() + Duration(seconds=self._flush_seconds))
        yield from self._buffer(item, buffer, count, window_end, w)

    @on_timer(FLUSH)
    def on_flush(
        self,
        buffer=beam.DoFn.StateParam(_ApplyBatches.BUFFER),
        count=beam.DoFn.StateParam(_ApplyBatches.COUNT),
    ):
        yield from self._flush(buffer, count)


def _in_global_window(value: Any) -> WindowedValue:
    return WindowedValue(value, GlobalWindow().max_timestamp(), [GlobalWindow()])


def client_counters(client: Any) -> dict[str, float]:
    """The client's running totals under the job's metric names."""
    out: dict[str, float] = {}
    for group, n in dict(getattr(client, "calls_by_group", {}) or {}).items():
        out[metrics.CALLS_PREFIX + group] = n
    out[metrics.API_429] = getattr(client, "rate_limited", 0)
    out[metrics.API_RETRIES] = getattr(client, "retries", 0)
    out[metrics.THROTTLED_SECONDS] = int(getattr(client, "throttled_seconds", 0.0))
    return out


def emit_outcome(pending: Pending, outcome: Outcome) -> Iterable[Any]:
    metrics.counter(metrics.OUTCOME_PREFIX + outcome.kind).inc()
    status = ledger_status(outcome)
    for event_id in pending.request.event_ids:
        yield beam.pvalue.TaggedOutput(LEDGER, (event_id, status))
    if outcome.kind == "failed":
        yield beam.pvalue.TaggedOutput(DEAD, letter_for(pending, outcome))
    yield (pending, outcome)


class _EmitSuppressed(beam.DoFn):
    def process(self, item):
        yield from emit_outcome(*item)


class UpsertToClose(beam.PTransform):
    """Pending → (Pending, Outcome). Tagged outputs: DEAD (DeadLetter), LEDGER."""

    def __init__(
        self,
        spec: EngineSpec,
        *,
        shards: int,
        batch_size: int,
        flush_seconds: float,
        streaming: bool,
        dry_run: bool,
    ) -> None:
        super().__init__()
        self._spec = spec
        self._shards = shards
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._streaming = streaming
        self._dry_run = dry_run

    def expand(self, pendings):
        shards = self._shards
        kind = _ApplyBatchesStreaming if self._streaming else _ApplyBatches
        writer = kind(self._spec, self._batch_size, self._flush_seconds, self._dry_run)
        return (
            pendings
            | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
            | "KeyByLeadShard"
            >> beam.Map(lambda p: (shard_of(lead_identity(p.request), shards), p)).with_output_types(tuple[int, Any])
            | "ApplyBatches" >> beam.ParDo(writer).with_outputs(DEAD, LEDGER, main="outcomes")
        )


class SettleSuppressed(beam.PTransform):
    """Suppressed requests end like applied ones: an `unchanged` outcome, no API call."""

    def expand(self, suppressed):
        return suppressed | "Emit" >> beam.ParDo(_EmitSuppressed()).with_outputs(DEAD, LEDGER, main="outcomes")
