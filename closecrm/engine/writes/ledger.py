"""The created-id ledger: which records this job created (or gave a lookup key), kept on disk for a day.

Close's search lags behind writes by seconds. Within one engine the IdCache bridges that; across
engines it cannot: a second run of the same file, a restarted streaming job, or a local streaming
runner that builds a new writer for every bundle would search, miss what was just created, and
create it again. The ledger is what they share: every writer appends ``lookup key -> record id``
for each record it creates (and each key it writes onto an existing record), and every engine
starts by reading what all writers appended. Entries are hints, confirmed with a GET by id (which
does not lag) before anything is decided on them.

Layout: ``<root>/created-ids/<hash of the Close URL>/<started>-<writer>.ids``, JSON lines of
``{"k": <hash of the key>, "t": <key type>, "id": <record id>, "kind": "lead"|"contact", "at": <unix time>}``.
Keys are stored hashed (no emails or user ids in clear), never anything about the API key.
The ledger also remembers what the job took away, for the engines whose searches still show it:
a key a write moved off a record (``{..., "left": true}``: an alias re-keyed a contact) and a record
deleted or merged away (``{"id": ..., "kind": ..., "at": ..., "removed": true}``, with a ``left``
line for each key it carried). A search hit that such an entry concerns is read by id before the
engine acts on it (docs/DESIGN.md, "Stale search hits").
One file per writer process, append-only, started afresh every ``ROLL_SECONDS``, so a file's
entries all lie within ``ROLL_SECONDS`` of the time in its name and whole files expire. Readers
take the union of all files, skip torn lines, ignore entries older than ``TTL_SECONDS`` and keep
at most ``MAX_ENTRIES`` (the newest). Paths with a scheme (``gs://…``) go through the
object store given (closecrm/storage.py); objects there cannot be appended to, so a writer buffers and writes one object per
``flush``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from closecrm.storage import LOCAL_OBJECTS, ObjectStore, has_scheme

log = logging.getLogger(__name__)

TTL_SECONDS = 24 * 3600.0  # far beyond any search lag (seconds), short enough to stay small
ROLL_SECONDS = 3600.0
MAX_ENTRIES = 200_000
MAX_IDS_PER_KEY = 10
FLUSH_ENTRIES = 500  # object stores: entries buffered before a flush writes them
FLUSH_SECONDS = 10.0
SUFFIX = ".ids"
# One encoder for every line: json.dumps with separators builds a new one per call.
_LINE = json.JSONEncoder(separators=(",", ":"))
_TEXT = json.encoder.encode_basestring_ascii  # how that encoder writes a str (ensure_ascii)
_NAME = re.compile(r"^(\d+)-[A-Za-z0-9_-]+\.ids$")


def _line(entry: dict[str, Any]) -> str:
    """``entry`` as one line of JSON, exactly as ``_LINE`` writes it. Entries hold text, flags and a
    finite time, which are written here directly: the encoder's set-up costs more than such a line."""
    parts = []
    for key, value in entry.items():
        kind = type(value)
        if kind is str:
            text = _TEXT(value)
        elif kind is bool:
            text = "true" if value else "false"
        elif (kind is float and math.isfinite(value)) or kind is int:
            text = kind.__repr__(value)
        else:
            return _LINE.encode(entry) + "\n"
        parts.append(f"{_TEXT(key)}:{text}")
    return "{" + ",".join(parts) + "}\n"


def key_digest(key: str) -> bytes:
    """The stored form of a lookup key: a hash, so the ledger holds no emails or user ids in clear."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).digest()


def namespace(close_url: str) -> str:
    """A directory name per Close API base URL (never anything about the API key)."""
    url = close_url.strip().rstrip("/").lower()
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def user_cache_root() -> str:
    """``$XDG_CACHE_HOME/close-sync``, else ``~/.cache/close-sync``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "close-sync")


def ledger_dir(root: str, close_url: str) -> str:
    """Where the ledger for ``close_url`` lives under ``root``."""
    return _join(_join(root, "created-ids"), namespace(close_url))


def _join(a: str, b: str) -> str:
    return a.rstrip("/") + "/" + b if has_scheme(a) else os.path.join(a, b)


