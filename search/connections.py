"""Connecting to Ray and to the MLflow tracking server, with one-line errors when unreachable."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from extune.defaults import DEFAULT_TRACKING_URI
from extune.errors import ExtuneError, one_line
from extune.files import is_disk_full
from extune.signals import deferred, handle_signals

__all__ = ["ServiceError", "connect_ray", "probe_ray_address", "ray_address",
           "check_tracking_uri", "stop_process_group", "quiet_ray_env", "DEFAULT_TRACKING_URI",
           "resolve_tracking_uri", "existing_store", "tracking_env_note"]

log = logging.getLogger(__name__)



class ServiceError(ExtuneError, ConnectionError):
    """A service the search needs (Ray cluster, MLflow server) cannot be reached."""


def quiet_ray_env() -> None:
    """Keep Ray's own console output low so that the live view is readable.

    Only sets variables the user has not set: the legacy (silent at ``verbose=0``) reporter,
    no per-trial tracebacks on the console (the live view and MLflow record errors), and no
    warning about frequent experiment snapshots (every epoch checkpoints).
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_WARN_SLOW_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # "Unhandled error ... ImplicitFunc.train()": a trial stopped while it failed (a full disk);
    # Tune records trial errors itself
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    for name in ("ray", "ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # "Trials did not complete: [...]": the summary table says which trials failed and why
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    for name in _DISK_FULL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DiskFullOneLine) for f in logger.filters):
            logger.addFilter(DiskFullOneLine())


_DISK_FULL_LOGGERS = ("ray.tune.execution.experiment_state", "ray.tune.execution.tune_controller")
"""Ray's loggers that print a traceback when a write fails (the experiment state, a trial)."""


class DiskFullOneLine(logging.Filter):
    """Print a full disk that Ray logs with its traceback as one line: the search stops on it
    and says in its own error line where to free space and how to resume."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and is_disk_full(error):
            record.msg = f"{record.getMessage().rstrip(': ')}: {one_line(error)}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def _probe(host: str, port: int, what: str, timeout: float = 5.0) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ServiceError(f"cannot reach {what} at {host}:{port} ({reason}); check the "
                           "address and that the service is running") from None


def ray_address(address: str | None) -> str | None:
    """The Ray cluster to join: ``address``, else ``RAY_ADDRESS`` (Ray sets it for the driver
    of a job, ``ray job submit``: the search joins the cluster the job runs on), else
    ``None``: a new Ray on this machine."""
    return address or os.environ.get("RAY_ADDRESS") or None


def _ray_host_port(address: str) -> tuple[str, int] | None:
    """``"10.0.0.1:6379"``, ``"ray://host:10001"`` -> (host, port); ``"auto"`` -> None."""
    given = "--address" if address != os.environ.get("RAY_ADDRESS") else "RAY_ADDRESS"
    if address in ("auto", "local"):
        return None
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if parsed.scheme in ("http", "https"):
        raise ServiceError(f"{given} {address} is the address of Ray's dashboard (the one "
                           "`ray job` takes, RAY_API_SERVER_ADDRESS); join the cluster at "
                           "HEAD:6379, or submit the search with `ray job submit`")
    if not parsed.hostname:
        raise ServiceError(f"{given} '{address}' is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        port = parsed.port or 6379
    except ValueError:
        raise ServiceError(f"{given} '{address}' has an invalid port") from None
    return parsed.hostname, port


def probe_ray_address(address: str | None) -> None:
    """Check in 5 s that the Ray cluster of :func:`ray_address` answers (none, or ``auto``:
    nothing to check).

    Raises:
        ServiceError: a malformed address or nothing listening there.
    """
    address = ray_address(address)
    if address is None:
        return
    target = _ray_host_port(address)
    if target is not None:
        _probe(*target, what="the Ray cluster")


def connect_ray(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Start Ray on this machine or join a cluster: ``address``, else ``RAY_ADDRESS`` (the
    cluster of a job's driver; :func:`ray_address`).

    Reuses an already initialised Ray (tests, notebooks). Token authentication is left as
    Ray sets it up (on by default for a new local instance; ``RAY_AUTH_MODE`` decides).

    Ray starts apart from the signals sent to extune (:func:`_ray_apart`), and Ctrl-C, SIGTERM
    and SIGHUP wait until it has started (:func:`extune.signals.deferred`): it is then shut
    down and ``KeyboardInterrupt`` raised, before the caller made anything.

    Returns:
        Whether this call started Ray (and so should shut it down).

    Raises:
        ServiceError: the cluster cannot be reached (checked with a 5 s TCP probe first:
            ``ray.init`` itself would retry for minutes).
        KeyboardInterrupt: a signal came while Ray started (Ray is shut down again).
    """
    import ray

    if ray.is_initialized():
        return False
    address = ray_address(address)
    probe_ray_address(address)
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                  configure_logging=True)
    if address is None:  # a cluster that is joined brings its own CPUs
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
    try:
        with deferred(), _ray_apart():
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        raise ServiceError(f"cannot connect to Ray at {address or 'a new local instance'}: "
                           f"{one_line(e, 200)}") from None
    except KeyboardInterrupt:
        ray.shutdown()
        raise
    finally:
        handle_signals()  # where Ray's hooks below have moved: its handlers replaced ours
    return True


