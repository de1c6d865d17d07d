"""Per-event accounting: every event read ends as applied, skipped or dead-lettered, exactly once."""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam

from transforms import metrics

LEDGER = "ledger"  # tag of the (event_id, status) side outputs of every stage
APPLIED, SKIPPED, DEAD = "applied", "skipped", "dead_lettered"
# An event that produced several requests ends with its most serious status.
_RANK = {SKIPPED: 0, APPLIED: 1, DEAD: 2}


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=_RANK.__getitem__)


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


class SettleLedger(beam.PTransform):
    """Folds (event_id, status) entries into one final status per event and counts them.

    Bounded input folds per event first, so an event mapped by several mappings is
    counted once. Unbounded input counts entries as they come (a global-window fold
    would never fire); there an event matched by k mappings counts k times.
    """

    def __init__(self, streaming: bool) -> None:
        super().__init__()
        self._streaming = streaming

    def expand(self, entries):
        if not self._streaming:
            entries = entries | "WorstPerEvent" >> beam.CombinePerKey(worst)
        return entries | "Count" >> beam.ParDo(_CountFinal())
