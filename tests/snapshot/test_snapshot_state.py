"""The --state directory: a generation becomes live only on commit; older ones are pruned."""

from __future__ import annotations

from pathlib import Path

from pipeline.snapshot_state import SnapshotState


def _generation(state: SnapshotState) -> str:
    generation = state.new_generation()
    Path(generation.path).mkdir(parents=True)
    (Path(generation.path) / "state-00000-of-00001.parquet").write_bytes(b"x")
    return generation.name


def test_nothing_is_live_until_a_generation_is_committed(tmp_path: Path) -> None:
    state = SnapshotState(str(tmp_path))
    assert state.current() is None
    generation = state.new_generation()
    Path(generation.path).mkdir()
    assert state.current() is None  # an abandoned (crashed) run changes nothing
    state.commit(generation, {"primary_key": ["id"]})
    current = state.current()
    assert current is not None and current.name == generation.name
    assert current.manifest["primary_key"] == ["id"] and current.manifest["previous"] is None
    assert not list(tmp_path.glob(".CURRENT*"))


def test_commit_keeps_the_live_and_the_previous_generation(tmp_path: Path) -> None:
    state = SnapshotState(str(tmp_path))
    names = []
    for _ in range(3):
        generation = state.new_generation()
        Path(generation.path).mkdir()
        (Path(generation.path) / "state-0.parquet").write_bytes(b"x")
        state.commit(generation, {})
        names.append(generation.name)
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("gen-"))
    assert kept == sorted(names[1:])
    assert state.current().manifest["previous"] == names[1]
