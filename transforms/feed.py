"""One long-lived engine stream per writer: fed batches from Beam's thread, its outcomes read back there."""

from __future__ import annotations

import asyncio
import queue
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from closecrm.engine import STREAM_BATCH, UpsertEngine
from closecrm.engine.ordering.spans import batches
from closecrm.model import Outcome

Pair = tuple[Any, Outcome]  # (what was submitted: anything with a ``request``, e.g. a Pending; its outcome)


def engine_failure(exc: Exception) -> Outcome:
    """The outcome of a request the engine crashed on: it becomes a dead letter, not a dead job."""
    return Outcome(kind="failed", reason=f"engine_error:{type(exc).__name__}", error_body=str(exc))


def _outcome_at(outs: Sequence[Outcome | None], k: int) -> Outcome:
    """The outcome a batch yielded at ``k``; a failure where it yielded none (it must, for every item it
    did not settle), so no item waits for ever."""
    out = outs[k] if k < len(outs) else None
    return out if out is not None else engine_failure(RuntimeError("the engine gave this request no outcome"))


class EngineFeed:
    """Feeds ``UpsertEngine.upsert_stream`` from another thread, so a writer's flushes join one stream.

    A stream per flush would idle the write budget while one flush's last lookup batches finish
    and the next flush searches its first. Here the stream outlives flushes: ``submit`` queues
    items (cut into lookup batches) and returns at once; outcomes come back paired with their items
    as each request's group ends (the engine's ``settled``), through ``ready`` (what is done now)
    and ``wait_until`` (block until at most ``n`` items are outstanding). An item is let go once
    its outcome is handed back, so a lookup batch as long as a whole bounded input holds only what
    is still under way. The stream keeps its per-lead ordering across everything submitted, as it
    does across one flush.

    ``submit``, ``ready`` and ``wait_until`` are for one thread (Beam's); the stream runs on
    ``loop``, which another thread runs. If the engine raises, every outstanding item fails with
    ``engine_error:<type>`` and the next ``submit`` starts a new stream. With ``dry_run`` the
    stream plans instead of writing (the engine's dry run).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: UpsertEngine,
        batch_size: int = STREAM_BATCH,
        *,
        dry_run: bool = False,
    ):
        self._loop = loop
        self._engine = engine
        self._batch_size = max(1, batch_size)
        self._dry_run = dry_run
        self._results: queue.SimpleQueue[tuple[Sequence[Any], list[Outcome]]] = queue.SimpleQueue()
        self._outstanding = 0  # items submitted whose outcomes were not handed back yet (Beam's thread)
        self._input: asyncio.Queue[list[Any] | None] | None = None  # chunks, then None; loop thread only
        self._task: asyncio.Task[None] | None = None  # loop thread only
        self._items: dict[int, Any] = {}  # id of a request under way -> the item that carried it

    def item_for(self, request: Any) -> Any | None:
        """The submitted item whose request this is, while it is under way (any thread)."""
        return self._items.get(id(request))

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def submit(self, items: Sequence[Any]) -> None:
        """Queue items for the stream; each item's ``request`` is the UpsertRequest to apply. Lookup
        batches are cut where no collapsed request's span falls on both sides (closecrm.engine.ordering.spans)."""
        for chunk in batches(items, self._batch_size, lambda item: item.request):
            self._loop.call_soon_threadsafe(self._accept, chunk)
        self._outstanding += len(items)

    def ready(self) -> Iterator[Pair]:
        """Outcomes that are in, without waiting."""
        while True:
            try:
                chunk, outs = self._results.get_nowait()
            except queue.Empty:
                return
            yield from self._handed_back(chunk, outs)

    def wait_until(self, n: int) -> Iterator[Pair]:
        """Outcomes as they come in, until at most `n` items are outstanding."""
        while self._outstanding > n:
            chunk, outs = self._results.get()
            yield from self._handed_back(chunk, outs)

    def close(self) -> None:
        """End the stream (after what was submitted); call from a thread other than the loop's."""
        done = asyncio.run_coroutine_threadsafe(self._end(), self._loop)
        done.result()

    def _handed_back(self, chunk: Sequence[Any], outs: list[Outcome]) -> Iterator[Pair]:
        self._outstanding -= len(chunk)
        for item in chunk:
            self._items.pop(id(item.request), None)
        yield from zip(chunk, outs, strict=True)

    # ------------------------------------------------------------ loop thread

    def _accept(self, chunk: list[Any]) -> None:
        if self._task is None or self._task.done():
            self._input = asyncio.Queue()
            self._task = self._loop.create_task(self._run(self._input))
        assert self._input is not None
        self._input.put_nowait(chunk)

    async def _end(self) -> None:
        if self._task is not None and not self._task.done() and self._input is not None:
            self._input.put_nowait(None)
            await self._task

    async def _run(self, inbox: asyncio.Queue[list[Any] | None]) -> None:
        # The chunks handed to the stream, in order (the engine numbers its batches so): an item is
        # replaced by None once its outcome is handed back.
        taken: deque[list[Any]] = deque()
        first = 0  # the stream's number of the chunk at the head of ``taken``

        async def source() -> AsyncIterator[list[Any]]:
            while True:
                chunk = await inbox.get()
                if chunk is None:
                    return
                taken.append(chunk)
                self._items.update((id(item.request), item) for item in chunk)
                yield [item.request for item in chunk]
                del chunk

        def settled(number: int, index: int, outcome: Outcome) -> None:
            chunk = taken[number - first]
            item, chunk[index] = chunk[index], None
            self._results.put(([item], [outcome]))

        # A dry run goes through the same stream, so it plans what the real run would write.
        stream = self._engine.upsert_stream(source(), dry_run=self._dry_run, settled=settled)
        try:
            async for outs in stream:
                # Each outcome was settled as its group ended; one the engine yields here instead
                # (a stream that does not settle) is paired by position.
                chunk = taken.popleft()
                first += 1
                left = [k for k, item in enumerate(chunk) if item is not None]
                if left:
                    self._results.put(([chunk[k] for k in left], [_outcome_at(outs, k) for k in left]))
        except Exception as exc:  # noqa: BLE001 - an engine crash must become dead letters, not a hung writer
            failed = engine_failure(exc)
            while not inbox.empty():
                chunk = inbox.get_nowait()
                if chunk is not None:
                    taken.append(chunk)
            while taken:
                chunk = [item for item in taken.popleft() if item is not None]
                if chunk:
                    self._results.put((chunk, [failed] * len(chunk)))
