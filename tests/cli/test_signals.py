"""SIGTERM and SIGHUP end every command as Ctrl-C does (extune.signals): one line, exit 143 or
129 (130 for Ctrl-C), MLflow runs KILLED, nothing left RUNNING, no server or Ray process left,
and ``--resume`` completes every trial and epoch once.

The process tests send the signal as schedulers and terminals do, to the whole process group:
through ``timeout`` (which passes a signal it gets on to its whole group) and to the group of a
new session (``setsid``, as Slurm and systemd signal a job). Ray's processes are then out of
that group (``connect_ray``) and are stopped by the driver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from processes import free_port, port_answers, port_closes, read_until, search_runs, start, stop
from stores import sqlite_store

TINY = ["data.image_size=16", "data.train_size=200", "data.num_classes=4", "data.test_size=40",
        "model.backbone=tiny_cnn", "optim.batch_size=32", "eval.explain_samples=8",
        "eval.corruptions=[contrast]", "eval.grid_images=2", "runtime.progress=false"]
EXTUNE = [sys.executable, "-m", "extune.cli"]


def _run_python(code: str, ignored: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter, started with the ``ignored`` signals ignored (as a
    shell starts a background job, or ``nohup``)."""
    def ignore() -> None:
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, preexec_fn=ignore if ignored else None)


# ------------------------------------------------------------------ fast: the mechanism
@pytest.mark.parametrize("signum, words, code", [
    (signal.SIGTERM, "terminated (SIGTERM)", 143), (signal.SIGHUP, "hung up (SIGHUP)", 129),
    (signal.SIGINT, "interrupted", 130)])
def test_a_stop_signal_is_ctrl_c_with_its_own_words_and_exit_code(signum, words, code):
    done = _run_python(f"""
        import os, time
        from extune.signals import handle_signals, interrupt_exit_code, stop_words
        handle_signals()
        try:
            os.kill(os.getpid(), {int(signum)})
            time.sleep(5)
        except KeyboardInterrupt:
            print(stop_words(), interrupt_exit_code())
        """)
    assert done.stdout.strip() == f"{words} {code}", done.stderr


@pytest.mark.parametrize("signum, words, code", [
    (signal.SIGTERM, "terminated (SIGTERM)", 143), (signal.SIGHUP, "hung up (SIGHUP)", 129)])
def test_a_stop_signal_stops_a_command_started_in_the_background_of_a_script(signum, words,
                                                                            code):
    """A script's ``extune search ... &`` starts with SIGINT ignored (the shell's rule for
    background jobs): a SIGTERM routed to SIGINT did nothing, so only SIGKILL stopped it."""
    done = _run_python(f"""
        import os, time
        from extune.signals import handle_signals, interrupt_exit_code, stop_words
        handle_signals()
        try:
            os.kill(os.getpid(), {int(signum)})
            time.sleep(5)
            print("not stopped")
        except KeyboardInterrupt:
            print(stop_words(), interrupt_exit_code())
        """, ignored=(signal.SIGINT,))
    assert done.stdout.strip() == f"{words} {code}", done.stderr


def test_nohup_keeps_a_command_running_when_its_terminal_hangs_up():
    done = _run_python("""
        import os, signal, time
        from extune.signals import deferred, exit_at_once_on_signals, handle_signals
        handle_signals()
        os.kill(os.getpid(), signal.SIGHUP)
        with deferred():  # Ray starting
            os.kill(os.getpid(), signal.SIGHUP)
        exit_at_once_on_signals(1)
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.2)
        print("still running")
        """, ignored=(signal.SIGHUP,))
    assert done.stdout.strip() == "still running" and done.returncode == 0, done.stderr


def test_every_command_says_it_was_stopped_in_one_line_with_its_code(tmp_path):
    """typer turns a ``KeyboardInterrupt`` inside a command into a silent exit 130 (or an abort,
    exit 1): ``extune evaluate`` stopped by SIGHUP said nothing and exited 130."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal, time
        import extune.train.checkpoint_eval as saved

        def evaluate_checkpoint(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)

        saved.evaluate_checkpoint = evaluate_checkpoint
        from extune.cli import main
        print("exit", main(["evaluate", "--checkpoint", "run/checkpoint.pt"]))
        """)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "exit 129", done.stdout + done.stderr
    assert done.stderr.strip() == "hung up (SIGHUP)"


