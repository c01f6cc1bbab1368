"""``extune ui``: the MLflow UI on a tracking store, with the link of every search and study.

The server (``mlflow ui``) runs in its own session with its output in a log file, so its
start-up warnings stay out of the console; the links are printed once it answers. Ctrl-C,
SIGTERM and SIGHUP stop it (exit 130, 143, 129), and it ends with ``extune ui`` however that
ends.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from extune.cli._common import echo, exit_stopped
from extune.defaults import DEFAULT_TRACKING_URI
from extune.errors import ConfigError

__all__ = ["ui"]

START_TIMEOUT_S = 180.0
"""How long ``extune ui`` waits for the server to answer before it gives up."""
LOG_NAME = "mlflow-ui.log"
APP_NAME = "extune"
"""MLflow's server app with the model-training view as a new browser's default (entry point
``mlflow.app``: :mod:`extune.tracking.mlflow_app`)."""
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""The server's environment beyond ours (where we do not set it): no job runners (MLflow's
GenAI jobs, a dozen worker processes that slow the start and that browsing runs never uses)."""


def ui(
    tracking_uri: Annotated[str | None, typer.Option(
        help=f"MLflow store. (default: {DEFAULT_TRACKING_URI})")] = None,
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface; 0.0.0.0 exposes it to the network.")]
    = "127.0.0.1",
    search: Annotated[str | None, typer.Option(
        "--search", help="Print the link of this search or study only (its name), with its "
        "final runs.")] = None,
    limit: Annotated[int, typer.Option(
        min=0, help="List this many searches, studies and final runs not under one, newest "
        "first; 0: every one.")] = 20,
) -> None:
    """Start the MLflow UI on a tracking store (127.0.0.1 by default) and print the link of
    each search and study in it, each scoped to its own runs, and of each final run
    (``extune train``), under the search it was exported from."""
    from extune.tracking.store import check_tracking_uri, existing_store

    uri = tracking_uri or DEFAULT_TRACKING_URI
    if uri.startswith(("http://", "https://")):
        check_tracking_uri(uri)  # a one-line error when it does not answer
        entries = _entries(uri, search)
        echo(f"{uri} is already a tracking server: open it in a browser")
        _print_links(entries, uri.rstrip("/"), limit)
        return
    _check_address(host, port)
    uri = existing_store(uri)
    entries = _entries(uri, search)  # an unknown --search fails before the server starts
    with socket.socket() as s:
        if s.connect_ex((host, port)) == 0:
            raise ConfigError(f"port {port} on {host} is in use; pass --port")
    log_path = _log_path(uri)
    address = f"http://{host}:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", host, "--port", str(port), "--app-name", APP_NAME, "--workers", "1"]
    echo(f"starting the MLflow UI on {address} (store {uri}; server log {log_path}) ...")

    def ready() -> None:
        echo(f"MLflow UI on {address}; Ctrl-C stops it.")
        _print_links(entries, _browse_address(host, port), limit)

    try:
        run_until_stopped(command, log_path, ready=ready,
                          probe=f"http://{_probe_host(host)}:{port}/",
                          env={**SERVER_ENV, **os.environ})
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP (extune.signals)
        exit_stopped(f"the MLflow UI on {address} stopped")


def _entries(uri: str, name: str | None) -> list[Any]:
    """The store's searches and studies (:func:`~extune.tracking.views.store_entries`),
    or the one named ``name``.

    Raises:
        ConfigError: no search or study of that name.
    """
    from extune.tracking.views import store_entries

    entries = store_entries(uri)
    if name is None:
        return entries
    every = [*_walk(entries)]
    found = [e for e in every if e.name == name and e.kind != "train"]
    if not found:
        known = sorted({e.name for e in every if e.kind != "train"})
        hint = f"; it has {', '.join(known[:10])}" + (" ..." if len(known) > 10 else "") \
            if known else "; it has none yet"
        raise ConfigError(f"--search {name}: no search or study of that name in {uri}{hint}")
    return found[:1]  # newest first: the latest of that name


def _walk(entries: list[Any]) -> Iterator[Any]:
    """``entries`` and their children, depth first."""
    for entry in entries:
        yield entry
        yield from _walk(entry.children)


