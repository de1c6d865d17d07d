"""The bounded writer applies a flush in the background while it buffers the next, and settles all of them."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from closecrm.model import Settings, UpsertRequest
from closecrm.wiring import EngineSpec, KeySource
from tests.engine.test_engine_batch import people
from tests.pipeline.helpers import sim_config
from transforms.collapse import Pending
from transforms.sharded import pack
from transforms.writer import EventIdsAside, UpsertToClose, flush_order, held

_OUT: list = []


def _keep(item) -> None:  # noqa: ANN001 - FnApiRunner runs in this process
    _OUT.append(item)


def test_every_flush_is_settled_with_each_request_paired_to_its_own_outcome(sim, tmp_path, monkeypatch):
    config, cf = sim_config(sim, tmp_path)
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    spec = EngineSpec(sim.base_url, KeySource(), config.settings_model())
    # 23 companies, people arriving shuffled across them; 7-request flushes: many flushes, most overlapping.
    pendings = [Pending(r.contact_user_id, r, ()) for r in people(150, 23)]
    _OUT.clear()
    p = beam.Pipeline(runner=FnApiRunner())
    applied = p | beam.Create(pendings) | UpsertToClose(
        spec, shards=3, batch_size=7, flush_seconds=5.0, streaming=False, dry_run=False
    )
    _ = applied.outcomes | beam.Map(_keep)
    p.run().wait_until_finish()

    assert sorted(pending.person for pending, _ in _OUT) == sorted(x.person for x in pendings)
    assert {outcome.kind for _, outcome in _OUT} == {"created"}
    contacts = {c["custom." + cf["user"]]: c for c in sim.contacts()}
    leads = {lead["id"]: lead for lead in sim.leads()}
    assert len(contacts) == 150 and len(leads) == 23  # no duplicate lead per company
    for pending, outcome in _OUT:
        contact = contacts[pending.request.contact_user_id]
        assert contact["name"] == pending.request.contact_name
        assert outcome.contact_ids == (contact["id"],)
        assert leads[contact["lead_id"]]["custom." + cf["company"]] == pending.request.lead_company_id


def test_a_flush_is_applied_in_event_time_whatever_the_leads_ties_in_arrival_order():
    times = ["2026-11-01T10:00:02Z", "2026-11-01T12:00:01+02:00", None, "2026-11-01T10:00:02.000Z", "nonsense"]
    pendings = [
        Pending(str(n), UpsertRequest(lead_company_id=company, contact_user_id=str(n), timestamp=at))
        for n, (company, at) in enumerate(zip(["b", "a", "c", "a", "b"], times, strict=True))
    ]
    # Requests without a usable time come first (as collapsing sorts); 12:00:01+02:00 is 10:00:01Z.
    assert [p.person for p in flush_order(pendings)] == ["2", "4", "1", "0", "3"]


def _labels(p: beam.Pipeline) -> set[str]:
    labels: set[str] = set()

    class _Visit(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node) -> None:  # noqa: ANN001
            labels.add(node.full_label)

        def enter_composite_transform(self, node) -> None:  # noqa: ANN001
            labels.add(node.full_label)

    p.visit(_Visit())
    return labels


def test_only_a_writer_that_holds_its_input_to_the_end_gets_it_in_packs():
    spec = EngineSpec("http://127.0.0.1:9", KeySource(), Settings())
    for streaming, in_event_time, packed in ((False, True, True), (False, False, False), (True, True, False)):
        p = beam.Pipeline()
        _ = p | beam.Create([]) | "W" >> UpsertToClose(
            spec, shards=2, batch_size=7, flush_seconds=5.0, streaming=streaming, dry_run=False,
            in_event_time=in_event_time,
        )
        labels = _labels(p)
        assert ("W/PackByLeadShard" in labels) is packed, (streaming, in_event_time)
        assert ("W/KeyByLeadShard" in labels) is not packed, (streaming, in_event_time)


def test_the_writer_opens_packs_and_takes_requests_one_by_one_alike():
    pendings = [Pending(str(n), UpsertRequest(contact_user_id=str(n))) for n in range(5)]
    assert list(held([pack(pendings[:3]), pendings[3], pack([]), pendings[4]])) == pendings


# --------------------------------------------------------------------------- event ids kept aside


def test_a_flush_hands_requests_on_without_their_event_ids_and_gets_them_back_whole() -> None:
    aside = EventIdsAside()
    request = UpsertRequest(contact_user_id="u1", event_ids=("m1", "m2", "m3"), timestamp="2026-11-01T00:00:00.000000Z")
    pending = Pending(person="user:u1", request=request, events=("e",))
    bare = aside.put(pending)
    assert bare.request.event_ids == () and len(aside) == 1
    assert bare.request.fingerprint() == request.fingerprint() and bare.events == ("e",)
    assert aside.whole(bare).request == request and len(aside) == 1  # the engine's thread: nothing taken
    assert aside.request(bare.request) == request
    assert aside.take(bare).request == request and len(aside) == 0
    assert aside.take(bare) is bare  # taken once


@pytest.mark.parametrize(
    "event_ids",
    [("m1",), (), ("m\x001", "m2"), ("m1", 2)],
    ids=["one id", "none", "an id holding the separator", "an id that is not text"],
)
def test_requests_whose_ids_would_not_come_back_the_same_are_left_whole(event_ids: tuple) -> None:
    aside = EventIdsAside()
    pending = Pending(person="user:u1", request=UpsertRequest(contact_user_id="u1", event_ids=event_ids))
    assert aside.put(pending) is pending and len(aside) == 0
