"""The --state directory under hostile or broken conditions: paths that leave it, corrupted files,
leftovers of failed runs, and two runs at once."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.snapshot_state import MANIFEST, POINTER, SnapshotState
from tests.cli.helpers_cli import assert_one_line_error, invoke

from .helpers import rows, snapshot_config, sync, write_parquet

pytestmark = pytest.mark.integration


def _generations(state: Path) -> list[str]:
    return sorted(p.name for p in state.iterdir() if p.name.startswith("gen-"))


def _live(state: Path) -> Path:
    current = SnapshotState(str(state)).current()
    assert current is not None
    return Path(current.path)


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A directory next to the state that nothing may delete."""
    path = tmp_path / "victim"
    path.mkdir()
    (path / "precious.txt").write_text("keep me")
    (path / "sub").mkdir()
    (path / "sub" / "more.txt").write_text("keep me too")
    yield path
    assert (path / "precious.txt").read_text() == "keep me"
    assert (path / "sub" / "more.txt").read_text() == "keep me too"


# ---------------------------------------------------------------------------- paths outside --state


@pytest.mark.parametrize("kind", ["relative", "absolute", "symlink", "pointer-file"])
def test_a_manifest_path_outside_the_state_is_refused_and_nothing_is_deleted(
    sim, tmp_path: Path, monkeypatch, victim: Path, kind: str
) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    export = write_parquet(tmp_path / "v1.parquet", rows(6))
    sync(sim, config, export, state, monkeypatch)
    live = _live(state)
    manifest_file = live / MANIFEST
    manifest = json.loads(manifest_file.read_text())
    if kind == "relative":
        manifest["previous"] = "../victim"
    elif kind == "absolute":
        manifest["previous"] = str(victim)
    elif kind == "symlink":
        link = state / "gen-20000101T000000-deadbeef"
        link.symlink_to(victim, target_is_directory=True)
        manifest["previous"] = link.name
    else:
        manifest["previous"] = "CURRENT"  # inside the state, but not a generation: deleting it breaks the state
    manifest_file.write_text(json.dumps(manifest))
    pointer = (state / POINTER).read_text()

    with pytest.raises(RuntimeError) as caught:
        sync(sim, config, export, state, monkeypatch)
    message = str(caught.value)
    assert str(manifest_file) in message and '"previous"' in message, message
    assert "outside" in message or "not a generation" in message, message
    assert (state / POINTER).read_text() == pointer
    assert live.is_dir() and manifest_file.exists()


def test_a_pointer_naming_a_directory_outside_the_state_is_refused(
    sim, tmp_path: Path, monkeypatch, victim: Path
) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    export = write_parquet(tmp_path / "v1.parquet", rows(4))
    sync(sim, config, export, state, monkeypatch)
    (victim / MANIFEST).write_text(json.dumps({"previous": None, "primary_key": ["user_id"]}))
    (state / POINTER).write_text("../victim\n")

    with pytest.raises(RuntimeError) as caught:
        sync(sim, config, export, state, monkeypatch, full=True)
    message = str(caught.value)
    assert str(state / POINTER) in message and "../victim" in message, message
    (victim / MANIFEST).unlink()


# ---------------------------------------------------------------------------- corrupted state files


def _cli_args(sim, config, tmp_path: Path, state: Path, export: str) -> list[str]:
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    return [
        "snapshot-sync",
        "--config",
        str(path),
        "--state",
        str(state),
        "--close-url",
        sim.base_url,
        "--input",
        export,
    ]


def _damage(live: Path, how: str) -> Path:
    if how.endswith("manifest"):
        target = live / MANIFEST
    else:
        target = sorted(live.glob("state*.parquet"))[0]
    data = target.read_bytes()
    if how.startswith("truncated"):
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(b"\x00garbage\xff" * 50)
    return target


