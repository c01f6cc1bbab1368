"""A study's method searches at the same time, where the Ray cluster has room for them.

One driver cannot run two Ray Tune searches at once (Tune's signal handling, its console and
its process-wide state belong to one ``Tuner.fit``), so each search that runs beside another is
a driver process of its own (``python -m extune.study.searches SPEC``) joined to the study's
Ray: the settings, budgets and seeds are exactly those of the search run in the study's own
process (:meth:`~extune.study.settings.StudySettings.search_settings`), only the moment it
starts differs. The study prints each driver's lines with the search's name in front and waits
for all of them.

Stops: the drivers run in process groups of their own, so that a Ctrl-C at the terminal reaches
the study once and the study passes one stop to each (Ctrl-C as SIGINT, SIGTERM and SIGHUP as
SIGTERM); every driver ends its search as ``extune search`` does (trials resumable) and
``extune study --resume`` finishes it. A driver whose study died (SIGKILL) stops its search
the same way by itself where the study had joined a cluster; a study's own local Ray dies with
it, and Ray ends its drivers a minute later ("Failed to connect to GCS within 60 seconds"),
leaving their searches for ``--resume`` as a killed ``extune search`` does. Each driver's
output goes to its log file (``searches/drivers/<name>.log``), which outlives the study.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SearchJob", "searches_at_once", "study_ray_address", "run_searches", "main"]

STOP_WAIT_S = 120.0
"""How long the study waits for its stopped drivers to save their searches before it ends them
with SIGKILL (a search saves its state within seconds; Ray's own grace for a job is 3 s)."""


@dataclass
class SearchJob:
    """One search of a study to run in a driver of its own: new (``settings``, the
    :class:`~extune.search.SearchSettings` as a dict) or unfinished (``resume``, its folder)."""

    name: str
    folder: Path
    settings: dict[str, Any] | None = None
    resume: str | None = None
    started: float | None = None
    ended: float | None = None
    code: int | None = None

    def spec(self, address: str) -> dict[str, Any]:
        return {"settings": self.settings, "resume": self.resume, "address": address}


def searches_at_once(settings: Any, searches: int) -> int:
    """How many of ``searches`` searches run at once: ``settings.searches_at_once`` where given
    (Ray queues the trials that do not fit), else as many as fit on the connected Ray cluster,
    each with the trials it runs at once (``max_concurrent``, else as many as the cluster
    holds, at most ``trials``). One search fills a machine whose resources hold no more than
    its own trials, so a study there runs them one after another."""
    from extune.search import cluster_plan

    if searches <= 1:
        return 1
    if settings.searches_at_once is not None:
        return min(searches, settings.searches_at_once)
    slots = cluster_plan(cpus_per_trial=settings.cpus_per_trial,
                         gpus_per_trial=settings.gpus_per_trial, max_concurrent=None,
                         trials=sys.maxsize).concurrency
    per_search = min(settings.trials, settings.max_concurrent or slots)
    return max(1, min(searches, slots // max(1, per_search)))


def study_ray_address(address: str | None) -> str:
    """The address the study's search drivers join: a Ray Client address as given, else the
    GCS of the Ray the study is connected to (its own local one included)."""
    import ray

    if address and address.startswith("ray://"):
        return address
    return ray.get_runtime_context().gcs_address


def run_searches(jobs: list[SearchJob], at_once: int, address: str,
                 say: Callable[[str], None], work: Path) -> None:
    """Run ``jobs`` in driver processes, ``at_once`` at a time, in order; returns when all
    ended.

    Raises:
        KeyboardInterrupt: the study was stopped (every driver was stopped and waited for),
            or a driver was (its search is resumable).
        ExtuneError: a driver failed; the line names the search, its last words and its log.
    """
    from extune.errors import ExtuneError
    from extune.signals import received

    waiting, running = list(jobs), []
    try:
        while waiting or running:
            while waiting and len(running) < at_once:
                job = waiting.pop(0)
                running.append((job, *_start(job, address, say, work)))
            time.sleep(0.5)
            for job, process, follower in list(running):
                if process.poll() is not None:
                    job.code, job.ended = process.returncode, time.time()
                    running.remove((job, process, follower))
                    follower.join(timeout=10)  # its last lines printed
                    if job.code in _STOPPED:
                        raise KeyboardInterrupt
                    if job.code != 0:
                        log = _log(work, job)
                        raise ExtuneError(f"the search {job.name} failed (exit {job.code}): "
                                          f"{_last_words(log)}; its log: {log}")
    except BaseException:
        _stop(running, received())
        raise


_STOPPED = (130, 143, 129)


def _start(job: SearchJob, address: str, say: Callable[[str], None], work: Path
           ) -> tuple[subprocess.Popen, threading.Thread]:
    """Start ``job``'s driver, its output into its log file (it outlives a killed study); a
    thread follows the log and prints each line with the search's name in front."""
    import shutil

    spec = work / f"{job.name}.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps(job.spec(address)))
    prefix = f"[{job.name}] "
    width = max(60, shutil.get_terminal_size().columns - len(prefix))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EXTUNE_PARENT_PID": str(os.getpid()),
           "COLUMNS": str(width)}
    log = _log(work, job)
    with log.open("a") as out:
        process = subprocess.Popen([sys.executable, "-m", "extune.study.searches", str(spec)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    job.started = time.time()
    follower = threading.Thread(target=_follow, args=(log, log.stat().st_size, process, prefix,
                                                      say), daemon=True, name=f"extune-{job.name}")
    follower.start()
    return process, follower


def _follow(log: Path, offset: int, process: subprocess.Popen, prefix: str,
            say: Callable[[str], None]) -> None:
    """Print the lines the driver adds to ``log`` from ``offset`` on, until it ended and they
    are all printed."""
    with log.open() as f:
        f.seek(offset)
        partial = ""
        while True:
            ended = process.poll() is not None
            partial += f.read()
            *lines, partial = partial.split("\n")
            for line in lines:
                say(prefix + line.rstrip())
            if ended:
                break
            time.sleep(0.2)
    if partial.strip():
        say(prefix + partial.rstrip())


def _log(work: Path, job: SearchJob) -> Path:
    return work / f"{job.name}.log"


def _last_words(log: Path) -> str:
    """A failed driver's error line, else its last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()[-20:]
             if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(nothing printed)"])[-1]


def _stop(running: list[tuple[SearchJob, subprocess.Popen, threading.Thread]],
          signum: int | None) -> None:
    """One stop to each running driver (SIGINT for Ctrl-C, else SIGTERM), a wait for them to
    save their searches, SIGKILL for any still running after :data:`STOP_WAIT_S`."""
    sent = signal.SIGINT if signum in (None, signal.SIGINT) else signal.SIGTERM
    for _, process, _ in running:
        if process.poll() is None:
            process.send_signal(sent)
    deadline = time.time() + STOP_WAIT_S
    for job, process, follower in running:
        try:
            job.code = process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.killpg(process.pid, signal.SIGKILL)
            job.code = process.wait()
        job.ended = time.time()
        follower.join(timeout=10)


def _watch_parent(parent: int) -> None:
    """Stop this driver's search as a SIGTERM would once the study that started it is gone
    (killed): its trials stay resumable, no orphan search runs on."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        # to the main thread, where Python runs the handler: raised here, the signal would
        # wait for the main thread's next bytecode (a sleep of a minute, say)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="extune-parent-watch").start()


def main(argv: list[str] | None = None) -> int:
    """A search driver of a study: ``python -m extune.study.searches SPEC`` (a JSON file of
    :meth:`SearchJob.spec`). Exit 0 finished, 130/143/129 stopped, 2 a one-line error."""
    import ray

    from extune.errors import ExtuneError
    from extune.search import SearchSettings, connect_ray, quiet_ray_env, run_search
    from extune.signals import handle_signals, interrupt_exit_code

    handle_signals()
    quiet_ray_env()
    parent = os.environ.get("EXTUNE_PARENT_PID")
    if parent:
        _watch_parent(int(parent))
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    try:
        settings = None if spec["resume"] else SearchSettings.from_dict(spec["settings"])
        # the study's Ray, joined first: the search reuses it and saves the study's own
        # address (a resumed study may run on a new Ray)
        started = connect_ray(spec["address"])
        try:
            result = run_search(settings, resume=spec["resume"])
        finally:
            if started:
                ray.shutdown()
    except ExtuneError as e:
        print(f"error: {e}", flush=True)
        return 2
    except KeyboardInterrupt:
        return interrupt_exit_code()
    return interrupt_exit_code() if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
