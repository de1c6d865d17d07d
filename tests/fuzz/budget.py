"""The fuzz suite's example budget: fixed and derandomized inside `make test`, long and random in `make fuzz`."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# `make fuzz` sets CLOSE_SYNC_FUZZ_EXAMPLES (and CLOSE_SYNC_FUZZ_RANDOM=1 to explore new inputs each run).
SCALE = max(1, int(os.environ.get("CLOSE_SYNC_FUZZ_EXAMPLES", "1")))
RANDOM = os.environ.get("CLOSE_SYNC_FUZZ_RANDOM") == "1"


def budget(examples: int) -> settings:
    """``examples`` in CI (same inputs every run, so a red CI reproduces); ``examples × SCALE`` when fuzzing."""
    return settings(
        max_examples=examples * SCALE,
        derandomize=not RANDOM,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            # tests that take a simulator reset it themselves at the start of each example
            HealthCheck.function_scoped_fixture,
        ],
        print_blob=True,
    )