@pytest.mark.parametrize("how", ["truncated-parquet", "garbage-parquet", "truncated-manifest", "garbage-manifest"])
def test_a_corrupted_state_file_is_named_and_full_rebuilds_without_reading_it(
    sim, tmp_path: Path, monkeypatch, how: str
) -> None:
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    export = write_parquet(tmp_path / "v1.parquet", rows(20))
    sync(sim, config, export, state, monkeypatch)
    damaged_generation = _live(state)
    damaged = _damage(damaged_generation, how)

    result = invoke(_cli_args(sim, config, tmp_path, state, export))
    line = assert_one_line_error(result, str(damaged), "--full")
    assert "Traceback" not in result.output and len(line) < 400, line

    rebuilt = sync(sim, config, export, state, monkeypatch, full=True)
    assert rebuilt.failed == 0
    assert rebuilt.count("snapshot_new") == 20 and rebuilt.count("snapshot_resync") == 0  # the old state was not read
    current = SnapshotState(str(state)).current()
    assert current is not None and current.name == rebuilt.generation
    assert current.manifest["previous"] is None
    assert not damaged_generation.exists()  # nothing refers to it any more

    after = sync(sim, config, export, state, monkeypatch)
    assert after.count("snapshot_unchanged") == 20 and after.count("snapshot_new") == 0


# ---------------------------------------------------------------------------- leftovers of failed runs


def test_orphan_generations_are_removed_by_the_next_successful_run(
    sim, tmp_path: Path, monkeypatch, victim: Path
) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    export = write_parquet(tmp_path / "v1.parquet", rows(6))
    first = sync(sim, config, export, state, monkeypatch)
    handle = SnapshotState(str(state))
    orphans = []
    for _ in range(2):  # what crashed runs leave: a generation nothing points to
        generation = handle.new_generation()
        Path(generation.path).mkdir()
        (Path(generation.path) / "state-00000-of-00001.parquet").write_bytes(b"half written")
        orphans.append(generation.name)
    (state / "notes").mkdir()
    (state / "notes" / "n.txt").write_text("not ours")
    (state / "gen-but-a-file").write_text("not a directory")
    (state / "gen-20000101T000000-linked").symlink_to(victim, target_is_directory=True)

    second = sync(sim, config, export, state, monkeypatch)
    assert _generations(state) == sorted([first.generation, second.generation, "gen-but-a-file", "gen-20000101T000000-linked"])
    assert (state / "notes" / "n.txt").read_text() == "not ours"
    assert (state / "gen-20000101T000000-linked").is_symlink()

    third = sync(sim, config, export, state, monkeypatch)
    assert first.generation not in _generations(state)
    assert {second.generation, third.generation} <= set(_generations(state))


# ---------------------------------------------------------------------------- one run at a time


def test_a_second_run_on_a_locked_state_is_refused_before_anything_changes(
    sim, tmp_path: Path, monkeypatch
) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    export = write_parquet(tmp_path / "v1.parquet", rows(6))
    sync(sim, config, export, state, monkeypatch)
    pointer, generations, contacts = (state / POINTER).read_text(), _generations(state), sim.contacts()
    more = write_parquet(tmp_path / "v2.parquet", rows(8))

    with (state / ".lock").open("a") as held:  # another snapshot-sync holding the state
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="in use by another snapshot-sync") as caught:
            sync(sim, config, more, state, monkeypatch)
        assert str(state) in str(caught.value)
        assert (state / POINTER).read_text() == pointer and _generations(state) == generations
        assert sim.contacts() == contacts
        plan = sync(sim, config, more, state, monkeypatch, dry_run=True, plan_dir=str(tmp_path / "plan"))
        assert plan.count("snapshot_new") == 2  # a dry run writes no state, so it needs no lock

    after = sync(sim, config, more, state, monkeypatch)
    assert after.count("snapshot_new") == 2


def test_the_state_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    state = SnapshotState(str(tmp_path / "state"))
    with state.lock():
        with pytest.raises(RuntimeError, match="in use by another snapshot-sync"):
            with SnapshotState(str(tmp_path / "state")).lock():
                pass
    with state.lock():
        pass


