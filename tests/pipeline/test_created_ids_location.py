"""Where a run keeps its created-id ledger: the given directory, else beside the dead letters, else the user's cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from closecrm.created_ids import namespace
from pipeline.config import load_config
from pipeline.runjob import RunRequest, created_ids_location, shape_for
from pipeline.sources import SourceOptions

URL = "https://api.close.com/api/v1/"


def request(**kw: object) -> RunRequest:
    return RunRequest(source=SourceOptions(source="files", input="e.jsonl"), close_url=URL, **kw)  # type: ignore[arg-type]


def expected(root: str | Path) -> str:
    return str(Path(root) / "created-ids" / namespace(URL))


def test_an_explicit_directory_wins(tmp_path: Path) -> None:
    req = request(created_ids_dir=str(tmp_path / "ids"), dead_letter_dir=str(tmp_path / "dead"))
    assert created_ids_location(req, local=True) == expected(tmp_path / "ids")
    assert created_ids_location(req, local=False) == expected(tmp_path / "ids")


def test_by_default_it_sits_beside_the_dead_letters(tmp_path: Path) -> None:
    req = request(dead_letter_dir=str(tmp_path / "dead"))
    assert created_ids_location(req, local=True) == expected(tmp_path / "dead")
    gcs = request(dead_letter_dir="gs://bucket/dead")
    assert created_ids_location(gcs, local=False) == f"gs://bucket/dead/created-ids/{namespace(URL)}"


def test_a_local_run_without_dead_letters_uses_the_users_cache(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert created_ids_location(request(), local=True) == expected(tmp_path / "cache" / "close-sync")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert created_ids_location(request(), local=True) == expected(
        tmp_path / "home" / ".cache" / "close-sync"
    )


def test_a_distributed_run_without_a_shared_place_has_none(caplog: pytest.LogCaptureFixture) -> None:
    assert created_ids_location(request(), local=False) is None
    assert "no created-id ledger" in caplog.text


def test_it_can_be_turned_off(tmp_path: Path) -> None:
    req = request(dead_letter_dir=str(tmp_path), remember_created_ids=False)
    assert created_ids_location(req, local=True) is None


def test_the_engine_spec_carries_it_to_the_workers(tmp_path: Path) -> None:
    spec = shape_for(
        load_config(None), request(dead_letter_dir=str(tmp_path)), streaming=False, local=True
    ).engine
    assert spec.created_ids == expected(tmp_path)
