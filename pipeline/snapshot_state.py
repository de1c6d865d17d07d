"""The --state directory of snapshot-sync: generations of fingerprints and the CURRENT pointer that names the live one.

A run writes a fresh generation directory, and only when the pipeline has finished does it
replace ``CURRENT`` (written to a temporary name, then renamed), so a crashed run leaves the
previous state live. Works on any Beam filesystem (local paths, gs://, s3://).

Everything read back from the directory is distrusted: a generation named by ``CURRENT`` or by a
manifest must be a ``gen-*`` directory directly inside the state directory (symlinks resolved), and
housekeeping deletes only such directories, never anything a file names. A file that cannot be
read is reported by name, with the way out: ``--full`` rebuilds the state without reading it.

One run at a time: on a local filesystem a run holds an exclusive ``flock`` on ``<state>/.lock``
until it has committed, and a second run is refused. Object stores (gs://, s3://) have no such
lock, so two runs on one remote state directory are not prevented: both would send their changes,
the last to commit would win, and orphans younger than `ORPHAN_GRACE` are left alone in case they
belong to a run still going. Schedule remote runs one at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from apache_beam.io.filesystems import FileSystems

from transforms.snapshot import STATE_PREFIX, STATE_SUFFIX, StateCorrupt, StateError, unreadable

__all__ = ["Generation", "SnapshotState", "StateCorrupt", "StateError"]

POINTER = "CURRENT"
MANIFEST = "_manifest.json"
LOCK = ".lock"
GENERATION_PREFIX = "gen-"
_GENERATION_NAME = re.compile(r"gen-[A-Za-z0-9_-]+\Z")
_STAMP = re.compile(r"gen-(\d{8}T\d{6})-")
ORPHAN_GRACE = dt.timedelta(days=1)  # unlocked (remote) state only: younger orphans may be a live run's
STATE_COLUMNS = ("key", "fingerprint")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    name: str
    path: str
    manifest: dict[str, Any]

    @property
    def pattern(self) -> str:
        return FileSystems.join(self.path, f"{STATE_PREFIX}*{STATE_SUFFIX}")


_READ_CURRENT: Any = object()


class SnapshotState:
    """One --state directory."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") or "/"
        self.local = FileSystems.get_scheme(self.root) is None

    def _path(self, *parts: str) -> str:
        return FileSystems.join(self.root, *parts)

    # ------------------------------------------------------------------ reading

    def current(self) -> Generation | None:
        """The live generation, or None before the first commit.

        Raises `StateError` when ``CURRENT`` or the manifest name a path that is not a generation
        inside this directory, and `StateCorrupt` when either file cannot be read.
        """
        pointer = self._path(POINTER)
        if not FileSystems.exists(pointer):
            return None
        name = _read_text(pointer).strip()
        if not name:  # a write that never reached the disk, or a file emptied by hand
            raise StateCorrupt(unreadable(pointer, "empty; it names no generation"))
        path = self._generation_path(name, pointer, "the generation it names")
        manifest_path = FileSystems.join(path, MANIFEST)
        if not FileSystems.exists(manifest_path):
            raise StateCorrupt(unreadable(manifest_path, f"missing; {POINTER} names {name}"))
        try:
            manifest = json.loads(_read_text(manifest_path))
        except ValueError as exc:  # JSON and UTF-8 errors both
            raise StateCorrupt(unreadable(manifest_path, exc)) from None
        if not isinstance(manifest, dict):
            raise StateCorrupt(unreadable(manifest_path, "not a JSON object"))
        for field in ("previous", "generation"):
            if manifest.get(field) is not None:
                self._generation_path(manifest[field], manifest_path, f'"{field}"')
        return Generation(name, path, manifest)

    def check(self, generation: Generation) -> None:
        """Read the footer of every state file of ``generation`` (not the rows): catches truncated
        and foreign files before the pipeline starts. Raises `StateCorrupt` naming the file."""
        import pyarrow.parquet as pq

        for metadata in FileSystems.match([generation.pattern])[0].metadata_list:
            try:
                with FileSystems.open(metadata.path) as fh:
                    names = set(pq.read_schema(fh).names)
            except Exception as exc:  # noqa: BLE001 - any failure to read is a damaged file
                raise StateCorrupt(unreadable(metadata.path, exc)) from None
            missing = [c for c in STATE_COLUMNS if c not in names]
            if missing:
                raise StateCorrupt(unreadable(metadata.path, f"no {', '.join(missing)} column"))

    def _generation_path(self, name: Any, source: str, field: str) -> str:
        """The path of generation ``name`` read from file ``source``, if it is one of ours; else `StateError`."""
        if isinstance(name, str) and _GENERATION_NAME.match(name):
            path = self._path(name)
            if not self.local or os.path.realpath(path) == os.path.join(os.path.realpath(self.root), name):
                return path
        if isinstance(name, str) and self._outside(name):
            problem = f"outside --state {self.root}"
        else:
            problem = f"not a generation directory (gen-*) of --state {self.root}"
        raise StateError(
            f"state file {source}: {field} is {name!r}, which is {problem}; refusing to use this state "
            "and deleting nothing (fix or remove that file)"
        )

    def _outside(self, name: str) -> bool:
        if self.local:
            root = os.path.realpath(self.root)
            target = os.path.realpath(os.path.join(self.root, name))
            return os.path.commonpath([root, target]) != root
        if "://" in name:
            return True
        target = posixpath.normpath(posixpath.join(self.root.split("://", 1)[-1], name))
        return not target.startswith(self.root.split("://", 1)[-1] + "/")

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``<state>/.lock`` exclusively for the block; `StateError` if another run holds it.

        ``flock`` is reliable on local filesystems only (not across NFS clients); remote state
        directories are not locked at all (see the module docstring).
        """
        if not self.local:
            log.warning(
                "--state %s is not on a local filesystem and cannot be locked: run one snapshot-sync "
                "at a time on it",
                self.root,
            )
            yield
            return
        import fcntl

        os.makedirs(self.root, exist_ok=True)
        lock_path = os.path.join(self.root, LOCK)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(
                    f"--state {self.root} is in use by another snapshot-sync (it holds {lock_path}); "
                    "wait for it to finish, or give each job its own --state"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def new_generation(self) -> Generation:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{GENERATION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"
        return Generation(name, self._path(name), {})

    def commit(
        self, generation: Generation, manifest: dict[str, Any], previous: Generation | None = _READ_CURRENT
    ) -> None:
        """Make ``generation`` the live state, keeping ``previous`` (by default the live one) as the one
        before it; then delete every other generation directory (older ones and failed runs')."""
        if previous is _READ_CURRENT:
            previous = self.current()
        manifest = {
            **manifest,
            "generation": generation.name,
            "previous": previous.name if previous else None,
        }
        _write_text(
            FileSystems.join(generation.path, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True)
        )
        temp = self._path(f".{POINTER}.{uuid.uuid4().hex}.tmp")
        _write_text(temp, generation.name + "\n")
        FileSystems.rename([temp], [self._path(POINTER)])
        self.remove_orphans({generation.name, *([previous.name] if previous else [])})

    def remove_orphans(self, keep: set[str]) -> list[str]:
        """Delete the ``gen-*`` directories directly inside the state directory that are not in ``keep``.

        Only real directories are removed (a symlink or a file of that name is left alone), and
        failures are ignored: an orphan left behind costs disk space, nothing else.
        """
        removed = []
        for name in self._orphans(keep):
            try:
                if self.local:
                    shutil.rmtree(os.path.join(self.root, name))
                else:
                    self._delete_remote(name)
                removed.append(name)
            except Exception as exc:  # noqa: BLE001 - housekeeping; the next run tries again
                log.warning("could not remove old state generation %s: %s", self._path(name), exc)
        return removed

    def _orphans(self, keep: set[str]) -> list[str]:
        if self.local:
            try:
                entries = list(os.scandir(self.root))
            except FileNotFoundError:
                return []
            return sorted(
                e.name
                for e in entries
                if e.name.startswith(GENERATION_PREFIX)
                and e.name not in keep
                and e.is_dir(follow_symlinks=False)
            )
        # No lock on remote state: leave young orphans, which may be another run's work in progress.
        now = dt.datetime.now(dt.UTC)
        names = set()
        for metadata in FileSystems.match([self._path(GENERATION_PREFIX + "*/**")])[0].metadata_list:
            name = metadata.path[len(self.root) + 1 :].split("/", 1)[0]
            stamp = _STAMP.match(name)
            if name in keep or not stamp:
                continue
            made = dt.datetime.strptime(stamp.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
            if now - made > ORPHAN_GRACE:
                names.add(name)
        return sorted(names)

    def _delete_remote(self, name: str) -> None:
        prefix = self._path(name)
        files = [m.path for m in FileSystems.match([prefix + "/**"])[0].metadata_list]
        if files:
            FileSystems.delete(files)


def _read_text(path: str) -> str:
    try:
        with FileSystems.open(path) as fh:
            return fh.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateCorrupt(unreadable(path, exc)) from None


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as fh:
        fh.write(text.encode("utf-8"))
