"""The domain reaches URLs only through the object store it is given; local files stand in otherwise."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from closecrm.engine.writes.ledger import CreatedIdLedger
from closecrm.journal import Journal
from closecrm.storage import LOCAL_OBJECTS, read_secret_file
from closecrm.wiring import KeySource
from transforms.objects import BEAM_OBJECTS, BeamObjects


def test_local_objects_are_written_whole_listed_read_and_deleted(tmp_path: Path) -> None:
    a, b = str(tmp_path / "d" / "a.ids"), str(tmp_path / "d" / "b.ids")
    LOCAL_OBJECTS.write(b, b"two")
    LOCAL_OBJECTS.write(a, b"one")
    assert LOCAL_OBJECTS.list(str(tmp_path / "d" / "*.ids")) == [a, b]
    assert LOCAL_OBJECTS.read(a) == b"one"
    LOCAL_OBJECTS.delete(a)
    assert LOCAL_OBJECTS.list(str(tmp_path / "d" / "*")) == [b]  # no temporary file left behind


@pytest.mark.parametrize("act", ["list", "read", "write", "delete"])
def test_without_an_object_store_a_url_is_refused_by_name(act: str) -> None:
    args = ("gs://bucket/x", b"data") if act == "write" else ("gs://bucket/x",)
    with pytest.raises(OSError, match="no object store to reach gs://bucket/x"):
        getattr(LOCAL_OBJECTS, act)(*args)


def test_a_key_file_at_a_url_is_read_through_the_store_the_job_gives(tmp_path: Path) -> None:
    class Bucket:  # an object store of one object, as a test of what the domain asks of one
        def read(self, url: str) -> bytes:
            assert url == "gs://bucket/key"
            return b"api_secret\n"

    assert read_secret_file("gs://bucket/key", Bucket()) == b"api_secret\n"  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"cannot read the API key file gs://bucket/key: OSError$"):
        KeySource(path="gs://bucket/key").read()


def test_beams_object_store_carries_the_ledger_and_the_journal(tmp_path: Path) -> None:
    assert pickle.loads(pickle.dumps(BEAM_OBJECTS)) == BeamObjects()  # workers get it in a DoFn
    writer = CreatedIdLedger(str(tmp_path / "ids"), object_store=True, objects=BEAM_OBJECTS)
    writer.record("lead", "lead_1", ["company:acme"])
    writer.close()
    assert len(BEAM_OBJECTS.list(str(tmp_path / "ids" / "*.ids"))) == 1
    reader = CreatedIdLedger(str(tmp_path / "ids"), object_store=True, objects=BEAM_OBJECTS)
    assert reader.refresh() == 1 and reader.ids("company:acme") == ("lead_1",)

    log = str(tmp_path / "gs-like" / "audit.jsonl")
    journal = Journal(log, "run-objects", BEAM_OBJECTS)
    journal._file._write_part(['{"n": 1}'])  # what an append does on a URL: one object beside the path
    parts = BEAM_OBJECTS.list(str(tmp_path / "gs-like" / "audit.part-*.jsonl"))
    assert [BEAM_OBJECTS.read(p) for p in parts] == [b'{"n": 1}\n']
