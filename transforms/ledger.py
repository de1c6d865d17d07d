"""Per-event accounting: every event read ends as applied, skipped or dead-lettered, exactly once."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms import metrics

LEDGER = "ledger"  # tag of the (event_id, status) side outputs of every stage
APPLIED, SKIPPED, DEAD = "applied", "skipped", "dead_lettered"
# An event that produced several requests ends with its most serious status.
_RANK = {SKIPPED: 0, APPLIED: 1, DEAD: 2}

# Bounded input folds the entries in a few shards of {event_id: status}, not one element per event.
LEDGER_SHARDS = 16
_MAX_BUFFERED = 100_000  # entries a bundle holds before it emits its partial folds


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=_RANK.__getitem__)


def _fold_into(folded: dict[str, str], event_id: str, status: str) -> None:
    """Keeps the most serious status seen for an event."""
    before = folded.get(event_id)
    if before is None or _RANK[status] > _RANK[before]:
        folded[event_id] = status


def ledger_shard(event_id: str) -> int:
    return zlib.crc32(event_id.encode("utf-8", errors="surrogatepass")) % LEDGER_SHARDS


class _CountFinal(beam.DoFn):
    def __init__(self) -> None:
        self._counters = {
            APPLIED: metrics.counter(metrics.EVENTS_APPLIED),
            SKIPPED: metrics.counter(metrics.EVENTS_SKIPPED),
            DEAD: metrics.counter(metrics.EVENTS_DEAD_LETTERED),
        }

    def process(self, item: tuple[str, str]):
        self._counters[item[1]].inc()
        yield item


class _FoldInBundle(beam.DoFn):
    """(event_id, status) → (shard, {event_id: worst status}) per bundle: the per-event fold, done in
    bulk before the shuffle (what combiner lifting would do, without one shuffled element per event)."""

    def start_bundle(self) -> None:
        self._folded: dict[str, str] = {}

    def process(self, item: tuple[str, str]):
        _fold_into(self._folded, item[0], item[1])
        if len(self._folded) >= _MAX_BUFFERED:
            yield from self._parts()

    def finish_bundle(self):
        for shard, part in self._parts():
            yield WindowedValue((shard, part), GlobalWindow().max_timestamp(), (GlobalWindow(),))

    def _parts(self) -> Iterable[tuple[int, dict[str, str]]]:
        parts: dict[int, dict[str, str]] = {}
        for event_id, status in self._folded.items():
            parts.setdefault(ledger_shard(event_id), {})[event_id] = status
        self._folded = {}
        return sorted(parts.items())


class _CountShard(beam.DoFn):
    """All partial folds of one shard → one final status per event → the status counters."""

    def __init__(self) -> None:
        self._counters = {
            APPLIED: metrics.counter(metrics.EVENTS_APPLIED),
            SKIPPED: metrics.counter(metrics.EVENTS_SKIPPED),
            DEAD: metrics.counter(metrics.EVENTS_DEAD_LETTERED),
        }

    def process(self, item: tuple[int, Iterable[dict[str, str]]]):
        _, parts = item
        folded: dict[str, str] = {}
        for part in parts:
            if not folded:
                folded = dict(part)
                continue
            for event_id, status in part.items():
                _fold_into(folded, event_id, status)
        counts = Counter(folded.values())
        for status, n in sorted(counts.items()):
            self._counters[status].inc(n)
            yield (status, n)


class SettleLedger(beam.PTransform):
    """Folds (event_id, status) entries into one final status per event and counts them.

    Bounded input folds per event first, so an event mapped by several mappings is
    counted once; the fold runs in bulk (per bundle, then per shard of event ids) and the
    output is (status, count) per shard. Unbounded input counts entries as they come (a
    global-window fold would never fire); there an event matched by k mappings counts k
    times, and the output is the (event_id, status) entries.
    """

    def __init__(self, streaming: bool) -> None:
        super().__init__()
        self._streaming = streaming

    def expand(self, entries):
        if self._streaming:
            return entries | "Count" >> beam.ParDo(_CountFinal())
        return (
            entries
            | "FoldInBundle" >> beam.ParDo(_FoldInBundle())
            | "GroupShards" >> beam.GroupByKey()
            | "Count" >> beam.ParDo(_CountShard())
        )
