"""One writer per folder (``extune.locks``): another process holding a folder is refused with
its PID; the lock dies with its holder; the commands that write a folder take it before they
change anything (a search's ``--resume``, a study's, ``extune train --out``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from extune.cli import main
from extune.locks import LOCK_NAME, FolderInUse, folder_lock, lock_folder, unlock_folder

HOLD = ("import sys, time\n"
        "from extune.locks import lock_folder\n"
        "lock_folder(sys.argv[1], 'search')\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")


@pytest.fixture
def held(tmp_path):
    """``held(folder)``: another process holds ``folder``'s lock (killed at the test's end);
    returns it."""
    procs: list[subprocess.Popen] = []

    def hold(folder: Path) -> subprocess.Popen:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_folder_held_by_another_process_is_refused_with_its_pid_until_it_dies(tmp_path,
                                                                                held):
    holder = held(tmp_path / "s")
    with pytest.raises(FolderInUse) as refused:
        lock_folder(tmp_path / "s", "search")
    assert f"{tmp_path / 's'} is in use: another extune search (process {holder.pid} on" \
        in str(refused.value)
    holder.send_signal(signal.SIGKILL)  # no clean-up: the kernel drops the lock
    holder.wait()
    with folder_lock(tmp_path / "s", "search") as path:
        assert path == (tmp_path / "s").resolve()
        assert (path / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_the_lock_is_reentrant_in_a_process_and_released_by_the_last_holder(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    lock_folder(folder, "search")
    lock_folder(folder, "search")  # e.g. a study resuming its own search
    unlock_folder(folder)
    probe = [sys.executable, "-c", "import sys; from extune.locks import lock_folder; "
             "lock_folder(sys.argv[1], 'search')", str(folder)]
    assert subprocess.run(probe, capture_output=True).returncode != 0  # still held
    unlock_folder(folder)
    assert subprocess.run(probe, capture_output=True).returncode == 0


def _search_folder(folder: Path) -> str:
    """A new search folder (no trial yet); returns its ``search.json``."""
    from extune.search.folder import SearchDir
    from extune.search.settings import SearchSettings
    from extune.spaces import get_space
    from extune.train.config import Config

    settings = SearchSettings(out=str(folder.parent), name=folder.name)
    made = SearchDir.create(settings, Config(), get_space("ce"))
    unlock_folder(made.path)  # create holds it for this process
    made.set_status("interrupted")
    return (folder / "search.json").read_text()


def test_a_second_resume_of_a_search_in_use_is_refused_and_changes_nothing(tmp_path, held,
                                                                           capsys):
    text = _search_folder(tmp_path / "runs" / "s")
    holder = held(tmp_path / "runs" / "s")
    before = sorted(p.name for p in (tmp_path / "runs" / "s").iterdir())
    assert main(["search", "--resume", str(tmp_path / "runs" / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"process {holder.pid}" in err and "in use" in err
    assert (tmp_path / "runs" / "s" / "search.json").read_text() == text
    assert sorted(p.name for p in (tmp_path / "runs" / "s").iterdir()) == before


def test_a_second_resume_of_a_study_in_use_is_refused(tmp_path, held, capsys):
    folder = tmp_path / "runs" / "st"
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps({"name": "st", "settings": {}}))
    holder = held(folder)
    assert main(["study", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"process {holder.pid}" in err and "in use" in err


def test_a_second_training_into_an_out_in_use_is_refused_before_it_writes(tmp_path, held,
                                                                           tiny_args, capsys):
    holder = held(tmp_path / "run")
    code = main(["train", *tiny_args, "--no-track", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run'} is in use: another extune training (process {holder.pid}" in err
    assert "choose another --out" in err
    assert [p.name for p in (tmp_path / "run").iterdir()] == [LOCK_NAME]
