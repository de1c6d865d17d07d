"""The accounting that lets a local streaming run commit a Kafka offset only once the record's outcome is
settled: what each stage says about the Kafka records it handles, and the per-partition book that turns
it into the offset to commit.

Every record ends in exactly one of these ways, each reported on the ``TALLY`` output of the stage
that knows it: skipped at parse (opted out), at dedupe (a redelivered copy) or at mapping (no mapping
matched): settled there; dead-lettered at parse or mapping: settled once its letter is appended
(read back from the appended line); mapped to k requests: the mapping stage expects k outcomes for the
event, the collapse reports how many requests merging removed, and each request's final outcome (or
its appended letter) counts one. The reader reports, per call, the offsets it claimed and which of
them are records (a tombstone, a transaction marker or a compacted gap is settled by being no record).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

TALLY = "kafka_tally"  # tag of the accounting outputs of every stage, on local streaming Kafka runs


@dataclass(frozen=True)
class KafkaClaim:
    """The offsets one reader call claimed on a partition: ``[start, stop)``, of which ``records`` were
    handed on; ``first`` is where this run's read of the partition began."""

    topic: str
    partition: int
    first: int
    start: int
    stop: int
    records: tuple[int, ...]


def is_kafka(origin: Any) -> bool:
    return origin is not None and getattr(origin, "kind", None) == "kafka" and origin.partition is not None


def claimed(claim: KafkaClaim) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput(
        TALLY, ("claim", claim.topic, claim.partition, claim.first, claim.start, claim.stop, claim.records)
    )


def settled(origin: Any) -> beam.pvalue.TaggedOutput:
    """A record whose outcome is final (and durable) at this stage."""
    return beam.pvalue.TaggedOutput(TALLY, ("settled", origin.name, origin.partition, origin.position))


def expected(event_id: str, origin: Any, requests: int) -> beam.pvalue.TaggedOutput:
    """An event of this record became ``requests`` requests, each of which must end."""
    return beam.pvalue.TaggedOutput(
        TALLY, ("expect", event_id, origin.name, origin.partition, origin.position, requests)
    )


def merged(event_id: str, change: int) -> beam.pvalue.TaggedOutput:
    """The collapse turned ``-change`` more requests of the event into ones it already had."""
    return beam.pvalue.TaggedOutput(TALLY, ("delta", event_id, change))


def ended(event_id: str) -> tuple[str, str]:
    """One request of the event has its final outcome."""
    return ("done", event_id)


def from_letter_line(line: str) -> Iterator[tuple[Any, ...]]:
    """What an appended dead letter settles: the Kafka record it names (parse, map), or one request of
    each of its events (upsert)."""
    try:
        letter = json.loads(line)
    except (ValueError, TypeError):
        return
    if not isinstance(letter, dict):
        return
    if letter.get("stage") == "upsert":
        for event_id in letter.get("event_ids") or ():
            yield ended(str(event_id))
        return
    source = letter.get("source")
    if isinstance(source, dict) and "kafka_topic" in source and source.get("offset") is not None:
        yield ("settled", source["kafka_topic"], source.get("partition"), source["offset"])


@dataclass
class EventTally:
    """What one messageId's Kafka records still wait for: the records, and outcomes expected less
    those seen (several records share a messageId when dedupe is off or its TTL has passed)."""

    origins: list[tuple[str, int, int]] = field(default_factory=list)
    balance: int = 0
    done: int = 0

    def add(self, signal: tuple[Any, ...]) -> None:
        kind = signal[0]
        if kind == "expect":
            _, _, topic, partition, offset, requests = signal
            self.origins.append((topic, partition, offset))
            self.balance += requests
        elif kind == "delta":
            self.balance += signal[2]
        elif kind == "done":
            self.balance -= 1
            self.done += 1

    @property
    def complete(self) -> bool:
        # Merges only lower the count: with a merge not yet reported the balance stays above zero.
        return bool(self.origins) and self.done > 0 and self.balance == 0


@dataclass
class OffsetBook:
    """One partition: the ranges the reader claimed and the records settled; the offset to commit is the
    first record not settled, after a run of claimed ranges from where the read began."""

    topic: str = ""
    partition: int = 0
    first: int | None = None
    committed: int | None = None
    ranges: dict[int, tuple[int, frozenset[int]]] = field(default_factory=dict)  # start -> (stop, records)
    settled: set[int] = field(default_factory=set)
    flush_set: bool = False

    def claim(self, first: int, start: int, stop: int, records: Iterable[int]) -> None:
        if self.first is None:
            self.first = first
        floor = self.committed if self.committed is not None else self.first
        if stop > floor and stop > start:
            self.ranges[start] = (stop, frozenset(records))

    def settle(self, offset: int) -> None:
        floor = self.committed if self.committed is not None else self.first
        if floor is None or offset >= floor:
            self.settled.add(offset)

    def point(self) -> int | None:
        """The offset to commit now: every record before it is settled."""
        at = self.committed if self.committed is not None else self.first
        if at is None:
            return None
        while at in self.ranges:
            stop, records = self.ranges[at]
            waiting = [o for o in records if o >= at and o not in self.settled]
            if waiting:
                return min(waiting)
            at = stop
        return at

    def advanced(self) -> bool:
        point = self.point()
        return point is not None and point != (self.committed if self.committed is not None else self.first)

    def commit(self, point: int) -> None:
        """Drops what lies before ``point``: state stays bounded by the records in flight."""
        self.committed = point
        kept: dict[int, tuple[int, frozenset[int]]] = {}
        for start, (stop, records) in self.ranges.items():
            if stop <= point:
                continue
            if start < point:
                start, records = point, frozenset(o for o in records if o >= point)
            kept[start] = (stop, records)
        self.ranges = kept
        self.settled = {o for o in self.settled if o >= point}
