"""Where the domain keeps what outlives a process: local paths through the OS, URLs through a store passed in.

The created-id ledger, the durable journal and secret files may live on an object store
(``gs://…``, ``s3://…``) when a job runs on workers that share no disk. The domain does not know
how to reach one: whoever builds the job passes an `ObjectStore` (the Beam layer passes one over
Beam's FileSystems, transforms/objects.py). Without one, local files stand in for objects and a
URL is refused with a clear error.
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
from dataclasses import dataclass
from typing import Protocol


def has_scheme(path: str) -> bool:
    """A URL (``gs://bucket/x``) rather than a local path."""
    return "://" in path


class ObjectStore(Protocol):
    """Whole objects at URLs: objects cannot be appended to, only written whole, listed, read and deleted."""

    def list(self, pattern: str) -> list[str]:
        """The URLs matching a glob pattern (``gs://b/dir/*.ids``), sorted."""
        ...

    def read(self, url: str) -> bytes: ...

    def write(self, url: str, data: bytes) -> None:
        """The object at ``url`` holds ``data`` when this returns (written whole, or not at all)."""
        ...

    def delete(self, url: str) -> None: ...


@dataclass(frozen=True)
class LocalObjects:
    """Objects as local files: the store of a job given none. A URL is refused, naming it."""

    def _local(self, path: str) -> str:
        if has_scheme(path):
            raise OSError(errno.EINVAL, f"no object store to reach {path}: give a local path, or run it as a job")
        return path

    def list(self, pattern: str) -> list[str]:
        return sorted(glob.glob(self._local(pattern)))

    def read(self, url: str) -> bytes:
        with open(self._local(url), "rb") as fh:
            return fh.read()

    def write(self, url: str, data: bytes) -> None:
        path = self._local(url)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        part = f"{path}.{secrets.token_hex(4)}.tmp"
        with open(part, "wb") as fh:
            fh.write(data)
        os.replace(part, path)  # whole or not at all, as an object store's write

    def delete(self, url: str) -> None:
        os.remove(self._local(url))


LOCAL_OBJECTS = LocalObjects()


def read_secret_file(path: str, objects: ObjectStore) -> bytes:
    """A secret file's bytes, local or at a URL; the caller words the error (without the content)."""
    if has_scheme(path):
        return objects.read(path)
    with open(path, "rb") as fh:
        return fh.read()