def test_a_state_file_damaged_inside_is_named_and_full_skips_it(sim, tmp_path: Path, monkeypatch) -> None:
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    export = write_parquet(tmp_path / "v1.parquet", rows(20))
    sync(sim, config, export, state, monkeypatch)
    target = sorted(_live(state).glob("state*.parquet"))[0]
    data = bytearray(target.read_bytes())
    data[4:24] = bytes(b ^ 0xFF for b in data[4:24])  # the first page header: the footer still reads
    target.write_bytes(bytes(data))

    with pytest.raises(RuntimeError) as caught:
        sync(sim, config, export, state, monkeypatch)
    message = str(caught.value)
    assert str(target) in message and "--full" in message and "while running" not in message, message

    rebuilt = sync(sim, config, export, state, monkeypatch, full=True)
    assert rebuilt.failed == 0 and rebuilt.count("snapshot_state_files_unreadable") == 1
    after = sync(sim, config, export, state, monkeypatch)
    assert after.count("snapshot_unchanged") == 20


@pytest.mark.parametrize("column", ["key", "fingerprint"])
def test_a_state_file_with_a_null_cell_is_named_and_full_skips_it(
    sim, tmp_path: Path, monkeypatch, column: str
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    export = write_parquet(tmp_path / "v1.parquet", rows(20))
    sync(sim, config, export, state, monkeypatch)
    target = sorted(_live(state).glob("state*.parquet"))[0]
    table = pq.read_table(target)
    cells = table.column(column).to_pylist()
    cells[3] = None
    field = table.schema.field(column)
    pq.write_table(table.set_column(table.schema.get_field_index(column), field, pa.array(cells, field.type)), target)

    result = invoke(_cli_args(sim, config, tmp_path, state, export))
    line = assert_one_line_error(result, str(target), f"a null {column}", "--full")
    assert "Traceback" not in result.output and "while running" not in line, line

    rebuilt = sync(sim, config, export, state, monkeypatch, full=True)
    assert rebuilt.failed == 0 and rebuilt.count("snapshot_state_files_unreadable") == 1
    assert sync(sim, config, export, state, monkeypatch).count("snapshot_unchanged") == 20


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_current_pointer_is_damage_that_full_rebuilds(
    sim, tmp_path: Path, monkeypatch, content: str
) -> None:
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    config = snapshot_config(sim, tmp_path)
    state = tmp_path / "state"
    export = write_parquet(tmp_path / "v1.parquet", rows(6))
    sync(sim, config, export, state, monkeypatch)
    (state / POINTER).write_text(content)

    result = invoke(_cli_args(sim, config, tmp_path, state, export))
    assert_one_line_error(result, str(state / POINTER), "damaged", "empty", "--full")

    rebuilt = invoke([*_cli_args(sim, config, tmp_path, state, export), "--full"])
    assert rebuilt.exit_code == 0, rebuilt.output
    current = SnapshotState(str(state)).current()
    assert current is not None and current.manifest["counts"]["snapshot_new"] == 6
    assert sync(sim, config, export, state, monkeypatch).count("snapshot_unchanged") == 6


# ---------------------------------------------------------------------------- remote state (no lock, no symlinks)


def test_remote_names_are_checked_without_touching_the_store() -> None:
    state = SnapshotState("gs://bucket/state/")
    assert not state.local
    assert state._generation_path("gen-20240101T000000-abcd1234", "m", "f") == (
        "gs://bucket/state/gen-20240101T000000-abcd1234"
    )
    for name, problem in [
        ("../other", "outside"),
        ("gs://elsewhere/x", "outside"),
        ("sub/../../x", "outside"),
        ("CURRENT", "not a generation"),
        (7, "not a generation"),
    ]:
        with pytest.raises(RuntimeError, match=problem):
            state._generation_path(name, "gs://bucket/state/gen-x/_manifest.json", '"previous"')


def test_remote_orphans_are_removed_only_when_old(tmp_path: Path) -> None:
    state = SnapshotState(str(tmp_path))
    state.local = False  # what a gs:// state does, on the local filesystem
    names = {
        "old": "gen-20000101T000000-00000001",
        "kept": "gen-20000101T000000-00000002",
        "young": state.new_generation().name,
        "odd": "gen-unstamped",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "state-0.parquet").write_bytes(b"x")
    removed = state.remove_orphans({names["kept"], "gen-live"})
    assert removed == [names["old"]]
    assert not (tmp_path / names["old"] / "state-0.parquet").exists()
    for key in ("kept", "young", "odd"):
        assert (tmp_path / names[key] / "state-0.parquet").exists()
