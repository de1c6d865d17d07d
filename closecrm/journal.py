"""Durable JSON-lines records (the audit log, the dead letters): each line on disk before the job goes on.

A Beam file sink commits when a bundle or the job finishes, so a killed run loses what it wrote
there. Here every ``append`` is on disk when it returns: local files are opened with ``O_APPEND``,
each line goes in one ``write`` (so lines of several threads, DoFn instances or processes appending
to one file never interleave), then ``fsync``. One ``JournalFile`` per path and process, with a lock.

Paths with a scheme (``gs://…``) cannot be appended to: each ``append`` writes one new object
beside the path, ``<name>.part-<writer>-<seq>.jsonl`` for ``<name>.jsonl`` (``<writer>`` names the
process), through the object store given (closecrm/storage.py). The log is the union of those objects.

An append that fails (a full disk: ENOSPC, a file-size limit: EFBIG, a lost mount) raises
`JournalError`, whose message is one line naming the file, the error and the fix; the file refuses
every later append with the same error, and the run's `Recording` remembers it, so the run's writer
stops making Close writes it could not record (closecrm.engine: ``UpsertEngine.record``).
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from collections.abc import Sequence

from closecrm.storage import LOCAL_OBJECTS, ObjectStore, has_scheme


def part_name(path: str, writer: str, seq: int) -> str:
    """The object one append writes on an object store: beside ``path``, named like it, so a folder's
    ``dead-letters-*.jsonl`` still finds every part (``dead-letters-<run>.part-<writer>-<seq>.jsonl``)."""
    stem, suffix = (path[: -len(".jsonl")], ".jsonl") if path.endswith(".jsonl") else (path, "")
    return f"{stem}.part-{writer}-{seq:08d}{suffix}"


class JournalError(RuntimeError):
    """A record could not be appended; the message is the one line a user sees."""

    def __init__(self, path: str, exc: BaseException) -> None:
        code = getattr(exc, "errno", None)
        name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
        why = getattr(exc, "strerror", None) or type(exc).__name__
        self.path = path
        self.errno = code
        super().__init__(
            f"cannot append to {path}: {why}{f' ({name})' if name else ''}; close-sync stopped writing to "
            "Close: free space or choose another --audit-log / --dead-letter, then run again"
        )


class RecordingStopped(RuntimeError):
    """A Close write refused because the run can no longer record what it writes (its message is
    the `JournalError`'s)."""


class JournalFile:
    """One append-only JSON-lines file (or, on an object store, folder of parts), durable per append.

    Use ``shared(path)``: one instance per path and process. Thread-safe.
    """

    _instances: dict[str, JournalFile] = {}
    _instances_lock = threading.Lock()

    def __init__(self, path: str, objects: ObjectStore = LOCAL_OBJECTS) -> None:
        self.path = path
        self._store = objects
        self._lock = threading.Lock()
        self._unsynced = False  # lines appended without fsync since the last one
        self._failure: JournalError | None = None
        self._writer = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._seq = 0

    @classmethod
    def shared(cls, path: str, objects: ObjectStore = LOCAL_OBJECTS) -> JournalFile:
        with cls._instances_lock:
            found = cls._instances.get(path)
            if found is None:
                found = cls._instances[path] = cls(path, objects)
            return found

    @property
    def failure(self) -> JournalError | None:
        return self._failure

    def append(self, lines: Sequence[str], sync: bool = True) -> None:
        """Each line (no newline inside; JSON lines never have one) in the file when this returns, so
        it outlives the process; with ``sync`` also fsync-ed, so it outlives the machine. Raises
        `JournalError` if not, and from then on for every append."""
        if not lines:
            return
        with self._lock:
            self._guarded(lambda: self._write_part(lines) if has_scheme(self.path) else self._append_local(lines, sync))

    def sync(self) -> None:
        """fsync what was appended without it (local files; an object is whole once written)."""
        with self._lock:
            if not has_scheme(self.path):
                self._guarded(self._sync_local)

    def _guarded(self, act) -> None:  # noqa: ANN001
        if self._failure is not None:
            raise self._failure
        try:
            act()
        except OSError as exc:
            self._failure = JournalError(self.path, exc)
            raise self._failure from None

    def _append_local(self, lines: Sequence[str], sync: bool) -> None:
        # Opened for each append, so a file moved or removed under a run is made again, not written unseen.
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for line in lines:
                data = memoryview((line + "\n").encode("utf-8"))
                while data:  # a write cut short (a disk filling up) goes on; the next one says why it cannot
                    data = data[os.write(fd, data) :]
            if sync:
                os.fsync(fd)
            else:
                self._unsynced = True
        finally:
            os.close(fd)

    def _sync_local(self) -> None:
        if self._unsynced and os.path.exists(self.path):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._unsynced = False

    def _write_part(self, lines: Sequence[str]) -> None:
        self._seq += 1
        name = part_name(self.path, self._writer, self._seq)
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        try:
            self._store.write(name, data)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - any filesystem's error is a failed append
            raise OSError(errno.EIO, f"{type(exc).__name__} writing {name}") from None


class Recording:
    """Whether one run (by run id) can still record, in this process: the first append that failed.

    Every journal of a run reports its failures here; the run's engine refuses every Close write
    once there is one, since it could not be recorded.
    """

    _runs: dict[str, Recording] = {}
    _runs_lock = threading.Lock()

    def __init__(self) -> None:
        self.failure: JournalError | None = None

    @classmethod
    def of(cls, run_id: str | None) -> Recording:
        with cls._runs_lock:
            key = run_id or ""
            found = cls._runs.get(key)
            if found is None:
                found = cls._runs[key] = cls()
            return found

    def failed(self, exc: JournalError) -> None:
        if self.failure is None:
            self.failure = exc


class Journal:
    """A run's appends to one file: a failure is the run's (`Recording`) as well as the file's."""

    def __init__(self, path: str, run_id: str | None, objects: ObjectStore = LOCAL_OBJECTS) -> None:
        self.path = path
        self.run_id = run_id
        self._file = JournalFile.shared(path, objects)
        self.recording = Recording.of(run_id)

    def append(self, lines: Sequence[str], sync: bool = True) -> None:
        self._recorded(lambda: self._file.append(lines, sync))

    def sync(self) -> None:
        self._recorded(self._file.sync)

    def _recorded(self, act) -> None:  # noqa: ANN001
        try:
            act()
        except JournalError as exc:
            self.recording.failed(exc)
            raise