def _print_links(entries: list[Any], address: str, limit: int) -> None:
    echo(f"experiments: {address}/#/experiments?workflowType=machine_learning")
    shown = entries if limit == 0 else entries[:limit]
    for entry in shown:
        _print_entry(entry, address, indent="")
    if len(shown) < len(entries):
        echo(f"... and {len(entries) - len(shown)} older; --limit 0 lists every one, "
             "--search NAME prints one")


def _print_entry(entry: Any, address: str, indent: str) -> None:
    echo(indent + _line(entry, address))
    for child in entry.children:
        _print_entry(child, address, indent + "  ")


def _line(entry: Any, address: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.started_ms / 1000))
    where = f"{address}/{entry.page}" if entry.page else "(no link: started by an older extune)"
    return f"{entry.kind} {entry.name} ({entry.experiment}, {when}): {where}"


def _log_path(uri: str) -> Path:
    """Where the server's output goes: beside a SQLite store, else the working folder."""
    folder = Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///") else Path()
    return (folder / LOG_NAME).resolve()


def _probe_host(host: str) -> str:
    """An address that reaches a server listening on ``host`` (every interface: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host
                                                       else host)


def _browse_address(host: str, port: int) -> str:
    return f"http://{_probe_host(host)}:{port}"


def _check_address(host: str, port: int) -> None:
    """``--port`` is a TCP port and ``--host`` an address of this machine (or a name of one).

    Raises:
        ConfigError: in one line, before the server starts.
    """
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port; use 1-65535 (default 5000)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--host {host} is not an address of this machine ({e}); use "
                          "127.0.0.1, or 0.0.0.0 for every interface") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:  # in use: said below, with the port
                raise ConfigError(f"--host {host}: the server cannot listen there "
                                  f"({e.strerror}); use 127.0.0.1, or 0.0.0.0 for every "
                                  "interface") from None


def run_until_stopped(command: list[str], log_path: Path, *, ready: Any = None,
                      probe: str | None = None, env: dict[str, str] | None = None,
                      grace_s: float = 10.0) -> int:
    """Run a server until it exits, then return its exit status; on Ctrl-C, SIGTERM or SIGHUP
    (``KeyboardInterrupt``, :mod:`extune.signals`) stop it with every process it started
    (``mlflow ui`` starts uvicorn) and raise again.

    The server runs in its own session, so that a signal to extune's process group does not
    reach it before extune stops it: the whole group gets SIGTERM (SIGKILL after ``grace_s``
    seconds). Its output is appended to ``log_path``. On Linux the kernel sends it SIGTERM when
    this process ends however it ends (SIGKILL too), which ``mlflow ui`` passes on to uvicorn:
    no server is left holding the port.

    Args:
        ready: called once ``probe`` (a URL) answers.
        env: the server's environment (default: ours).

    Returns:
        The server's exit status (negative: killed by that signal).

    Raises:
        ConfigError: the server exited before it answered (the message has the log's last
            line), or did not answer within :data:`START_TIMEOUT_S`.
        KeyboardInterrupt: stopped by a signal (the server is stopped).
    """
    from extune.processes import stop_process_group

    with log_path.open("a") as log:
        process = subprocess.Popen(command, start_new_session=True, stdout=log, env=env,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=_ended_with_parent())
    try:
        if probe is not None:
            _wait_until_answers(process, probe, log_path)
            if ready is not None:
                ready()
        return process.wait()
    finally:
        if process.poll() is None:
            stop_process_group(process, grace_s)


def _ended_with_parent() -> Callable[[], None] | None:
    """What a child runs before its program (``preexec_fn``) so that the kernel sends it
    SIGTERM when this process ends (Linux's ``PR_SET_PDEATHSIG``); ``None`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    except (OSError, AttributeError):
        return None
    set_death_signal = 1  # PR_SET_PDEATHSIG
    term = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(set_death_signal, term, 0, 0, 0)

    return preexec


def _wait_until_answers(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"the MLflow UI exited at start ({_last_line(log_path)}); see "
                              f"{log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers, if not with a page
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise ConfigError(f"the MLflow UI did not answer on {url} within {START_TIMEOUT_S:.0f} s; "
                      f"see {log_path}")


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
             if line.strip()]
    return lines[-1][:200] if lines else "no output"
