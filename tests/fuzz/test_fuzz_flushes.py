"""A bounded run split into flushes of any size ends where one flush does.

The job's bounded writer (`ApplyBatches`, run as a runner runs it: state per key, the window-end
timer fired after the input) gets what collapsing and the suppression gate let through of a random
burst of identify, group and alias events over a seeded CRM (test_fuzz_alias.py's scenarios), in a
random arrival order, and applies it with a random ``batch_size``; the CRM must end as it does when
the same arrival is applied with a ``batch_size`` that holds everything (one flush, in event time).
Nothing orders a bounded input by time, so the order in which requests reach the writer must not
matter, however the writer cuts them.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from closecrm.wiring import EngineSpec, KeySource
from tests.engine.conftest import CloseEnv
from tests.fuzz.budget import budget
from tests.fuzz.test_fuzz_alias import alias_flags, scenarios
from tests.fuzz.test_fuzz_dofns import drive
from tests.fuzz.test_fuzz_equivalence import bounded, burst, flags, seed_dense
from transforms.collapse import Pending
from transforms.writer import ApplyBatches

pytestmark = pytest.mark.integration

ONE_FLUSH = 1_000_000


def write(close: CloseEnv, leads: list[dict[str, Any]], arrival: list[Pending], batch_size: int) -> Any:
    """A fresh CRM seeded with ``leads``, the arrival through the bounded writer (one key); Close's state."""
    close.fresh_org()
    seed_dense(close, leads)
    spec = EngineSpec(close.sim.base_url, KeySource(), close.settings)
    run = drive(ApplyBatches(spec, batch_size, 1.0, False), [(0, p) for p in arrival], keyed=True)
    assert sorted(p.request.event_ids for p, _ in run.all.main) == sorted(
        p.request.event_ids for p in arrival
    )
    return close.projection()


@budget(60)
@given(
    scenario=scenarios(),
    identify_flags=flags,
    group_flags=flags,
    merging=alias_flags,
    batch_size=st.integers(1, 4),
    data=st.data(),
)
def test_flushes_of_any_size_end_where_one_flush_does(
    close: CloseEnv,
    monkeypatch: pytest.MonkeyPatch,
    scenario: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    identify_flags: Any,
    group_flags: Any,
    merging: Any,
    batch_size: int,
    data: st.DataObject,
) -> None:
    monkeypatch.setenv("CLOSE_API_KEY", close.sim.api_key)
    leads, raws = scenario
    sent = [s.pending for s in bounded(burst(raws, identify_flags, group_flags, merging))]
    arrival = data.draw(st.permutations(sent), label="arrival")
    one_flush = write(close, leads, arrival, ONE_FLUSH)
    assert write(close, leads, arrival, batch_size) == one_flush
