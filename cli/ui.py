"""``extune ui``: the MLflow UI on a tracking store, with the link of every search and study.

The server (``mlflow ui``) runs in its own session with its output in a log file, so its
start-up warnings stay out of the console; the links are printed once it answers, then the
link of each search, study or final run that starts later (the store is read every
:data:`TICK_S` seconds). Ctrl-C, SIGTERM and SIGHUP stop it (exit 130, 143, 129), and it ends
with ``extune ui`` however that ends. While it runs, ``mlflow-ui.json`` beside a SQLite store
says where (:func:`~extune.tracking.mlflow_app.running_ui`): a search that starts prints its
link there, and a second ``extune ui`` on the same port and store prints its links there
instead of starting another server. ``--compare A,B`` shows searches side by side
(:func:`~extune.tracking.views.compare_searches`).
"""

from __future__ import annotations

import errno
import json
import logging
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
from extune.tracking.mlflow_app import ui_record

__all__ = ["ui"]

log = logging.getLogger(__name__)

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
    compare: Annotated[str | None, typer.Option(
        "--compare", help="Show these searches side by side (names, comma-separated; a "
        "study's name: its searches): their trials grouped by search, each one's best "
        "objective so far against wall time.")] = None,
    limit: Annotated[int, typer.Option(
        min=0, help="List this many searches, studies and final runs not under one, newest "
        "first; 0: every one.")] = 20,
) -> None:
    """Start the MLflow UI on a tracking store and print the link of each search, study and
    final run in it, and of each new one as it starts.

    Each link shows exactly its own runs; a final run (extune train) is listed under the
    search it was exported from. An MLflow UI of the same store already on the port is used,
    not started again (127.0.0.1:5000 by default)."""
    from extune.tracking.journal import bounded_http_client
    from extune.tracking.store import check_tracking_uri, existing_store

    if search is not None and compare is not None:
        raise ConfigError("--search and --compare: give one of them")
    bounded_http_client()  # a server that does not answer costs seconds, not minutes
    uri = tracking_uri or DEFAULT_TRACKING_URI
    if uri.startswith(("http://", "https://")):
        check_tracking_uri(uri)  # a one-line error when it does not answer
        links = _links(uri, search, compare, limit)
        echo(f"{uri} is already a tracking server: open it in a browser")
        links(uri.rstrip("/"))
        return
    _check_address(host, port)
    uri = existing_store(uri)
    links = _links(uri, search, compare, limit)  # a bad name fails before the server starts
    browse = _browse_address(host, port)
    with socket.socket() as s:
        in_use = s.connect_ex((host, port)) == 0
    if in_use:
        if not _serves(browse, uri):
            raise ConfigError(f"port {port} on {host} is in use by another program (not an "
                              "MLflow UI of this store); pass --port")
        echo(f"the MLflow UI of this store already runs on {browse}: using it")
        links(browse)
        return
    log_path = _log_path(uri)
    address = f"http://{host}:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", host, "--port", str(port), "--app-name", APP_NAME, "--workers", "1"]
    echo(f"starting the MLflow UI on {address} (store {uri}; server log {log_path}) ...")
    record = ui_record(uri)
    seen = {e.run_id for e in _walk(_store_entries(uri))}  # what the links list

    def ready() -> None:
        _write_record(record, browse, uri)
        echo(f"MLflow UI on {address}; Ctrl-C stops it.")
        links(browse)
        if search is None and compare is None:
            echo("searches, studies and final runs that start from now on are listed as "
                 "they start")

    def tick() -> None:
        if search is None and compare is None:
            _print_new(uri, browse, seen)

    try:
        run_until_stopped(command, log_path, ready=ready, tick=tick,
                          probe=f"http://{_probe_host(host)}:{port}/",
                          env={**SERVER_ENV, **os.environ})
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP (extune.signals)
        exit_stopped(f"the MLflow UI on {address} stopped")
    finally:
        _remove_record(record)


TICK_S = 5.0
"""How often a running ``extune ui`` looks for new searches, studies and final runs."""


def _links(uri: str, search: str | None, compare: str | None, limit: int
           ) -> Callable[[str], None]:
    """What ``extune ui`` prints once the UI answers (given its address): the comparison of
    ``compare``, else the link of ``search``, else of every entry; made ready (and checked)
    before the server starts.

    Raises:
        ConfigError: an unknown name (one line).
    """
    if compare is not None:
        from extune.tracking.views import compare_searches

        names = [n.strip() for n in compare.split(",") if n.strip()]
        comparison = compare_searches(uri, names)
        return lambda address: _print_comparison(comparison, address)
    entries = _entries(uri, search)
    return lambda address: _print_links(entries, address, limit)


def _print_comparison(comparison: Any, address: str) -> None:
    names = ", ".join(s.name for s in comparison.searches)
    echo(f"compare {names} ({comparison.experiment}): {address}/{comparison.page}")
    echo(f"  its charts: {address}/{comparison.page}&compareRunsMode=CHART")
    for name, (objective, value, trial, trials, wall_s) in comparison.best.items():
        best = (f"best {objective} {value:.4f} ({trial})" if value is not None
                else "no complete trial")
        echo(f"  {name}: {best}; {trials} trials in {wall_s:.0f} s")


def _serves(address: str, uri: str) -> bool:
    """Whether the server at ``address`` is an MLflow UI of the store ``uri``: the one an
    ``extune ui`` records, or one whose experiments and newest run are the store's."""
    from extune.tracking.client import mlflow_client
    from extune.tracking.mlflow_app import running_ui

    if running_ui(uri) == address:
        return True
    try:
        local, remote = mlflow_client(uri), mlflow_client(address)
        ours = {(e.experiment_id, e.name) for e in local.search_experiments()}
        if ours != {(e.experiment_id, e.name) for e in remote.search_experiments()}:
            return False
        newest = local.search_runs([i for i, _ in ours], max_results=1,
                                   order_by=["attributes.start_time DESC"]) if ours else []
        return not newest or remote.get_run(newest[0].info.run_id) is not None
    except Exception:  # not MLflow, another store, no answer: MLflow raises many types
        return False


def _store_entries(uri: str) -> list[Any]:
    from extune.tracking.views import store_entries

    return store_entries(uri)


def _print_new(uri: str, address: str, seen: set[str]) -> None:
    """Print the link of each search, study and final run that started since ``seen``."""
    try:
        entries = list(_walk(_store_entries(uri)))
    except Exception as e:  # a store busy with a search's writes: the next tick looks again
        log.debug("could not list the store: %s", e)
        return
    for entry in reversed(entries):  # oldest first
        if entry.run_id not in seen:
            seen.add(entry.run_id)
            echo("new: " + _line(entry, address))


def _write_record(path: Path | None, address: str, uri: str) -> None:
    """Say where this UI serves ``uri`` (:data:`~extune.tracking.mlflow_app.UI_RECORD`)."""
    if path is None:
        return
    try:
        path.write_text(json.dumps({"address": address, "pid": os.getpid(), "store": uri}))
    except OSError:  # a read-only folder: searches print the default link instead
        pass


def _remove_record(path: Path | None) -> None:
    try:
        if path is not None and json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


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
                      grace_s: float = 10.0, tick: Callable[[], None] | None = None) -> int:
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
        tick: called every :data:`TICK_S` seconds while the server runs.

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
        while True:
            try:
                return process.wait(timeout=TICK_S if tick is not None else None)
            except subprocess.TimeoutExpired:
                tick()
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