def test_a_stop_signal_sent_twice_at_once_is_one_stop():
    """``timeout`` sends its SIGTERM to the command and then to its whole group: the second is
    no second Ctrl-C (which would skip the clean stop); one later than REPEAT_S is."""
    done = _run_python("""
        import os, signal, time
        from extune.signals import REPEAT_S, handle_signals
        handle_signals()
        stops = []
        signal.signal(signal.SIGINT, lambda *a: stops.append(time.monotonic()))  # as Tune's
        for pause in (0.05, 0.05, REPEAT_S + 0.2, 0.05):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(pause)
        print(len(stops))
        """)
    assert done.stdout.strip() == "2", done.stderr


def test_signals_wait_while_ray_starts_and_a_second_one_does_not():
    done = _run_python("""
        import os, signal, time
        from extune.signals import deferred, handle_signals, interrupt_exit_code
        handle_signals()
        try:
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                print("the block ran to its end")
        except KeyboardInterrupt:
            print("then stopped", interrupt_exit_code())
        try:
            with deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
                print("not reached")
        except KeyboardInterrupt:
            print("the second one at once")
        """)
    assert done.stdout.split("\n")[:3] == ["the block ran to its end", "then stopped 143",
                                           "the second one at once"], done.stderr


def test_a_signal_after_the_last_line_exits_at_once_without_a_traceback():
    done = _run_python("""
        import os, signal, threading, time
        from extune.signals import exit_at_once_on_signals
        threading.Thread(target=time.sleep, args=(30,)).start()  # exit would wait for it
        exit_at_once_on_signals(143)
        print("the last line")
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while the process exits
        time.sleep(30)
        """)
    assert done.returncode == 143 and done.stdout == "the last line\n"
    assert done.stderr == ""  # no "Exception ignored in ... Traceback"


def test_the_sigint_handler_ray_tune_leaves_behind_is_put_back():
    """Tune's fit installs its SIGINT handler and leaves it: the next Ctrl-C (during the
    search's summary, a study's next stage) would be swallowed."""
    done = _run_python("""
        import os, signal, time
        from extune.signals import sigint_kept
        with sigint_kept():
            signal.signal(signal.SIGINT, lambda *a: None)  # as Tune's fit does
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            print("stopped")
        """)
    assert done.stdout.strip() == "stopped", done.stderr


def test_a_training_stopped_while_it_sends_its_last_writes_ends_its_run_killed(
        tiny_config, tmp_path, monkeypatch):
    """The model's upload can take long: a signal then must not leave the run RUNNING behind
    it (the writes stay in the journal for ``extune sync``)."""
    from extune.tracking import training_run as final
    from extune.tracking.client import mlflow_client

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("{}\n")  # training has started writing its folder
    uri = sqlite_store(tmp_path / "mlflow.db")
    run = final.open_final_run(tiny_config, out, tracking_uri=uri, experiment=None, lineage={},
                               resume=None, register=None)
    run.epoch({"epoch": 1, "val/accuracy": 0.5})

    def stopped(folder, timeout):
        raise KeyboardInterrupt  # a signal while the writer sends

    real_close = final.close_writer
    monkeypatch.setattr(final, "close_writer", stopped)
    with pytest.raises(KeyboardInterrupt):
        run.close(60)
    real_close(out / "tracking", timeout=30)  # this test's writer, not left running
    ended = mlflow_client(uri).get_run(run.run_id)
    assert (ended.info.status, ended.data.tags["extune.state"]) == ("KILLED", "interrupted")


def test_the_ray_hooks_that_keep_its_processes_apart_exist():
    """connect_ray leans on three private names of Ray: an upgrade that renames one fails here,
    not silently (a group signal would reach Ray's processes again)."""
    from ray._private import ray_constants, services, utils

    assert hasattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER")
    assert isinstance(services.ConsolePopen, type)
    assert callable(utils.set_sigterm_handler)


# ------------------------------------------------------------------ slow: real commands
def _session(sid: int) -> list[str]:
    """The live processes of session ``sid`` (zombies aside)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{stat.parent.name} {text[text.index('(') + 1:text.rindex(')')]}")
    return found


def _serving(port: int) -> list[str]:
    """The live processes started with ``--port <port>`` (``mlflow ui`` and its uvicorn)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and f"--port\0{port}\0".encode() in b"\0".join(args) + b"\0":
            found.append(f"{cmdline.parent.name} {b' '.join(args[:3]).decode(errors='replace')}")
    return found


