"""ShardedFold: bounded input folded per key in bulk, a few shards of keys at a time.

The local runner keeps a stage's whole output in memory, and a shuffled element costs more CPU than most
of the work done on it. So rather than one element per item through a GroupByKey on the item's own key,
each bundle packs its items per shard of keys (one compressed pickled list per shard and bundle), a
GroupByKey brings a shard's packs together, and one call of ``fold`` gets every item of the shard. The
fold does the per-key work itself (a dict by key), which is what a GroupByKey per key would have given.

For bounded input in the global window only: packs are emitted at the end of a bundle, in the global window.

On the local in-process runner one Python process runs every stage, on one core. There a fold can
also be handed to worker processes (``processes``): a shard's packs are compressed bytes, and a fold's
outputs are few, so a shard crosses to another core for much less than folding it costs.
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import pickle
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms import metrics

PACK_LIMIT = 20_000  # items a bundle holds before it ships its packs
# Packed bytes below which a shard is folded where it is: a worker process costs a second or two of
# start-up, worth it only for shards of thousands of items (about 50 bytes each packed).
AWAY_MIN_BYTES = 64 * 1024
# Items a packing bundle sees before it starts the fold's workers: an input that large folds away.
WARM_ITEMS = 20_000


def stable_shard(key: str, shards: int) -> int:
    """The shard of ``key`` among ``shards``: the same in every process and run (unlike ``hash``), for
    any str, lone surrogates included."""
    return zlib.crc32(key.encode("utf-8", errors="surrogatepass")) % shards


def pack(items: Sequence[Any]) -> bytes:
    return zlib.compress(pickle.dumps(list(items), protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpack(blob: bytes) -> list[Any]:
    return pickle.loads(zlib.decompress(blob))


def in_global_window(value: Any) -> WindowedValue:
    """What finish_bundle must emit (it has no element whose window to reuse)."""
    return WindowedValue(value, GlobalWindow().max_timestamp(), (GlobalWindow(),))


class PackShards(beam.DoFn):
    """item → (shard, packed [item (or ``value(item)``), ...]) per shard and bundle, shipped at the end
    of the bundle or every ``pack_limit`` items. ``warm``: the fold workers to start once a bundle has
    packed `WARM_ITEMS` items, so that they start up while the input is still being read."""

    def __init__(
        self,
        key: Callable[[Any], str],
        shards: int,
        pack_limit: int,
        value: Callable[[Any], Any] | None = None,
        warm: FoldWorkers | None = None,
    ) -> None:
        self._key = key
        self._value = value
        self._shards = shards
        self._limit = pack_limit
        self._warm = warm

    def start_bundle(self) -> None:
        self._packs: dict[int, list[Any]] = {}
        self._held = 0
        self._seen = 0

    def process(self, item: Any) -> Iterator[tuple[int, bytes]]:
        kept = item if self._value is None else self._value(item)
        self._packs.setdefault(stable_shard(self._key(item), self._shards), []).append(kept)
        self._held += 1
        if self._held >= self._limit:
            yield from self._ship()
        if self._warm is not None:
            self._seen += 1
            if self._seen == WARM_ITEMS:  # an input this large will fold away: start the workers now
                self._warm.pool()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for shard_pack in self._ship():
            yield in_global_window(shard_pack)

    def _ship(self) -> list[tuple[int, bytes]]:
        packs, self._packs, self._held = self._packs, {}, 0
        return [(shard, pack(items)) for shard, items in sorted(packs.items())]


def fold_packs(
    fold: Callable[..., Iterable[Any]], packs: Iterable[bytes], side: Mapping[str, Any]
) -> tuple[list[Any], dict[str, int]]:
    """``fold`` of every item of ``packs``, in a worker process: its outputs, and the counts it made
    (`metrics.collected`), which the DoFn that sent it hands on to Beam."""
    with metrics.collected() as counts:
        outputs = list(fold((x for blob in packs for x in unpack(blob)), **side))
    return outputs, counts


def _start_worker(threshold: tuple[int, int, int], module: str | None) -> None:
    """A fold worker's start: the fold's module imported, and what exists then left out of garbage
    collection, which runs as often as in the process that started the worker (the local runner
    collects rarely, and leaves out what exists before the run). Otherwise every full collection of
    the worker would walk Beam's modules."""
    if module:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)