@contextlib.contextmanager
def _ray_apart() -> Iterator[None]:
    """While ``ray.init`` runs: each process it starts (GCS, raylet, monitors) in a process
    group of its own, and none of Ray's signal handlers in this process.

    A signal sent to extune's whole process group (``timeout``, Slurm's ``scancel``, systemd,
    a closing terminal) then reaches the driver only, which stops the search cleanly and then
    Ray's processes (``ray.shutdown``). It used to reach them too: the driver's clean stop met
    a dead GCS ("Failed to connect to GCS within 60 seconds"), exited 1 a minute later and left
    the runs RUNNING. Ray's workers have process groups of their own already, as Ray gives its
    processes on Windows, and its processes still end with the driver however it ends (Ray
    has the kernel kill them when it dies).

    Ray would install in the driver two SIGTERM handlers (one exits 15 at once, one stops its
    processes and exits 1) and a native one (abseil's failure handler) that prints a crash dump
    on SIGTERM and leaves SIGTERM at its default after ``ray.shutdown``, so that a signal
    during the search's final summary killed it: extune's handlers stay in place instead. (A
    crash of the driver's native code then dumps Python's stack only, not Ray's C++ one.)

    These are hooks of Ray's private modules (Ray 2.x); ``tests/cli/test_signals.py`` checks
    that they still exist. Where one is missing, it is left out.
    """
    from ray._private import ray_constants, services, utils

    if hasattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"):
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True  # this process only
    saved = {}
    if sys.platform != "win32" and hasattr(services, "ConsolePopen"):
        saved[services, "ConsolePopen"] = services.ConsolePopen
        services.ConsolePopen = _own_group_popen(services.ConsolePopen)
    if hasattr(utils, "set_sigterm_handler"):
        saved[utils, "set_sigterm_handler"] = utils.set_sigterm_handler
        utils.set_sigterm_handler = _no_handler
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


def _no_handler(handler: object) -> None:
    """Ray's ``set_sigterm_handler`` while it starts: extune's handler stays."""


def _own_group_popen(base: type[subprocess.Popen]) -> type[subprocess.Popen]:
    """``base`` (Ray's ``Popen``) starting each process in a process group of its own."""

    class OwnGroupPopen(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            ray_preexec = kwargs.get("preexec_fn")

            def preexec() -> None:
                os.setpgid(0, 0)
                if callable(ray_preexec):
                    ray_preexec()  # blocks SIGINT, has the kernel kill it with its parent

            kwargs["preexec_fn"] = preexec
            super().__init__(*args, **kwargs)

    return OwnGroupPopen


TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql",
                    "databricks")
"""Stores MLflow's tracking client accepts (a ``+driver`` suffix aside)."""


def check_tracking_uri(uri: str, timeout: float = 5.0, *, write: bool = True) -> None:
    """Fail fast, in one line, when the tracking store cannot be used.

    An HTTP(S) server must answer ``/health`` within ``timeout`` seconds; a local SQLite store
    (``write=True``) must be writable, checked in well under a second (MLflow itself would
    retry for minutes, printing SQLAlchemy warnings, before it failed).

    Raises:
        ServiceError: the server does not answer, or the SQLite store cannot be written.
    """
    parsed = urlparse(uri)
    if parsed.scheme.split("+")[0] not in TRACKING_SCHEMES and not uri.startswith("databricks"):
        raise ServiceError(f"--tracking-uri {uri}: MLflow cannot keep runs in a "
                           f"'{parsed.scheme}' store; use sqlite:///path/mlflow.db, "
                           "http(s)://server or a database URI (postgresql://...)")
    if parsed.scheme == "sqlite" and write:
        _check_sqlite_writable(uri)
    if parsed.scheme not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            if response.status >= 500:
                raise ServiceError(f"the MLflow server at {uri} answered {response.status}")
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise ServiceError(f"the MLflow server at {uri} answered {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ServiceError(f"cannot reach the MLflow tracking server at {uri} ({reason}); "
                           "start it or pass another --tracking-uri") from None


