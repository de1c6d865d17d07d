"""Where a job finds Close and its API key, and what a worker needs to build its own client and engine.

Nothing here imports the HTTP stack at import time: the CLI builds these for every command
(validate, replay, export included). A key file or a ledger at a URL (gs://…) is reached through
the object store the job passes in (closecrm/storage.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from closecrm.api.defaults import DEFAULT_API_KEY_ENV, DEFAULT_BUDGET_SHARE, DEFAULT_CLOSE_URL
from closecrm.model import Settings
from closecrm.secret import ApiKey
from closecrm.storage import LOCAL_OBJECTS, ObjectStore, read_secret_file

__all__ = ["DEFAULT_API_KEY_ENV", "DEFAULT_CLOSE_URL", "ApiKey", "EngineSpec", "KeySource"]



@dataclass(frozen=True)
class KeySource:
    """Where a worker reads the API key: a file given on the command line, else the env var, else
    the config's file. Files may be at a URL (e.g. gs://) that ``objects`` reaches, which is how
    Dataflow workers, who do not share the launcher's environment, get the key."""

    env_var: str = DEFAULT_API_KEY_ENV
    path: str | None = None
    fallback_path: str | None = None
    objects: ObjectStore = LOCAL_OBJECTS  # how a key file at a URL is read

    def read(self) -> ApiKey:
        if self.path:
            return _key_from_file(self.path, self.objects)
        value = os.environ.get(self.env_var, "").strip()
        if value:
            return ApiKey(value)
        if self.fallback_path:
            return _key_from_file(self.fallback_path, self.objects)
        raise RuntimeError(f"no Close API key: set ${self.env_var} or give --api-key-file / settings.api_key_file")


def _key_from_file(path: str, objects: ObjectStore) -> ApiKey:
    try:
        value = read_secret_file(path, objects).decode("utf-8")
    except Exception as exc:  # noqa: BLE001 - any filesystem's error, reported without the key
        raise RuntimeError(f"cannot read the API key file {path}: {type(exc).__name__}") from None
    if not value.strip():
        raise RuntimeError(f"the API key file {path} is empty")
    return ApiKey(value)


def client_for(close_url: str, keys: KeySource, *, budget_share: float = DEFAULT_BUDGET_SHARE, **options: Any):  # noqa: ANN201 - CloseClient
    """A client of Close at ``close_url`` with the key ``keys`` reads: what every command that talks
    to Close builds (jobs through `EngineSpec.build`; validate, probe and export directly)."""
    from closecrm.api.client import CloseClient

    return CloseClient(close_url, keys.read(), budget_share=budget_share, **options)


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
    objects: ObjectStore = LOCAL_OBJECTS  # how a ledger at a URL is reached

    def build(self, *, with_ledger: bool = True):  # noqa: ANN201 - (CloseClient, UpsertEngine)
        from closecrm.engine import UpsertEngine
        from closecrm.engine.writes.ledger import CreatedIdLedger

        client = client_for(self.close_url, self.key_source, budget_share=self.budget_share, **self.options)
        ledger = CreatedIdLedger.shared(self.created_ids, self.objects) if with_ledger and self.created_ids else None
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
