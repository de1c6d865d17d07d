"""The --state directory of snapshot-sync: generations of fingerprints and the CURRENT pointer that names the live one.

A run writes a fresh generation directory, and only when the pipeline has finished does it
replace ``CURRENT`` (written to a temporary name, then renamed), so a crashed run leaves the
previous state live. Works on any Beam filesystem (local paths, gs://, s3://).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

from apache_beam.io.filesystems import FileSystems

from transforms.snapshot import STATE_PREFIX, STATE_SUFFIX

POINTER = "CURRENT"
MANIFEST = "_manifest.json"
KEEP_GENERATIONS = 2  # the live one and the one before it


@dataclass(frozen=True)
class Generation:
    name: str
    path: str
    manifest: dict[str, Any]

    @property
    def pattern(self) -> str:
        return FileSystems.join(self.path, f"{STATE_PREFIX}*{STATE_SUFFIX}")


class SnapshotState:
    """One --state directory."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def _path(self, *parts: str) -> str:
        return FileSystems.join(self.root, *parts)

    def current(self) -> Generation | None:
        pointer = self._path(POINTER)
        if not FileSystems.exists(pointer):
            return None
        name = _read_text(pointer).strip()
        path = self._path(name)
        manifest_path = FileSystems.join(path, MANIFEST)
        if not FileSystems.exists(manifest_path):
            raise RuntimeError(
                f"state {self.root}: {POINTER} names {name}, which has no {MANIFEST}; state is damaged"
            )
        return Generation(name, path, json.loads(_read_text(manifest_path)))

    def new_generation(self) -> Generation:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        name = f"gen-{stamp}-{uuid.uuid4().hex[:8]}"
        return Generation(name, self._path(name), {})

    def commit(self, generation: Generation, manifest: dict[str, Any]) -> None:
        """Make ``generation`` the live state; drop generations older than the one it replaces."""
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
        if previous is not None and previous.manifest.get("previous"):
            self._delete_generation(previous.manifest["previous"])

    def _delete_generation(self, name: str) -> None:
        path = self._path(name)
        try:
            files = [m.path for m in FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list]
            if files:
                FileSystems.delete(files)
            FileSystems.delete([path])
        except Exception:  # noqa: BLE001 - pruning is housekeeping; an old generation left behind is harmless
            pass


def _read_text(path: str) -> str:
    with FileSystems.open(path) as fh:
        return fh.read().decode("utf-8")


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as fh:
        fh.write(text.encode("utf-8"))
