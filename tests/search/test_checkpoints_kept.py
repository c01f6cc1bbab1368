"""Two checkpoints per running trial (no forced snapshot of the whole experiment at every
epoch), the latest only once a trial has ended."""

from __future__ import annotations

from types import SimpleNamespace

from extune.search.engine.tuner import CHECKPOINTS_KEPT, keep_latest_checkpoints


def _trial(folder, status: str, latest: int | None, saved: range):
    from ray import tune

    for i in saved:
        (folder / f"checkpoint_{i:06d}").mkdir(parents=True)
        (folder / f"checkpoint_{i:06d}" / "checkpoint.pt").write_bytes(b"x")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text("{}\n")
    checkpoint = None if latest is None else tune.Checkpoint.from_directory(
        str(folder / f"checkpoint_{latest:06d}"))
    return SimpleNamespace(status=status, checkpoint=checkpoint)


def _left(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_ended_trial_keeps_its_latest_checkpoint_and_the_others_keep_theirs(tmp_path):
    assert CHECKPOINTS_KEPT == 2
    trials = {
        "ended": _trial(tmp_path / "ended", "TERMINATED", 5, range(4, 6)),
        "running": _trial(tmp_path / "running", "RUNNING", 3, range(2, 4)),
        "failed": _trial(tmp_path / "failed", "ERROR", 1, range(0, 2)),
        "never saved": _trial(tmp_path / "never", "TERMINATED", None, range(0)),
    }
    (tmp_path / "ended" / "checkpoint_tmp123").mkdir()  # not Ray's name of a checkpoint
    assert keep_latest_checkpoints(list(trials.values())) == 1
    assert _left(tmp_path / "ended") == ["checkpoint_000005", "checkpoint_tmp123", "result.json"]
    assert _left(tmp_path / "running") == ["checkpoint_000002", "checkpoint_000003", "result.json"]
    assert _left(tmp_path / "failed") == ["checkpoint_000000", "checkpoint_000001", "result.json"]
    assert keep_latest_checkpoints(list(trials.values())) == 0  # again: nothing more to do


def test_a_moved_search_is_left_as_it_is(tmp_path):
    trial = _trial(tmp_path / "t", "TERMINATED", 1, range(0, 2))
    (tmp_path / "t").rename(tmp_path / "moved")
    assert keep_latest_checkpoints([trial]) == 0
    assert _left(tmp_path / "moved") == ["checkpoint_000000", "checkpoint_000001", "result.json"]
