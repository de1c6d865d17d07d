"""CollapsePerPerson: per person and window, fold redundant requests into the fewest equivalent ones."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder, StrUtf8Coder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from closecrm.events.collapse import collapse, creates_anew
from closecrm.model import Outcome, Received, UpsertRequest, flat_read, read_of
from transforms import metrics
from transforms.kafka_tally import TALLY, merged
from transforms.sharded import ShardedFold, pack, unpack

# Dead letters carry the original events; a collapsed request keeps at most this many of them
# (all of its event ids are kept), so a chatty person cannot blow up the writer's buffer.
MAX_EVENTS_CARRIED = 20
SUPPRESSED = "suppressed"


@dataclass(frozen=True)
class Pending:
    """A request on its way to Close, with the original events it came from."""

    person: str
    request: UpsertRequest
    events: Sequence[Any] = ()  # a tuple, or PackedEvents (bounded input)


class PackedEvents(Sequence):
    """The events a `Pending` carries, kept compressed until read.

    Only a dead letter reads them, yet a batch run holds every Pending at once in the local runner's
    shuffles and the writer's buffer, where decoded dicts would cost far more memory than the requests.
    Reads like the tuple it stands for (len, index, iteration, equality).
    """

    __slots__ = ("_blob", "_count")

    def __init__(self, blob: bytes, count: int) -> None:
        self._blob = blob
        self._count = count

    @classmethod
    def of(cls, events: Sequence[Any]) -> PackedEvents:
        # A `Received` packs as a plain tuple (`flat_read`); the events that are not (rows) as they are.
        flat = [flat_read(e.payload, e.origin) if isinstance(e, Received) else e for e in events]
        return cls(pack(flat), len(events))

    def _items(self) -> tuple[Any, ...]:
        if not self._count:
            return ()
        return tuple(Received(*read_of(e)) if isinstance(e, tuple) else e for e in unpack(self._blob))

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # noqa: ANN001, ANN204
        return self._items()[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedEvents):
            return self._count == other._count and (
                self._blob == other._blob or self._items() == other._items()
            )
        if isinstance(other, tuple):
            return self._items() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like the tuple of dicts it stands for

    def __repr__(self) -> str:
        return f"PackedEvents({self._items()!r})"

    def __reduce__(self):  # noqa: ANN204
        return (PackedEvents, (self._blob, self._count))


class _CollapseFn(beam.CombineFn):
    """Accumulates (request, event) pairs; extraction runs the engine-compatible collapse. With
    ``tally``, extraction also says how many requests of each event merging removed (`Tallied`).
    ``by_user_id``: the destination finds contacts by user id (`closecrm.events.collapse.collapse`)."""

    def __init__(self, tally: bool = False, by_user_id: bool = False) -> None:
        self._tally = tally
        self._by_user_id = by_user_id

    def create_accumulator(self) -> list[tuple[UpsertRequest, Any]]:
        return []

    def get_accumulator_coder(self):  # noqa: ANN201
        # One pickle per accumulator: the default coder pickles each request on its own, which is slower.
        return PickleCoder()

    def add_input(self, acc, item):
        acc.append(item)
        return acc

    def merge_accumulators(self, accs):
        merged: list[tuple[UpsertRequest, Any]] = []
        for acc in accs:
            merged.extend(acc)
        return merged

    def extract_output(self, acc) -> Any:
        try:
            out = _collapsed(acc, self._by_user_id)
        except Exception:  # noqa: BLE001 - this stage has no dead-letter output: the writer gets each
            # request as it came, which Close ends up holding the same, and accounts for each of them.
            out = [(request, (event,)) for request, event in acc]
        return Tallied(out, _merges(acc, out)) if self._tally else out


@dataclass(frozen=True)
class Tallied:
    """A collapse's requests, and per event id the change in how many requests carry it (merges: < 0)."""

    collapsed: list[tuple[UpsertRequest, tuple[Any, ...]]]
    changes: dict[str, int]


def _merges(acc: Sequence[tuple[UpsertRequest, Any]], out: Sequence[tuple[UpsertRequest, Any]]) -> dict[str, int]:
    change: dict[str, int] = {}
    for sign, pairs in ((-1, acc), (1, out)):
        for request, _ in pairs:
            for event_id in set(request.event_ids or ()):
                change[event_id] = change.get(event_id, 0) + sign
    return {event_id: n for event_id, n in change.items() if n}