# This process's fold worker pools (`FoldWorkers.pool`), by (processes, the fold's module).
_POOLS: dict[tuple[int, str | None], ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


@dataclass(frozen=True)
class FoldWorkers:
    """The worker processes of one fold: the packing stage may start them early (`PackShards`), the
    folding stage (`_FoldShard`) uses them and ends them."""

    processes: int
    module: str | None  # the fold's module, imported by each worker at its start

    @classmethod
    def of(cls, processes: int, fold: Any) -> FoldWorkers:
        module = getattr(fold, "__module__", None) or getattr(type(fold), "__module__", None)
        return cls(processes, module)

    def pool(self) -> ProcessPoolExecutor:
        """The pool, started at the first call: its workers are spawned now (one no-op task each), so
        their start-up overlaps this process's work."""
        key = (self.processes, self.module)
        with _POOLS_LOCK:
            pool = _POOLS.get(key)
            if pool is None:
                # spawn: this process runs Beam's threads, which a fork would copy mid-flight
                pool = _POOLS[key] = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(gc.get_threshold(), self.module),
                )
                for _ in range(self.processes):
                    pool.submit(int)
            return pool

    def end(self) -> None:
        """Ends the workers, once every result is in (they exit on their own)."""
        with _POOLS_LOCK:
            pool = _POOLS.pop((self.processes, self.module), None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class _FoldShard(beam.DoFn):
    """(shard, packs) → whatever ``fold`` yields for every item of the shard (in pack order); side
    inputs are passed to ``fold`` by name.

    With ``processes``, shards of at least ``away_min_bytes`` packed are also folded in that many worker
    processes (`FoldWorkers`: started by the packing stage or at the first such shard, ended with the
    bundle), up to two queued on each, while this one folds the next shard itself. Their outputs are
    emitted as they come back, the last ones at the bundle's end; their counts are handed to Beam
    here. The workers collect garbage as this process does (`_start_worker`).
    """

    def __init__(
        self, fold: Callable[..., Iterable[Any]], processes: int = 0, away_min_bytes: int = AWAY_MIN_BYTES
    ) -> None:
        self._fold = fold
        self._workers = FoldWorkers.of(processes, fold)
        self._away_min_bytes = away_min_bytes

    def start_bundle(self) -> None:
        self._away: list[Future] = []

    def process(self, item: tuple[int, Iterable[bytes]], **side):  # noqa: ANN003 - Beam reads kwargs hints as types
        _, packs = item
        processes = self._workers.processes
        if processes:
            yield from self._returned(wait=False)
            # Two shards queued per worker: one finished waits for this process to finish its own
            # shard before it is told of the next.
            if len(self._away) < 2 * processes:
                blobs = list(packs)
                if sum(map(len, blobs)) >= self._away_min_bytes:
                    self._away.append(self._workers.pool().submit(fold_packs, self._fold, blobs, side))
                    return
                packs = blobs
        yield from self._fold((x for blob in packs for x in unpack(blob)), **side)

    def finish_bundle(self) -> Iterator[Any]:
        try:
            for out in self._returned(wait=True):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, in_global_window(out.value))
                else:
                    yield in_global_window(out)
        finally:
            self._workers.end()

    def teardown(self) -> None:
        self._workers.end()

    def _returned(self, wait: bool) -> Iterator[Any]:
        """The outputs of the shards folded away that have come back (all of them, with ``wait``)."""
        still: list[Future] = []
        for future in self._away:
            if wait or future.done():
                outputs, counts = future.result()
                metrics.count(counts)
                yield from outputs
            else:
                still.append(future)
        self._away = still


class ShardedFold(beam.PTransform):
    """items → what ``fold`` yields, called once per shard with every item whose ``key`` is in the shard.
    The items may come as one PCollection or several (a tuple), as to a Flatten.

    ``key(item)``: the str that places an item (the items of one key always meet in one call of ``fold``);
    ``fold(items)``: an iterable of outputs (TaggedOutput for ``outputs``); ``shards``: how many calls of
    ``fold`` share the input (and how many workers can); ``pack_limit``: items a bundle holds before it
    ships them. With ``outputs``, the result is a DoOutputsTuple whose main output is called ``main``.
    ``side``: side inputs (``beam.pvalue.AsDict(...)`` and the like), passed to ``fold`` by name.
    ``value(item)``: what of an item is packed and folded (the item itself by default).
    ``processes``: worker processes that fold shards of at least ``away_min_bytes`` packed (absent:
    `AWAY_MIN_BYTES`) beside this one (`_FoldShard`); 0 folds every shard where it arrives.
    Roles must pickle (module-level functions, or instances of module-level classes).
    """

    def __init__(
        self,
        key: Callable[[Any], str],
        fold: Callable[[Iterable[Any]], Iterable[Any]],
        *,
        shards: int,
        pack_limit: int = PACK_LIMIT,
        outputs: Sequence[str] = (),
        main: str = "main",
        side: Mapping[str, Any] | None = None,
        value: Callable[[Any], Any] | None = None,
        processes: int = 0,
        away_min_bytes: int | None = None,
    ) -> None:
        super().__init__()
        if shards < 1 or pack_limit < 1 or processes < 0:
            raise ValueError("ShardedFold needs shards >= 1, pack_limit >= 1 and processes >= 0")
        self._key = key
        self._fold = fold
        self._shards = shards
        self._pack_limit = pack_limit
        self._outputs = tuple(outputs)
        self._main = main
        self._side = dict(side or {})
        self._value = value
        self._processes = processes
        self._away_min_bytes = AWAY_MIN_BYTES if away_min_bytes is None else away_min_bytes

    def expand(self, items):
        # Several inputs are packed each where it is made, and only their packs flattened: a flatten
        # of the items themselves would ship every item through one more stage on the local runner.
        inputs = tuple(items) if isinstance(items, tuple | list) else (items,)
        warm = FoldWorkers.of(self._processes, self._fold) if self._processes else None
        packs = [
            pcoll
            | (f"Pack{i}" if len(inputs) > 1 else "Pack")
            >> beam.ParDo(PackShards(self._key, self._shards, self._pack_limit, self._value, warm)).with_output_types(
                tuple[int, bytes]
            )
            for i, pcoll in enumerate(inputs)
        ]
        packed = packs[0] if len(packs) == 1 else tuple(packs) | "Packs" >> beam.Flatten()
        folded = beam.ParDo(_FoldShard(self._fold, self._processes, self._away_min_bytes), **self._side)
        if self._outputs:
            folded = folded.with_outputs(*self._outputs, main=self._main)
        return packed | "GroupShards" >> beam.GroupByKey() | "Fold" >> folded
