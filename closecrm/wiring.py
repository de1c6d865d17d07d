"""Where a job finds Close and its API key, and what a worker needs to build its own client and engine.

Nothing here imports Beam or the HTTP stack at import time: the CLI builds these for every command
(validate, replay, export included) and only a worker that reads a key from an object store (gs://…)
loads Beam's filesystems, when it reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from closecrm.api.defaults import DEFAULT_API_KEY_ENV, DEFAULT_BUDGET_SHARE, DEFAULT_CLOSE_URL
from closecrm.model import Settings
from closecrm.secret import ApiKey

__all__ = ["DEFAULT_API_KEY_ENV", "DEFAULT_CLOSE_URL", "ApiKey", "EngineSpec", "KeySource"]



@dataclass(frozen=True)
class KeySource:
    """Where a worker reads the API key: a file given on the command line, else the env var, else
    the config's file. Files may be on any Beam filesystem (e.g. gs://), which is how Dataflow
    workers, who do not share the launcher's environment, get the key."""

    env_var: str = DEFAULT_API_KEY_ENV
    path: str | None = None
    fallback_path: str | None = None

    def read(self) -> ApiKey:
        if self.path:
            return _key_from_file(self.path)
        value = os.environ.get(self.env_var, "").strip()
        if value:
            return ApiKey(value)
        if self.fallback_path:
            return _key_from_file(self.fallback_path)
        raise RuntimeError(f"no Close API key: set ${self.env_var} or give --api-key-file / settings.api_key_file")


def _key_from_file(path: str) -> ApiKey:
    try:
        value = read_secret_file(path).decode("utf-8")
    except Exception as exc:  # noqa: BLE001 - any filesystem's error, reported without the key
        raise RuntimeError(f"cannot read the API key file {path}: {type(exc).__name__}") from None
    if not value.strip():
        raise RuntimeError(f"the API key file {path} is empty")
    return ApiKey(value)


def read_secret_file(path: str) -> bytes:
    """A secret file's bytes, local or on any Beam filesystem; the caller words the error."""
    if "://" in path:
        # Object stores (gs://, s3://, …) are read through Beam, which the workers that need it have loaded.
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as fh:
            return fh.read()
    with open(path, "rb") as fh:
        return fh.read()


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to build its own client and engine (no secret inside).

    ``created_ids`` is the directory of the created-id ledger (closecrm/engine/writes/ledger.py) for this
    Close URL, or None to keep created ids in memory only. ``max_concurrency`` None leaves the
    engine's own bound; ``options`` are passed to the client as keyword arguments.
    """

    close_url: str
    key_source: KeySource
    settings: Settings
    max_concurrency: int | None = None
    budget_share: float = DEFAULT_BUDGET_SHARE
    options: dict[str, Any] = field(default_factory=dict)
    created_ids: str | None = None

    def build(self, *, with_ledger: bool = True):  # noqa: ANN201 - (CloseClient, UpsertEngine)
        from closecrm.api.client import CloseClient
        from closecrm.engine import UpsertEngine
        from closecrm.engine.writes.ledger import CreatedIdLedger

        client = CloseClient(
            self.close_url,
            self.key_source.read(),
            budget_share=self.budget_share,
            **self.options,
        )
        ledger = CreatedIdLedger.shared(self.created_ids) if with_ledger and self.created_ids else None
        bound = {} if self.max_concurrency is None else {"max_concurrency": self.max_concurrency}
        engine = UpsertEngine(client, self.settings, ledger=ledger, **bound)
        return client, engine

    async def check(self) -> None:
        """Fail before a job starts when the key, the URL or a configured field is wrong."""
        client, engine = self.build(with_ledger=False)
        try:
            await engine.validate_settings()
        finally:
            await client.aclose()