def _collapsed(
    acc: list[tuple[UpsertRequest, Any]], by_user_id: bool
) -> list[tuple[UpsertRequest, tuple[Any, ...]]]:
    events_by_id: dict[str, Any] = {}
    for request, event in acc:
        for event_id in request.event_ids:
            events_by_id.setdefault(event_id, event)
    out = []
    for request in collapse((r for r, _ in acc), by_user_id):
        carried = tuple(events_by_id[i] for i in request.event_ids[:MAX_EVENTS_CARRIED] if i in events_by_id)
        out.append((request, carried))
    return out


# Bounded input collapses in bulk (ShardedFold): persons are spread over this many shards, not one
# shuffled element and accumulator per request.
COLLAPSE_SHARDS = 32


def _person(item: tuple[str, tuple[UpsertRequest, Any]]) -> str:
    return item[0]


def collapse_persons(
    items: Iterable[tuple[str, tuple[UpsertRequest, Any]]], by_user_id: bool = False
) -> Iterator[tuple[str, Any]]:
    """(person, (request, event)) of some persons → (person, collapsed) per person: what `_CollapseFn` gives
    per key."""
    per_person: dict[str, list[tuple[UpsertRequest, Any]]] = {}
    for person, pair in items:
        acc = per_person.get(person)
        if acc is None:
            per_person[person] = acc = []
        acc.append(pair)
    combine = _CollapseFn(by_user_id=by_user_id)
    for person, acc in per_person.items():
        yield (person, combine.extract_output(acc))


class _Explode(beam.DoFn):
    def __init__(self, packed: bool = False) -> None:
        self._packed = packed
        self._collapsed = metrics.counter(metrics.REQUESTS_COLLAPSED)

    def process(self, item):
        person, collapsed = item
        if isinstance(collapsed, Tallied):  # a Kafka record waits for one outcome per request of its event
            for event_id, change in collapsed.changes.items():
                yield merged(event_id, change)
            collapsed = collapsed.collapsed
        folded = sum(len(r.event_ids or ()) for r, _ in collapsed)
        self._collapsed.inc(max(0, folded - len(collapsed)))
        for request, events in collapsed:
            yield Pending(person=person, request=request, events=self._carried(events))

    def _carried(self, events: Sequence[Any]) -> Sequence[Any]:
        if not self._packed:
            return events
        try:
            return PackedEvents.of(events)
        except Exception:  # noqa: BLE001 - the events only feed a dead letter; the request still goes
            return ()


def _windowing(kind: str, seconds: float) -> beam.WindowInto:
    """Event-time windows (fixed, session), or one global window (batch)."""
    if kind == "session":
        return beam.WindowInto(window.Sessions(seconds))
    if kind == "fixed":
        return beam.WindowInto(window.FixedWindows(seconds))
    return beam.WindowInto(window.GlobalWindows())


def _now() -> Timestamp:
    """Processing time, as the runner's real-time timers count it (a test replaces it by its clock)."""
    return Timestamp.now()


class _CollapsePanes(beam.DoFn):
    """Processing-time panes per person: the first (request, event) of a pane starts a ``seconds`` timer,
    and the timer emits what arrived since, collapsed, then clears the person's state.

    What ``Repeatedly(AfterProcessingTime(seconds))`` with discarding panes on the global window gives,
    in state that is empty between panes. The trigger form would keep, per person, one pane-index entry
    for every pane it ever fired (Beam's trigger driver appends a count to a list in the global window,
    which never closes), and the local runner copies that list on every bundle that touches the person.
    """

    BUFFER = BagStateSpec("buffer", PickleCoder())  # (request, event) pairs of the open pane
    PERSON = ReadModifyWriteStateSpec("person", StrUtf8Coder())  # set while a pane is open
    FIRE = TimerSpec("fire", TimeDomain.REAL_TIME)

    def __init__(self, seconds: float, tally: bool = False, by_user_id: bool = False) -> None:
        self._seconds = max(1, round(seconds))
        self._tally = tally
        self._by_user_id = by_user_id

    def process(
        self,
        item: tuple[str, tuple[UpsertRequest, Any]],
        buffer=beam.DoFn.StateParam(BUFFER),
        person=beam.DoFn.StateParam(PERSON),
        fire=beam.DoFn.TimerParam(FIRE),
    ):
        if person.read() is None:
            person.write(item[0])
            fire.set(_now() + Duration(seconds=self._seconds))
        buffer.add(item[1])

    @on_timer(FIRE)
    def emit(self, buffer=beam.DoFn.StateParam(BUFFER), person=beam.DoFn.StateParam(PERSON)):
        who = person.read()
        acc = list(buffer.read())
        buffer.clear()
        person.clear()
        if who is not None and acc:
            yield (who, _CollapseFn(self._tally, self._by_user_id).extract_output(acc))


