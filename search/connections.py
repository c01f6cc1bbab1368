"""Connecting to Ray, with one-line errors when it cannot be reached (the MLflow store:
:mod:`extune.tracking.store`)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlparse

from extune.errors import ServiceError, one_line
from extune.files import is_disk_full
from extune.signals import deferred, handle_signals

__all__ = ["connect_ray", "probe_ray_address", "ray_address", "quiet_ray_env"]

log = logging.getLogger(__name__)



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
            # "local": a new instance even where `ray start` left a cluster on this machine
            # (ray.init(address=None) joins the newest one, and refuses num_cpus there)
            ray.init(address=address or "local", **kwargs)
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