def _check_sqlite_writable(uri: str) -> None:
    """An existing SQLite file must take a write lock; a new one needs a writable folder.

    A lock held by another writer (``database is locked``) is not an error: MLflow waits.

    Raises:
        ServiceError: read-only file or folder, or not a database.
    """
    from extune.files import check_writable

    path = Path(uri[len("sqlite:///"):]).expanduser()
    hint = "pass a writable --tracking-uri (e.g. sqlite:///mlflow.db in a writable folder)"
    if not path.exists():  # MLflow creates the file and its folders
        try:
            check_writable(path, "the MLflow store", fix=hint)
        except ExtuneError as e:
            raise ServiceError(str(e)) from None
        return
    try:
        con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=1.0)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
        finally:
            con.close()
    except sqlite3.Error as e:
        if "locked" in str(e) or "busy" in str(e):
            return
        raise ServiceError(f"cannot write the MLflow store {path} ({e}); {hint}") from None


def _check_sqlite_readable(path: Path) -> None:
    """An existing SQLite store reads: a SQLite file, whole (not shorter than its pages say),
    not locked by a writer for seconds. Read-only and cheap (its first page and schema), so
    MLflow does not fail later with SQLAlchemy's traceback.

    Raises:
        ServiceError: naming the store, what SQLite said, and what to do.
    """
    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            size = con.execute("PRAGMA page_count").fetchone()[0] * \
                con.execute("PRAGMA page_size").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as e:
        if "locked" in str(e) or "busy" in str(e):
            raise ServiceError(f"the MLflow store {path} is locked by another process (SQLite: "
                               f"{e}); try again when it is done, or pass another "
                               "--tracking-uri") from None
        raise ServiceError(f"the MLflow store {path} cannot be read (SQLite: {e}): it is "
                           "damaged or not an MLflow store; restore it from a backup, or pass "
                           "another --tracking-uri") from None
    wal = path.with_name(path.name + "-wal")
    if size > path.stat().st_size and not wal.exists():
        raise ServiceError(f"the MLflow store {path} is cut short ({path.stat().st_size} of "
                           f"{size} bytes): restore it from a backup, or pass another "
                           "--tracking-uri")


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI (``None``: :data:`DEFAULT_TRACKING_URI`) with a relative SQLite path or
    a bare folder made absolute, so that a search resumes (and exports) from any folder."""
    from extune.files import check_path_length

    uri = uri or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        check_path_length(uri[len("sqlite:///"):], "the MLflow store of --tracking-uri",
                          "choose a store with a shorter path")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):]).expanduser().resolve()
        uri = f"sqlite:///{path}"
    elif "://" not in uri and not uri.startswith("databricks"):
        uri = Path(uri).expanduser().resolve().as_uri()
    return uri


def existing_store(uri: str | None) -> str:
    """:func:`resolve_tracking_uri` for reading: a SQLite store must exist (reading one that
    does not would create an empty database), a server must answer.

    Raises:
        ServiceError: no SQLite file there, or the server does not answer.
    """
    resolved = resolve_tracking_uri(uri)
    if resolved.startswith("sqlite:///"):
        path = Path(resolved[len("sqlite:///"):])
        if not path.is_file():
            given = (uri or DEFAULT_TRACKING_URI)[len("sqlite:///"):]
            raise ServiceError(f"no MLflow store at {Path(given).expanduser()}; pass "
                               "--tracking-uri (the one the search used)"
                               f"{tracking_env_note(uri, resolved)}")
        _check_sqlite_readable(path)
        return resolved
    check_tracking_uri(resolved, write=False)
    return resolved


def tracking_env_note(given: str | None, resolved: str) -> str:
    """A note when ``MLFLOW_TRACKING_URI`` names another store than the one extune looked in
    (extune reads ``--tracking-uri`` only)."""
    import os

    variable = os.environ.get("MLFLOW_TRACKING_URI")
    if given is not None or not variable or resolve_tracking_uri(variable) == resolved:
        return ""
    return (f"; MLFLOW_TRACKING_URI ({variable}) is not read: pass --tracking-uri "
            f"{variable} to use that store")


def stop_process_group(process: subprocess.Popen, grace_s: float = 10.0) -> int:
    """Stop a process started with ``start_new_session=True`` and everything it started (its
    process group: ``mlflow ui``'s uvicorn workers, a driver's Ray processes): SIGTERM, then
    SIGKILL if it has not exited after ``grace_s`` seconds.

    Returns:
        Its exit status (negative: killed by that signal).
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            return process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()