class CollapsePerPerson(beam.PTransform):
    """(person, (request, event)) → Pending, one per run of equivalent requests per window.

    ``by_user_id``: the destination finds contacts by user id (its user-id custom field is configured).
    """

    def __init__(
        self,
        streaming: bool,
        window_kind: str,
        window_seconds: float,
        tally: bool = False,
        by_user_id: bool = False,
    ) -> None:
        super().__init__()
        self._by_user_id = by_user_id
        # With ``tally`` (streaming only), the output is a pair: Pending, and the TALLY of merges.
        self._tally = tally and streaming
        # A global window never closes on unbounded input, so streaming fires processing-time panes.
        self._kind = window_kind if streaming else "global"
        if streaming and self._kind == "global":
            self._kind = "processing"
        self._seconds = window_seconds

    def expand(self, keyed):
        if self._kind == "global":
            # Bounded input (already in the global window): the same fold per person, in bulk.
            fold = functools.partial(collapse_persons, by_user_id=self._by_user_id)
            collapsed = keyed | "Collapse" >> ShardedFold(_person, fold, shards=COLLAPSE_SHARDS)
        elif self._kind == "processing":
            # Unbounded input, processing-time panes: a stateful DoFn whose state empties at each pane.
            collapsed = (
                keyed
                | "Window" >> beam.WindowInto(window.GlobalWindows())
                | "Collapse" >> beam.ParDo(_CollapsePanes(self._seconds, self._tally, self._by_user_id))
            )
        else:
            collapsed = (
                keyed
                | "Window" >> _windowing(self._kind, self._seconds)
                | "Collapse" >> beam.CombinePerKey(_CollapseFn(self._tally, self._by_user_id))
            )
        explode = beam.ParDo(_Explode(packed=self._kind == "global"))
        if self._tally:
            exploded = collapsed | "Explode" >> explode.with_outputs(TALLY, main="pending")
            return exploded.pending, exploded[TALLY]
        return collapsed | "Explode" >> explode


def _content_digest(request: UpsertRequest) -> str:
    return hashlib.sha256(request.fingerprint().encode()).hexdigest()[:16]


class _SuppressIdentical(beam.DoFn):
    """Per person: a request identical to the last one let through costs nothing (unbounded input).

    The state is one short digest per person, not a global cache, and a timer clears it
    ``ttl_seconds`` after the person's last request.
    """

    LAST = ReadModifyWriteStateSpec("last", StrUtf8Coder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._suppressed = metrics.counter(metrics.REQUESTS_SUPPRESSED)

    def process(self, item, last=beam.DoFn.StateParam(LAST), expiry=beam.DoFn.TimerParam(EXPIRY)):
        yield from self._gate(item, last)
        expiry.set(Timestamp.now() + Duration(seconds=self._ttl))

    @on_timer(EXPIRY)
    def expire(self, last=beam.DoFn.StateParam(LAST)):
        last.clear()

    def _gate(self, item, last):
        _, pending = item
        try:
            digest = _content_digest(pending.request)
            # A repeat that creates anew creates another contact; an alias does what the two people's
            # records say when it runs, which other events may have changed since.
            repeatable = not creates_anew(pending.request) and pending.request.alias_previous_id is None
        except Exception:  # noqa: BLE001 - what cannot be compared is sent, never refused
            yield pending
            return
        if repeatable and last.read() == digest:
            self._suppressed.inc()
            outcome = Outcome(kind="unchanged", branch="identical_to_last_applied")
            yield beam.pvalue.TaggedOutput(SUPPRESSED, (pending, outcome))
            return
        last.write(digest)
        yield pending


class SuppressIdentical(beam.PTransform):
    """Unbounded input. Main output: Pending to send. Tagged SUPPRESSED: (Pending, unchanged Outcome).

    Bounded input has no such stage: collapsing each person's whole input merges identical requests
    already (they share a collapse key), and a keyed stage there sees a person's requests in no set
    order, so "the last one let through" need not be the one before in time.
    """

    def __init__(self, ttl_seconds: float = 24 * 3600.0) -> None:
        super().__init__()
        self._ttl = ttl_seconds

    def expand(self, pendings):
        return (
            pendings
            # State must outlive the collapse windows, so it lives in the global window.
            | "Rewindow" >> beam.WindowInto(window.GlobalWindows())
            | "KeyByPerson" >> beam.Map(lambda p: (p.person, p)).with_output_types(tuple[str, Any])
            | "Suppress" >> beam.ParDo(_SuppressIdentical(self._ttl)).with_outputs(SUPPRESSED, main="pending")
        )