def _nothing_left(sid: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while _session(sid) and time.time() < deadline:
        time.sleep(0.5)
    assert not _session(sid), _session(sid)


def _wait(check, what: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not check():
        assert process.poll() is None, f"the command ended ({process.returncode}) before {what}"
        assert time.time() < deadline, f"no {what} in {timeout:.0f} s"
        time.sleep(0.2)


def _one_stop_line(log: str, words: str) -> str:
    assert "Traceback" not in log and "Exception ignored" not in log, log[-3000:]
    assert "SIGTERM received" not in log and "Failed to connect to GCS" not in log, log[-3000:]
    lines = [line for line in log.splitlines() if line.startswith(words)]
    assert len(lines) == 1, log[-3000:]
    return lines[0]


def _search_args(work: Path, name: str, uri: str, trials: int = 3,
                 epochs: int = 3) -> list[str]:
    """One trial at a time (a second trial worker is about 6 s of CPU to start, and how trials
    share the machine is not what these tests are about)."""
    sets = [a for kv in [*TINY, f"optim.epochs={epochs}", f"data.cache_dir={work / 'cache'}"]
            for a in ("--set", kv)]
    return [*EXTUNE, "search", "--space", "ce", "--trials", str(trials), "--scheduler", "none",
            "--max-concurrent", "1", "--sampler", "random", "--no-live", "--name", name,
            "--out", str(work / "runs"), "--tracking-uri", uri, *sets]


def _every_trial_once(uri: str, folder: Path, trials: int, epochs: int) -> None:
    """After ``--resume``: every trial COMPLETE in Optuna, the parent and each trial FINISHED
    in MLflow with epochs 1..N once each (a SIGHUP used to leave trial-000 COMPLETE in Optuna
    and FAILED in MLflow)."""
    import optuna

    from extune.tracking.client import mlflow_client

    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * trials
    runs = search_runs(uri, folder)
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status)
                                                          for r in runs]
    trials_ = [r for r in runs if r.data.tags.get("extune.role") == "trial"]
    assert len(trials_) == trials
    client = mlflow_client(uri)
    for run in trials_:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")]
        assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, steps)


def _reports(folder: Path) -> int:
    """The reports of every trial so far (a line of ``result.json`` each)."""
    return sum(p.read_text().count("\n") for p in folder.glob("trials/*/result.json"))


STOPS = {  # how a scheduler or a terminal stops the search: (signal, its words, exit code)
    "timeout-sigterm": (signal.SIGTERM, "terminated (SIGTERM)", 143),
    "setsid-sighup": (signal.SIGHUP, "hung up (SIGHUP)", 129),
    "sigterm": (signal.SIGTERM, "terminated (SIGTERM)", 143),
}


def _stop_mid_trial(how: str, command: list[str], folder: Path, uri: str, log: Path) -> None:
    """Start ``command``, stop it ``how`` once a trial reported since it started, and check the
    stop: its code, one line that says how to continue, nothing left of its session (Ray's
    processes included), the search ``interrupted`` and no MLflow run left RUNNING."""
    signum, words, code = STOPS[how]
    before = _reports(folder)
    search = start(["timeout", "900", *command] if how == "timeout-sigterm" else command, log,
                   cwd=folder.parents[1])
    try:
        _wait(lambda: _reports(folder) > before, "trial reporting", search)
        if how == "setsid-sighup":
            os.killpg(search.pid, signum)  # the group of the search's session
        else:  # timeout passes it on to its process group; else the driver alone
            search.send_signal(signum)
        assert search.wait(timeout=120) == code, log.read_text()[-3000:]
        _nothing_left(search.pid)
    finally:
        stop(search)
    assert _one_stop_line(log.read_text(), words) == f"{words}: continue with: extune search " \
                                                     f"--resume {folder}", how
    assert json.loads((folder / "search.json").read_text())["status"] == "interrupted"
    states = {r.info.status for r in search_runs(uri, folder)}
    assert "RUNNING" not in states and "KILLED" in states, (how, states)


@pytest.mark.slow
def test_a_search_stopped_each_way_a_scheduler_does_resumes_every_trial_once(tmp_path):
    """One search stopped mid-trial three times, each as schedulers and terminals stop a job,
    and resumed after each: ``timeout 900 extune search ... & kill -TERM $!`` (timeout signals
    its whole group), SIGHUP to the group of the search's session (as Slurm and systemd do),
    and SIGTERM to the driver alone (``kill``, ``ray job stop``); then ``--resume`` finishes it
    with every trial and epoch once. (Ray's GCS used to die under the driver: it hung for
    60 s, exited 1 and left the runs RUNNING.)"""
    uri = sqlite_store(tmp_path / "mlflow.db")
    folder = tmp_path / "runs" / "s"
    args = _search_args(tmp_path, "s", uri, trials=4, epochs=4)
    resume = [*EXTUNE, "search", "--resume", str(folder)]
    for i, how in enumerate(STOPS):
        _stop_mid_trial(how, resume if i else args, folder, uri, tmp_path / f"{how}.log")

    resumed = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _every_trial_once(uri, folder, trials=4, epochs=4)


