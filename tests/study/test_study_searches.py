"""How many method searches a study runs at once, and a search driver that fails (its Ray is
unreachable): one line naming the search, its error and its log."""

from __future__ import annotations

import pytest

from extune.errors import ExtuneError
from extune.study.searches import SearchJob, run_searches, searches_at_once
from extune.study.settings import StudySettings


@pytest.mark.parametrize("cpus, gpus, given, expected", [
    (2, 0, {}, 1),  # one search's 2 trials fill 2 CPUs: one after another
    (8, 0, {}, 3),  # 8 CPUs hold three searches of 2 trials (at most the 3 searches)
    (8, 0, {"max_concurrent": 1}, 3),
    (6, 0, {"trials": 4}, 1),  # each search would take 4 of the 6 CPUs
    (16, 2, {}, 1),  # one GPU per trial by default: 2 GPUs hold one search's 2 trials
    (16, 2, {"gpus_per_trial": 0.5}, 2),
    (2, 0, {"searches_at_once": 2}, 2),  # asked: Ray queues what does not fit
    (64, 0, {"searches_at_once": 1}, 1),
])
def test_searches_at_once_is_what_the_cluster_holds_unless_given(monkeypatch, cpus, gpus,
                                                                  given, expected):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": cpus, "GPU": gpus})
    settings = StudySettings(methods=["ce", "supcon", "edda"], **{"trials": 2, **given})
    assert searches_at_once(settings, 3) == expected
    assert searches_at_once(settings, 1) == 1


def test_a_driver_that_fails_stops_the_study_with_its_error_and_log(tmp_path):
    said: list[str] = []
    job = SearchJob("ce", tmp_path / "ce", settings={"space": "ce"})
    with pytest.raises(ExtuneError) as error:
        run_searches([job], 1, "127.0.0.1:9", said.append, tmp_path / "drivers")
    message = str(error.value)
    assert message.startswith("the search ce failed (exit 2): error: ")
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in message and str(tmp_path / "drivers" / "ce.log") in message
    assert "\n" not in message
    assert any(line.startswith("[ce] error: ") for line in said)  # printed as it came


DRIVER = """
import pathlib, signal, sys, time
def stop(signum, frame):
    pathlib.Path(sys.argv[1]).write_text(signal.Signals(signum).name)
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def test_ctrl_c_gives_each_running_driver_one_stop_and_waits_for_it(tmp_path, monkeypatch):
    """Ctrl-C reaches the study alone (its drivers have sessions of their own): the study passes
    one SIGINT to each running driver, waits for each to end, and stops; a driver not started
    yet is never started."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from extune.study import searches

    def fake_start(job, address, say, work):
        process = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / job.name)],
                                   stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert process.stdout.readline().strip() == "ready"
        job.started = time.time()
        follower = threading.Thread(target=lambda: None)
        follower.start()
        return process, follower

    monkeypatch.setattr(searches, "_start", fake_start)
    monkeypatch.setattr(searches, "STOP_WAIT_S", 10.0)  # a driver not stopped: SIGKILL, -9
    jobs = [SearchJob(name, tmp_path / name, settings={}) for name in ("ce", "supcon", "edda")]
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        run_searches(jobs, 2, "127.0.0.1:9", lambda line: None, tmp_path)
    assert [j.code for j in jobs] == [130, 130, None]  # both stopped and waited for
    assert (tmp_path / "ce").read_text() == (tmp_path / "supcon").read_text() == "SIGINT"
    assert jobs[2].started is None and not (tmp_path / "edda").exists()


def test_a_driver_whose_study_was_killed_stops_itself(tmp_path):
    """The driver's watch: once its parent (the study) is gone, it sends itself SIGTERM, which
    stops its search as a stopped ``extune search`` (here: a handler that says so)."""
    import signal
    import subprocess
    import sys
    import time

    driver = ("import os, pathlib, signal, sys, time\n"
              "from extune.study.searches import _watch_parent\n"
              "def stop(signum, frame):\n"
              "    pathlib.Path(sys.argv[1]).write_text(signal.Signals(signum).name)\n"
              "    sys.exit(143)\n"
              "signal.signal(signal.SIGTERM, stop)\n"
              "_watch_parent(os.getppid())\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")
    study = ("import subprocess, sys, time\n"
             f"subprocess.Popen([sys.executable, '-c', {driver!r}, sys.argv[1]])\n"
             "time.sleep(60)\n")
    flag = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-c", study, str(flag)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        assert not flag.exists()
        process.send_signal(signal.SIGKILL)  # the study killed: the driver is orphaned
        deadline = time.time() + 15
        while not flag.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert flag.exists() and flag.read_text() == "SIGTERM"
    finally:
        process.kill()
        process.wait()
