"""Unbounded input, processing-time panes: per person, what arrived within a pane is collapsed and emitted
once, and the state a person leaves behind in the local runner does not grow with the panes it fired."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct import clock as beam_clock
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp

from closecrm.model import UpsertRequest
from transforms import collapse
from transforms.collapse import CollapsePerPerson

PANES = 40


def request(user: str, n: int) -> UpsertRequest:
    return UpsertRequest(
        contact_user_id=user, contact_title=f"t{n}", event_ids=(f"{user}-{n}",), timestamp=f"2026-11-01T00:{n // 60:02d}:{n % 60:02d}Z"
    )


def state_entries(result, step: str) -> dict[str, int]:  # noqa: ANN001
    """Per key of ``step``: the values the local runner keeps in its keyed-state table (lists count per item)."""
    tables = result._evaluation_context._transform_keyed_states  # the BundleBasedDirectRunner's own table
    out: dict[str, int] = {}
    for transform, keyed in tables.items():
        if not transform.full_label.startswith(step):
            continue
        for key, state in keyed.items():
            n = sum(len(v) if isinstance(v, list) else 1 for tags in state.state.values() for v in tags.values())
            out[repr(key)] = out.get(repr(key), 0) + n + sum(len(t) for t in state.timers.values())
    return out


def test_processing_time_panes_collapse_per_person_and_leave_no_growing_state(monkeypatch) -> None:  # noqa: ANN001
    # TestStream moves the runner's own clock (from 0); the DoFn's timers must count on that clock.
    clocks: list[beam_clock.TestClock] = []
    init = beam_clock.TestClock.__init__

    def remember(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        init(self, *args, **kwargs)
        clocks.append(self)

    monkeypatch.setattr(beam_clock.TestClock, "__init__", remember)
    monkeypatch.setattr(collapse, "_now", lambda: Timestamp(clocks[-1].time()) if clocks else Timestamp.now())
    stream = test_stream.TestStream()
    expected = []
    for pane in range(PANES):
        # Two events of "a" and one of "b" per pane: "a" collapses to one request with both event ids.
        stream = stream.add_elements(
            [
                ("user:a", (request("a", 2 * pane), {"n": 2 * pane})),
                ("user:a", (request("a", 2 * pane + 1), {"n": 2 * pane + 1})),
                ("user:b", (request("b", pane), {"n": pane})),
            ]
        ).advance_processing_time(5)
        expected += [("user:a", (f"a-{2 * pane}", f"a-{2 * pane + 1}"), f"t{2 * pane + 1}"), ("user:b", (f"b-{pane}",), f"t{pane}")]
    stream = stream.advance_watermark_to_infinity()

    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)
    out = (
        p
        | stream
        | CollapsePerPerson(streaming=True, window_kind="processing", window_seconds=2)
        | beam.Map(lambda pd: (pd.person, pd.request.event_ids, pd.request.contact_title))
    )
    assert_that(out, equal_to(expected))
    result = p.run()
    result.wait_until_finish()

    entries = state_entries(result, "CollapsePerPerson")
    assert entries, "the collapse step keeps keyed state in the local runner"
    # Each person fired PANES panes. Beam's trigger driver kept one pane-index entry per pane per key
    # (in the global window that never closes); what is left here must not depend on PANES.
    assert max(entries.values()) <= 4, entries