@pytest.mark.slow
def test_signals_while_ray_starts_stop_in_one_line_naming_no_folder(tmp_path):
    """Ctrl-C twice to the group while Ray starts (its GCS is up, ``ray.init`` has not
    returned): one line that names no folder (none was made), exit 130, Ray gone, no
    "Exception ignored ... Traceback"."""
    uri = sqlite_store(tmp_path / "mlflow.db")
    search = start(_search_args(tmp_path, "s", uri), tmp_path / "search.log", cwd=tmp_path)
    try:
        _wait(lambda: any("gcs_server" in p for p in _session(search.pid)), "GCS", search,
              timeout=180)
        os.killpg(search.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(search.pid, signal.SIGINT)
        assert search.wait(timeout=120) == 130
        _nothing_left(search.pid)
    finally:
        stop(search)
    log = (tmp_path / "search.log").read_text()
    assert _one_stop_line(log, "interrupted") == ("interrupted before the search had a folder: "
                                                  "nothing to continue; run the command again")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_sighup_to_a_training_ends_its_run_killed_and_resume_finishes_it(tmp_path):
    """SIGHUP (a closing terminal) used to kill ``extune train`` and leave its MLflow run
    RUNNING for ever; now the run ends KILLED and ``--resume`` finishes the same run, every
    epoch once."""
    from extune.tracking.client import mlflow_client

    uri = sqlite_store(tmp_path / "mlflow.db")
    out = tmp_path / "run"
    sets = [a for kv in [*TINY, "method=ce", "optim.epochs=6",
                         f"data.cache_dir={tmp_path / 'cache'}"] for a in ("--set", kv)]
    args = [*EXTUNE, "train", *sets, "--out", str(out), "--tracking-uri", uri]
    train = start(args, tmp_path / "train.log", cwd=tmp_path)
    try:
        _wait(lambda: (out / "checkpoint.pt").is_file(), "checkpoint", train)
        os.killpg(train.pid, signal.SIGHUP)
        assert train.wait(timeout=60) == 129
        _nothing_left(train.pid)
    finally:
        stop(train)
    _one_stop_line((tmp_path / "train.log").read_text(), "hung up (SIGHUP)")
    client = mlflow_client(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert (run.info.status, run.data.tags["extune.state"]) == ("KILLED", "interrupted")

    resumed = subprocess.run([*args[:-4], "--resume", str(out), "--out", str(out),
                              "--tracking-uri", uri], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    again = client.get_run(run.info.run_id)
    assert (again.info.status, again.data.tags["extune.state"]) == ("FINISHED", "complete")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")]
    assert sorted(steps) == list(range(1, 7))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["setsid-sighup", "sigkill"])
def test_extune_ui_leaves_no_server_holding_the_port(tmp_path, how):
    """SIGHUP to the group of ``extune ui``'s session: one line, exit 129, the MLflow server
    and its uvicorn stopped; SIGKILL (nothing to handle it): the kernel stops the server."""
    sqlite_store(tmp_path / "mlflow.db")  # a store
    port = free_port()
    ui = subprocess.Popen([*EXTUNE, "ui", "--port", str(port)], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        read_until(ui, "experiments: http://127.0.0.1:", timeout=180)
        assert port_answers(port)
        if how == "sigkill":
            ui.kill()
            ui.wait(timeout=30)
        else:
            os.killpg(ui.pid, signal.SIGHUP)
            assert ui.wait(timeout=60) == 129
            rest = ui.stdout.read()
            assert _one_stop_line(rest, "hung up (SIGHUP)") == (
                f"hung up (SIGHUP); the MLflow UI on http://127.0.0.1:{port} stopped")
        assert port_closes(port, timeout=30), "the MLflow server outlived extune ui"
        deadline = time.time() + 30
        while _serving(port) and time.time() < deadline:
            time.sleep(0.5)
        assert not _serving(port)  # mlflow ui and uvicorn, in a session of their own
        _nothing_left(ui.pid)
    finally:
        if ui.poll() is None:
            ui.kill()
