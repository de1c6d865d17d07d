"""Per-event accounting: every event read ends as applied, skipped or dead-lettered, exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

import apache_beam as beam

from transforms import metrics
from transforms.sharded import ShardedFold

LEDGER = "ledger"  # tag of the (event_id, status) side outputs of every stage
APPLIED, SKIPPED, DEAD = "applied", "skipped", "dead_lettered"
# An event that produced several requests ends with its most serious status.
_RANK = {SKIPPED: 0, APPLIED: 1, DEAD: 2}

# Bounded input folds the entries in a few shards of event ids, not one shuffled element per event.
LEDGER_SHARDS = 16
_PACK_LIMIT = 100_000  # entries a bundle holds before it ships them
_COUNTERS = {
    APPLIED: metrics.EVENTS_APPLIED,
    SKIPPED: metrics.EVENTS_SKIPPED,
    DEAD: metrics.EVENTS_DEAD_LETTERED,
}


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=_RANK.__getitem__)


def _fold_into(folded: dict[str, str], event_id: str, status: str) -> None:
    """Keeps the most serious status seen for an event."""
    before = folded.get(event_id)
    if before is None or _RANK[status] > _RANK[before]:
        folded[event_id] = status


class _CountFinal(beam.DoFn):
    def __init__(self) -> None:
        self._counters = {status: metrics.counter(name) for status, name in _COUNTERS.items()}

    def process(self, item: tuple[str, str]):
        self._counters[item[1]].inc()
        yield item


def _event_id(entry: tuple[str, str]) -> str:
    return entry[0]


def count_final_statuses(entries: Iterable[tuple[str, str]]) -> Iterator[tuple[str, int]]:
    """All entries of some events → (status, number of events whose final status it is), counted."""
    folded: dict[str, str] = {}
    for event_id, status in entries:
        _fold_into(folded, event_id, status)
    for status, n in sorted(Counter(folded.values()).items()):
        metrics.counter(_COUNTERS[status]).inc(n)
        yield (status, n)


class SettleLedger(beam.PTransform):
    """Folds (event_id, status) entries (one PCollection, or a tuple of them) into one final status per
    event and counts them.

    Bounded input folds per event first, so an event mapped by several mappings is
    counted once; the fold runs in bulk, per shard of event ids (``ShardedFold``), and the
    output is (status, count) per shard. Unbounded input counts entries as they come (a
    global-window fold would never fire); there an event matched by k mappings counts k
    times, and the output is the (event_id, status) entries.
    """

    def __init__(self, streaming: bool) -> None:
        super().__init__()
        self._streaming = streaming

    def expand(self, entries):
        if self._streaming:
            if isinstance(entries, tuple | list):
                entries = tuple(entries) | "AllLedger" >> beam.Flatten()
            return entries | "Count" >> beam.ParDo(_CountFinal())
        # Each stage's entries (one per event the writer ends: the most of any output) are packed
        # where they are made (`ShardedFold` over several inputs).
        return entries | "Count" >> ShardedFold(
            _event_id, count_final_statuses, shards=LEDGER_SHARDS, pack_limit=_PACK_LIMIT
        )
