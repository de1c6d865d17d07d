"""The upsert engine: "Create or Update Contact and Lead" on Close's public API.

    core.py              UpsertEngine, the entry points
    ordering/            the scheduler (lookup batches, groups, the pipelined stream) and spans
    lookups.py, view.py  batched searches into a view; reads by id of what search does not show yet
    rules/               the decision procedure, aliases, and what each request touches
    writes/              the write layer: Close's, or a dry run's; lost answers; caches; the ledger
    settings_check.py    the destination settings against the organisation
"""

from closecrm.engine.core import UpsertEngine
from closecrm.engine.ordering.scheduler import MAX_CONCURRENCY, STREAM_BATCH, STREAM_DEPTH
from closecrm.engine.rules.decide import MAX_CONTACTS_PER_REQUEST
from closecrm.engine.settings_check import SettingsError
from closecrm.engine.view import age
from closecrm.engine.writes.ambiguity import MAX_CREATE_ATTEMPTS
from closecrm.engine.writes.dry import DRY_RUN_MARK

__all__ = [
    "DRY_RUN_MARK",
    "MAX_CONCURRENCY",
    "MAX_CONTACTS_PER_REQUEST",
    "MAX_CREATE_ATTEMPTS",
    "STREAM_BATCH",
    "STREAM_DEPTH",
    "SettingsError",
    "UpsertEngine",
    "age",
]
