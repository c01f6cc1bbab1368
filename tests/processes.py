"""Helpers of the tests that start real processes (Ray, MLflow servers, ``extune`` commands):
each process runs in its own session and is stopped by process group, never by ``ray stop``
(which would stop every Ray on the machine)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from extune.processes import stop_process_group

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``args`` in a new session, output to ``log``."""
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            cwd=cwd, start_new_session=True)


def port_answers(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Wait until ``process`` serves ``port``; fail if it exits or ``timeout`` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited with {process.returncode}")
        if port_answers(port):
            return
        time.sleep(0.5)
    raise AssertionError(f"nothing answered on port {port} in {timeout:.0f} s")


def port_closes(port: int, timeout: float) -> bool:
    """Whether ``port`` stops answering within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not port_answers(port):
            return True
        time.sleep(0.5)
    return False


def read_until(process: subprocess.Popen, prefix: str, timeout: float) -> list[str]:
    """The lines ``process`` prints (text ``stdout`` pipe) up to the first that starts with
    ``prefix``; fails if it exits first or ``timeout`` passes (a thread reads, so a silent
    process cannot hang the test)."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if line.startswith(prefix):
                found.set()
                return
        found.set()  # end of output

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout) or not lines or not lines[-1].startswith(prefix):
        raise AssertionError(f"no line starting {prefix!r} in {timeout:.0f} s (exit code "
                             f"{process.poll()}):\n" + "".join(lines))
    return lines


def stop(proc: subprocess.Popen) -> None:
    """Stop a process and everything it started (its process group)."""
    stop_process_group(proc, grace_s=20)


def stop_all(procs: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    """Stop several processes and their groups at once (a cluster's nodes and servers):
    SIGTERM to every group, then SIGKILL to those still running after ``grace_s`` (one wait
    for all, not one per process)."""
    import os
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)  # the group: a leader gone may leave children
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        if all(proc.poll() is not None for proc in procs):
            return

def wait_for(check, what: str, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what} did not come up in {timeout:.0f} s")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (loopback)
            return r.status == 200
    except OSError:
        return False


def mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port`` with its store and artifacts in ``folder``
    (started again on the same folder, it serves the same runs), without MLflow's GenAI job
    runners (a dozen processes that tracking never uses; ``extune ui`` starts none either)."""
    import os

    from stores import sqlite_store

    from extune.cli.ui import SERVER_ENV

    return start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                  "--backend-store-uri", sqlite_store(folder / "tracking.db"),
                  "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
                 folder / f"mlflow-{time.time():.0f}.log", env={**SERVER_ENV, **os.environ})


def search_runs(uri: str, search_dir: Path) -> list:
    """Every MLflow run (parent and trials) of the search in ``search_dir``, by its id."""
    import json

    from extune.tracking.client import mlflow_client

    search_id = json.loads((search_dir / "search.json").read_text())["search_id"]
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name("extune")
    return client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`extune.search_id` = '{search_id}'")
