"""Where the job keeps its created-id ledger: under the one state location (--state-location, else the
user's cache), never beside one run's dead letters; a distributed runner must be given a shared URL."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from closecrm.engine.writes.ledger import namespace
from pipeline.config import load_config
from pipeline.runjob import RunRequest, created_ids_location, shape_for
from pipeline.sources import SourceOptions
from pipeline.state_location import StateLocationError, announce, ledger_location, runs_on_this_machine

URL = "https://api.close.com/api/v1/"


def request(**kw: object) -> RunRequest:
    return RunRequest(source=SourceOptions(source="files", input="e.jsonl"), close_url=URL, **kw)  # type: ignore[arg-type]


def expected(root: str | Path) -> str:
    return str(Path(root) / "created-ids" / namespace(URL))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "close-sync"


def test_the_state_location_given_wins(tmp_path: Path) -> None:
    req = request(state_location=str(tmp_path / "state"), dead_letter_dir=str(tmp_path / "dead"))
    assert created_ids_location(req, on_this_machine=True) == expected(tmp_path / "state")
    gcs = request(state_location="gs://bucket/state", dead_letter_dir="gs://bucket/dead")
    assert created_ids_location(gcs, on_this_machine=False) == f"gs://bucket/state/created-ids/{namespace(URL)}"


def test_the_ledger_does_not_follow_the_dead_letters(tmp_path: Path, cache: Path) -> None:
    """Two runs with a dead-letter folder each share one ledger: the user's cache."""
    first = created_ids_location(request(dead_letter_dir=str(tmp_path / "day1")), on_this_machine=True)
    second = created_ids_location(request(dead_letter_dir=str(tmp_path / "day2")), on_this_machine=True)
    assert first == second == expected(cache)


def test_a_run_on_this_machine_defaults_to_the_users_cache(tmp_path: Path, cache: Path, monkeypatch) -> None:  # noqa: ANN001
    assert created_ids_location(request(), on_this_machine=True) == expected(cache)
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert created_ids_location(request(), on_this_machine=True) == expected(
        tmp_path / "home" / ".cache" / "close-sync"
    )


def test_a_distributed_run_needs_a_shared_url(tmp_path: Path) -> None:
    with pytest.raises(StateLocationError, match="distributed runner needs --state-location URL"):
        created_ids_location(request(dead_letter_dir="gs://bucket/dead"), on_this_machine=False)
    for local in (str(tmp_path / "state"), "relative/state", f"file://{tmp_path}/state"):
        with pytest.raises(StateLocationError, match="path on this machine.*gs://"):
            created_ids_location(request(state_location=local), on_this_machine=False)
    # turned off, it needs none
    assert created_ids_location(request(remember_created_ids=False), on_this_machine=False) is None


def test_a_location_with_credentials_is_refused_without_echoing_them() -> None:
    for url in ("s3://user:hunter22@bucket/state", "https://store.example/state?sig=hunter22"):
        with pytest.raises(StateLocationError) as caught:
            ledger_location(url, URL, on_this_machine=False)
        assert "hunter22" not in str(caught.value) and "credentials" in str(caught.value)


def test_it_can_be_turned_off(tmp_path: Path) -> None:
    req = request(state_location=str(tmp_path), remember_created_ids=False)
    assert created_ids_location(req, on_this_machine=True) is None


def test_which_runners_share_this_machines_files() -> None:
    assert runs_on_this_machine(PipelineOptions([]))
    assert runs_on_this_machine(PipelineOptions(["--runner=PrismRunner"]))  # loopback workers by default
    assert not runs_on_this_machine(PipelineOptions(["--runner=PrismRunner", "--environment_type=DOCKER"]))
    pool = ["--runner=PrismRunner", "--environment_type=EXTERNAL"]
    assert runs_on_this_machine(PipelineOptions([*pool, "--environment_config=localhost:50000"]))
    assert not runs_on_this_machine(PipelineOptions([*pool, "--environment_config=workers.internal:50000"]))
    assert not runs_on_this_machine(PipelineOptions(["--runner=DataflowRunner"]))
    assert not runs_on_this_machine(PipelineOptions(["--runner=FlinkRunner"]))


def test_the_line_printed_at_start_names_the_location(tmp_path: Path) -> None:
    out = io.StringIO()
    announce(expected(tmp_path / "state"), out)
    assert out.getvalue() == (
        f"state location: {tmp_path / 'state'} (created-id ledger: {expected(tmp_path / 'state')})\n"
    )
    out = io.StringIO()
    announce(None, out)
    assert out.getvalue().startswith("state location: none (--no-created-ids)")


def test_the_engine_spec_carries_it_to_the_workers(tmp_path: Path) -> None:
    spec = shape_for(
        load_config(None), request(state_location=str(tmp_path)), streaming=False, local=True
    ).engine
    assert spec.created_ids == expected(tmp_path)


# A Close nobody listens on: a command that got as far as checking Close would say it cannot reach it.
NOWHERE = "http://127.0.0.1:9/api/v1/"
DATAFLOW = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/tmp"]


def _invoke(args: list[str]):  # noqa: ANN202
    from click.testing import CliRunner

    from pipeline.cli import main

    return CliRunner().invoke(main, args, env={"CLOSE_API_KEY": "test_key_not_real"})


def _run_args(tmp_path: Path, *extra: str) -> list[str]:
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "identify", "messageId": "m1", "userId": "u1"}\n')
    return ["run", "--source", "files", "--input", str(events), "--close-url", NOWHERE, *extra]


def test_run_on_a_distributed_runner_without_a_state_location_stops_before_anything_runs(tmp_path: Path) -> None:
    result = _invoke(_run_args(tmp_path, "--dead-letter", "gs://b/dead", *DATAFLOW))
    assert result.exit_code == 1
    assert "a run on a distributed runner needs --state-location URL" in result.output
    assert "cannot reach Close" not in result.output and "state location:" not in result.output

    local = _invoke(_run_args(tmp_path, "--dead-letter", "gs://b/dead", "--state-location", str(tmp_path), *DATAFLOW))
    assert local.exit_code == 1 and "is a path on this machine" in local.output


def test_snapshot_sync_on_a_distributed_runner_without_a_state_location_stops_before_anything_runs(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "settings: {lead_custom_field_id_for_company_id: cf_c, contact_custom_field_id_for_user_id: cf_u}\n"
        "snapshot: {primary_key: [user_id], fields: {contact_user_id: user_id}}\n"
    )
    args = ["snapshot-sync", "--config", str(config), "--input", str(tmp_path / "none-*.parquet")]
    result = _invoke([*args, "--state", "gs://b/fingerprints", "--close-url", NOWHERE, *DATAFLOW])
    assert result.exit_code == 1
    assert "a run on a distributed runner needs --state-location URL" in result.output


def test_the_old_ledger_option_is_refused_naming_the_new_one(tmp_path: Path) -> None:
    result = _invoke(_run_args(tmp_path, "--created-ids-dir", str(tmp_path / "ids")))
    assert result.exit_code == 2
    assert f"--created-ids-dir is replaced by --state-location: give --state-location {tmp_path / 'ids'}" in (
        result.output
    )
