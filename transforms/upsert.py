"""The writer's names where bench/ and older tests import them; each lives in a module of its own.

- closecrm/credentials.py: ``KeySource``, ``ApiKey``, ``EngineSpec`` (no Beam)
- transforms/keying.py: ``lead_identity``, ``shard_of``
- transforms/outcomes.py: ``ledger_status``, ``letter_for``, ``emit_outcome``, ``SettleSuppressed``
- transforms/client_metrics.py: ``client_counters``
- transforms/writer.py: ``UpsertToClose`` and its DoFns

New code imports from those modules.
"""

from __future__ import annotations

from closecrm.credentials import ApiKey, EngineSpec, KeySource
from transforms.client_metrics import client_counters
from transforms.keying import lead_identity, shard_of
from transforms.outcomes import EmitOutcomes, SettleSuppressed, emit_outcome, ledger_status, letter_for
from transforms.writer import ApplyBatches, ApplyBatchesStreaming, UpsertToClose

# The fuzz suite (tests/fuzz) names the DoFns it drives by these.
_ApplyBatches = ApplyBatches
_ApplyBatchesStreaming = ApplyBatchesStreaming
_EmitSuppressed = EmitOutcomes

__all__ = [
    "ApiKey",
    "ApplyBatches",
    "ApplyBatchesStreaming",
    "EmitOutcomes",
    "EngineSpec",
    "KeySource",
    "SettleSuppressed",
    "UpsertToClose",
    "client_counters",
    "emit_outcome",
    "lead_identity",
    "ledger_status",
    "letter_for",
    "shard_of",
]