class CreatedIdLedger:
    """One ledger directory as this process knows it: everything read from it, and this process's own file.

    Use ``shared(directory)``: one instance per directory and process, whatever the number of
    engines (a local streaming runner builds a writer per bundle; each one ``refresh``-es, which
    reads only what was appended since). Thread-safe. Never raises on I/O: a ledger that cannot
    be read or written logs one warning and the job goes on without it (duplicates under search
    lag become possible again, nothing else changes).
    """

    _instances: dict[str, CreatedIdLedger] = {}
    _instances_lock = threading.Lock()

    def __init__(
        self,
        directory: str,
        *,
        ttl_seconds: float = TTL_SECONDS,
        max_entries: int = MAX_ENTRIES,
        roll_seconds: float = ROLL_SECONDS,
        clock: Callable[[], float] = time.time,
        object_store: bool | None = None,
        objects: ObjectStore = LOCAL_OBJECTS,
    ) -> None:
        self.directory = directory
        self.ttl = ttl_seconds
        self.max_entries = max(1, max_entries)
        self.roll = roll_seconds
        self._clock = clock
        # Objects (written whole, once per flush) on a URL, or when asked to act as on one.
        self._objects = has_scheme(directory) if object_store is None else object_store
        self._store = objects
        self._lock = threading.RLock()
        # digest -> {record id: when it was last recorded} (newest last); every entry in order of
        # arrival, for expiry and the bound (an entry superseded by a newer one for the same pair is
        # skipped when it comes off)
        self._ids: dict[bytes, dict[str, float]] = {}
        self._order: deque[tuple[float, bytes, str]] = deque()
        self._offsets: dict[str, int] = {}  # file -> bytes read (local), or objects read (object store)
        self._writer = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._file: str | None = None
        self._file_started = 0.0
        self._handle = None
        self._seq = 0
        self._buffer: list[str] = []
        self._buffered_since = 0.0
        self._pruned_at = float("-inf")
        self._broken_read = False
        self._broken_write = False
        # What the job took away: (digest, record id) -> when the key left the record; record id ->
        # when it was deleted or merged away; both in order of arrival, for expiry and the bound.
        self._left: dict[tuple[bytes, str], float] = {}
        self._removed: dict[str, float] = {}
        self._taken_order: deque[tuple[float, bytes | None, str]] = deque()

    @classmethod
    def shared(cls, directory: str, objects: ObjectStore = LOCAL_OBJECTS) -> CreatedIdLedger:
        with cls._instances_lock:
            found = cls._instances.get(directory)
            if found is None:
                found = cls._instances[directory] = cls(directory, objects=objects)
            return found

    @classmethod
    def close_all(cls) -> None:
        """Write out and close every ledger of this process; the next ``shared`` reads from disk again."""
        with cls._instances_lock:
            ledgers, cls._instances = list(cls._instances.values()), {}
        for ledger in ledgers:
            ledger.close()

    # ------------------------------------------------------------- reading

    def refresh(self) -> int:
        """Read what writers appended since the last refresh; returns the entries now known."""
        with self._lock:
            try:
                names = self._list()
                if self._clock() - self._pruned_at >= self.roll:  # at start, then hourly
                    self._pruned_at = self._clock()
                    names = self._prune_files(names)
                    listed = set(names)
                    self._offsets = {n: o for n, o in self._offsets.items() if n in listed}
                for name in names:
                    self._read(name)
            except Exception as exc:  # noqa: BLE001 - the ledger is an optimisation: never fail the job
                if not self._broken_read:
                    self._broken_read = True
                    log.warning("created-id ledger %s: cannot read it (%s)", self.directory, type(exc).__name__)
            self._expire()
            return len(self)

    def ids(self, key: str) -> tuple[str, ...]:
        """Record ids remembered for this lookup key, newest last (expired ones left out)."""
        with self._lock:
            self._expire()
            ids = self._ids.get(key_digest(key))
            if not ids:
                return ()
            # Files are read one after the other, so the expiry queue is only nearly in time order.
            horizon = self._clock() - self.ttl
            return tuple(record_id for record_id, at in ids.items() if at >= horizon)

    def forget(self, key: str, record_id: str) -> None:
        """This record no longer carries the key (or no longer exists): stop offering it for it."""
        with self._lock:
            digest = key_digest(key)
            ids = self._ids.get(digest)
            if ids and ids.pop(record_id, None) is not None and not ids:
                del self._ids[digest]

    def took_anything(self) -> bool:
        """Does the ledger hold any key the job moved off a record, or any record it removed? Without
        one, no search hit needs a second look, and `left_lately`/`removed_lately` need not hash."""
        return bool(self._left or self._removed)

    def left_lately(self, key: str, record_id: str) -> bool:
        """Did a write of the job move this key off this record (or remove the record) within the TTL?"""
        with self._lock:
            self._expire()
            at = self._left.get((key_digest(key), record_id))
            return at is not None and at >= self._clock() - self.ttl

    def removed_lately(self, record_id: str) -> bool:
        """Did the job delete this record, or merge it away, within the TTL?"""
        with self._lock:
            self._expire()
            at = self._removed.get(record_id)
            return at is not None and at >= self._clock() - self.ttl

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())

    def _list(self) -> list[str]:
        if self._objects:
            return self._store.list(_join(self.directory, "*" + SUFFIX))
        try:
            return sorted(str(p) for p in Path(self.directory).glob("*" + SUFFIX))
        except FileNotFoundError:
            return []

    def _prune_files(self, names: list[str]) -> list[str]:
        """Delete files whose every entry has expired (their name says when they were started)."""
        keep = []
        now = self._clock()
        for name in names:
            started = _started(name)
            if started is not None and started + self.roll + self.ttl < now and name != self._file:
                try:
                    if self._objects:
                        self._store.delete(name)
                    else:
                        os.remove(name)
                except Exception:  # noqa: BLE001 - another reader deleted it first, or no right to
                    pass
                continue
            keep.append(name)
        return keep

    def _read(self, name: str) -> None:
        started = _started(name)
        if started is not None and started + self.roll + self.ttl < self._clock():
            return
        if self._objects:
            if name in self._offsets:
                return  # objects are written whole, once
            data = self._store.read(name)
            self._offsets[name] = len(data)
            self._take(data)
            return
        offset = self._offsets.get(name, 0)
        try:
            with open(name, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            self._offsets.pop(name, None)
            return
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        if end:
            self._offsets[name] = offset + end
            self._take(data[:end])

    def _take(self, data: bytes) -> None:
        horizon = self._clock() - self.ttl
        for line in data.splitlines():
            try:
                entry = json.loads(line)
                at = float(entry["at"])
                record_id = str(entry["id"])
                if entry.get("removed") is True:
                    if at >= horizon:
                        self._add_taken(at, None, record_id)
                    continue
                digest = bytes.fromhex(entry["k"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a torn or foreign line
            if at < horizon:
                continue
            if entry.get("left") is True:
                self._add_taken(at, digest, record_id)
            else:
                self._add(at, digest, record_id)

    def _add(self, at: float, digest: bytes, record_id: str) -> None:
        if self._left.get((digest, record_id), float("-inf")) > at:
            return  # the key left the record after it was written there
        self._left.pop((digest, record_id), None)  # written back onto it since it left
        ids = self._ids.setdefault(digest, {})
        if ids.get(record_id, at) > at:
            return  # an older line read after a newer one: the newer stands
        ids.pop(record_id, None)
        ids[record_id] = at
        while len(ids) > MAX_IDS_PER_KEY:
            del ids[next(iter(ids))]
        self._order.append((at, digest, record_id))
        while len(self._order) > self.max_entries:
            self._drop(*self._order.popleft())

    def _add_taken(self, at: float, digest: bytes | None, record_id: str) -> None:
        """A key that left a record (``digest``), or a removed record (``digest`` None), as of ``at``."""
        table: dict = self._removed if digest is None else self._left
        name = record_id if digest is None else (digest, record_id)
        if table.get(name, at) > at:
            return  # an older line read after a newer one
        table[name] = at
        if digest is not None:
            ids = self._ids.get(digest)
            if ids and record_id in ids and ids[record_id] <= at:  # a hint older than the leaving no longer holds
                del ids[record_id]
                if not ids:
                    del self._ids[digest]
        self._taken_order.append((at, digest, record_id))
        while len(self._taken_order) > self.max_entries:
            self._drop_taken(*self._taken_order.popleft())

    def _drop_taken(self, at: float, digest: bytes | None, record_id: str) -> None:
        table: dict = self._removed if digest is None else self._left
        name = record_id if digest is None else (digest, record_id)
        if table.get(name) == at:
            del table[name]

    def _expire(self) -> None:
        horizon = self._clock() - self.ttl
        while self._order and self._order[0][0] < horizon:
            self._drop(*self._order.popleft())
        while self._taken_order and self._taken_order[0][0] < horizon:
            self._drop_taken(*self._taken_order.popleft())

    def _drop(self, at: float, digest: bytes, record_id: str) -> None:
        ids = self._ids.get(digest)
        if not ids or ids.get(record_id) != at:
            return  # forgotten, or recorded again since: a newer entry stands for it
        del ids[record_id]
        if not ids:
            del self._ids[digest]

    # ------------------------------------------------------------- writing

    def record(self, kind: str, record_id: str, keys: Iterable[str]) -> None:
        """Remember that ``record_id`` (a lead or a contact) carries these lookup keys, as of now."""
        keys = list(keys)
        if not keys or not record_id:
            return
        with self._lock:
            now = self._clock()
            lines = []
            for key in keys:
                digest = key_digest(key)
                if record_id in self._ids.get(digest, ()):
                    continue  # known already (this process wrote or read it)
                self._add(now, digest, record_id)
                entry = {"k": digest.hex(), "t": key.split(":", 1)[0], "id": record_id, "kind": kind, "at": now}
                lines.append(_line(entry))
            if lines and not self._broken_write:
                self._write(lines, now)

    def left(self, kind: str, record_id: str, keys: Iterable[str]) -> None:
        """Remember that ``record_id`` no longer carries these lookup keys (a write moved them off), as of now."""
        self._taken(kind, record_id, list(keys), removed=False)

    def removed(self, kind: str, record_id: str, keys: Iterable[str]) -> None:
        """Remember that ``record_id`` was deleted or merged away, and the lookup keys it carried, as of now."""
        self._taken(kind, record_id, list(keys), removed=True)

    def _taken(self, kind: str, record_id: str, keys: list[str], *, removed: bool) -> None:
        if not record_id or not (keys or removed):
            return
        with self._lock:
            now = self._clock()
            lines = []
            if removed:
                self._add_taken(now, None, record_id)
                entry = {"id": record_id, "kind": kind, "at": now, "removed": True}
                lines.append(_line(entry))
            for key in keys:
                digest = key_digest(key)
                self._add_taken(now, digest, record_id)
                entry = {"k": digest.hex(), "t": key.split(":", 1)[0], "id": record_id, "kind": kind, "at": now}
                lines.append(_line({**entry, "left": True}))
            if not self._broken_write:
                self._write(lines, now)

    def flush(self) -> None:
        """Object stores: write what is buffered as one object. Local files are written as entries come."""
        with self._lock:
            if self._buffer and not self._broken_write:
                self._write_object(self._clock())

    def close(self) -> None:
        with self._lock:
            self.flush()
            if self._handle is not None:
                try:
                    self._handle.close()
                except OSError:
                    pass
                self._handle = None

    def _write(self, lines: list[str], now: float) -> None:
        try:
            if self._objects:
                if not self._buffer:
                    self._buffered_since = now
                self._buffer.extend(lines)
                if len(self._buffer) >= FLUSH_ENTRIES or now - self._buffered_since >= FLUSH_SECONDS:
                    self._write_object(now)
                return
            if self._handle is None or now - self._file_started >= self.roll:
                self._open(now)
            assert self._handle is not None
            data = "".join(lines).encode("utf-8")
            self._handle.write(data)
            self._handle.flush()  # on disk for the next run, or a restart, as soon as it is created
            self._offsets[self._file] = self._offsets.get(self._file, 0) + len(data)  # ours: known
        except Exception as exc:  # noqa: BLE001 - the ledger is an optimisation: never fail a request
            self._broken_write = True
            log.warning("created-id ledger %s: cannot write it (%s)", self.directory, type(exc).__name__)

    def _open(self, now: float) -> None:
        if self._handle is not None:
            self._handle.close()
        os.makedirs(self.directory, exist_ok=True)
        self._file_started = now
        self._file = os.path.join(self.directory, f"{int(now)}-{self._writer}{SUFFIX}")
        self._handle = open(self._file, "ab")  # noqa: SIM115 - kept open across writes
        self._offsets[self._file] = 0

    def _write_object(self, now: float) -> None:
        lines, self._buffer = self._buffer, []
        self._seq += 1
        name = _join(self.directory, f"{int(self._buffered_since or now)}-{self._writer}-{self._seq}{SUFFIX}")
        try:
            self._store.write(name, "".join(lines).encode("utf-8"))
        except Exception as exc:  # noqa: BLE001
            self._broken_write = True
            log.warning("created-id ledger %s: cannot write it (%s)", self.directory, type(exc).__name__)
            return
        self._offsets[name] = 1  # ours: already in memory


def _started(name: str) -> float | None:
    found = _NAME.match(name.rstrip("/").rsplit("/", 1)[-1])
    return float(found.group(1)) if found else None


atexit.register(CreatedIdLedger.close_all)  # object stores: what is still buffered
