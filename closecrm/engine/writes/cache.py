"""Bounded memory of what this engine created or found: lookup key -> ids, and id -> last known record."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

K = TypeVar("K")
V = TypeVar("V")

MAX_IDS_PER_KEY = 10


class LRU(Generic[K, V]):
    """A dict that forgets the least recently used entry beyond `size`."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


class Remembered(Protocol):
    """What outlives one engine: ids recorded by earlier runs and other writers (the created-id ledger)."""

    def ids(self, key: str) -> tuple[str, ...]: ...

    def forget(self, key: str, record_id: str) -> None: ...


class IdCache:
    """Lookup key (`company:…`, `user:…`, `email:…`) -> ids of the records it led to, newest last.

    Search lags behind writes; this cache is what lets the engine find a record it created a
    moment ago. Entries are hints: the engine confirms them with a GET by id, which does not lag.
    A key this cache does not hold is looked up in ``remembered`` (what other engines created),
    once; what is found there joins the cache.
    """

    def __init__(self, size: int, remembered: Remembered | None = None) -> None:
        self._lru: LRU[str, tuple[str, ...]] = LRU(size)
        self.remembered = remembered

    def ids(self, key: str) -> tuple[str, ...]:
        ids = self._lru.get(key)
        if ids is None and self.remembered is not None:
            ids = self.remembered.ids(key)[-MAX_IDS_PER_KEY:]
            if ids:
                self._lru.put(key, ids)
        return ids or ()

    def add(self, key: str, record_id: str) -> None:
        ids = self.ids(key)  # what is remembered for the key comes first: it is older than this
        if record_id in ids:
            return
        self._lru.put(key, (*ids, record_id)[-MAX_IDS_PER_KEY:])

    def add_all(self, keys: Iterable[str], record_id: str) -> None:
        for key in keys:
            self.add(key, record_id)

    def forget(self, record_id: str, keys: Iterable[str]) -> None:
        for key in keys:
            ids = self._lru.get(key)
            if ids and record_id in ids:
                rest = tuple(i for i in ids if i != record_id)
                if rest:
                    self._lru.put(key, rest)
                else:
                    self._lru.pop(key)
            if self.remembered is not None:
                self.remembered.forget(key, record_id)

    def __len__(self) -> int:
        return len(self._lru)


class RecordCache:
    """id -> the newest copy of a record this engine read by id or got back from a write."""

    def __init__(self, size: int) -> None:
        self._lru: LRU[str, dict[str, Any]] = LRU(size)

    def get(self, record_id: str) -> dict[str, Any] | None:
        return self._lru.get(record_id)

    def put(self, record: dict[str, Any]) -> None:
        self._lru.put(record["id"], record)

    def forget(self, record_id: str) -> None:
        self._lru.pop(record_id)
