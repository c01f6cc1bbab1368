"""Each trial's ``params.json`` and ``result.json``, written in the trial's folder of a local
search at a cost that does not grow with the search.

Ray Tune's own logger callbacks (JSON, CSV and TensorBoard) write every trial's files into the
driver's staging folder, and Ray copies that whole folder to the search's storage each time it
saves the experiment's state (Ray 2.60, ``_ExperimentCheckpointManager``): every file of every
trial, finished or not, again and again. At trial 2,000 of a search that was 12,000 files a
save, and a driver spending 5 s per trial instead of 0.3 s (``benchmarks/growth.py``,
docs/performance.md). :class:`TrialResultFiles` writes the same ``result.json`` (one JSON line
per report, as Ray's) and ``params.json`` in place, once, where Ray's storage keeps the trial's
checkpoints, and removes an ended trial's empty staging folder (Ray creates each one again in
the storage at every save); :class:`RayLoggersOff` turns Ray's loggers off while such a search
fits. A search whose storage is a bucket keeps Ray's loggers (its files are not on this
machine).

A report that the disk cannot take whole is cut back to the last whole line (a full disk stops
the search through :class:`~extune.search.engine.disk.DiskGuard`; the file stays readable).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ray.tune import Callback

from extune.errors import one_line
from extune.files import atomic_write_text

__all__ = ["TrialResultFiles", "RayLoggersOff", "result_file_callbacks", "RESULT_FILE",
           "PARAMS_FILE"]

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
PARAMS_FILE = "params.json"
_RAY_LOGGERS_OFF = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
"""Ray Tune's documented switch: no CSV, JSON or TensorBoard logger added by Ray itself."""


def result_file_callbacks(experiment_path: str) -> list[Callback]:
    """The callbacks that write the trials' files of the experiment at ``experiment_path``:
    :class:`TrialResultFiles` for a local folder (fit it with :class:`RayLoggersOff`), none for
    a bucket URI (Ray's loggers stay)."""
    if "://" in experiment_path:
        return []
    return [TrialResultFiles()]


class RayLoggersOff:
    """A Tuner whose ``fit`` runs with Ray's own loggers off (Ray reads the switch when the
    fit starts): set for the fit only, so that a notebook's next Ray Tune run of its own gets
    Ray's loggers back."""

    def __init__(self, tuner: Any) -> None:
        self.tuner = tuner

    def fit(self) -> Any:
        saved = os.environ.get(_RAY_LOGGERS_OFF)
        os.environ[_RAY_LOGGERS_OFF] = "1"
        try:
            return self.tuner.fit()
        finally:
            if saved is None:
                os.environ.pop(_RAY_LOGGERS_OFF, None)
            else:
                os.environ[_RAY_LOGGERS_OFF] = saved

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tuner, name)


class TrialResultFiles(Callback):
    """``params.json`` when a trial starts, a line of ``result.json`` per report, in the
    trial's folder (``trial.path``: a local search's storage)."""

    def __init__(self) -> None:
        self._warned = False

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        folder = Path(trial.path)
        if not (folder / PARAMS_FILE).exists():
            self._write(lambda: atomic_write_text(
                folder / PARAMS_FILE, json.dumps(trial.config, indent=2, sort_keys=True,
                                                 default=_plain)))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        line = json.dumps(_finite(result), default=_plain) + "\n"
        self._write(lambda: append_whole_line(Path(trial.path) / RESULT_FILE, line))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Ray keeps a staging folder per trial on the driver (empty: its loggers are off) and
        # creates each one again in the storage at every save of the search's state, a call
        # per trial through the storage's filesystem: an ended trial's goes (Ray 2.60)
        with contextlib.suppress(OSError, AttributeError):  # not empty, gone, not Ray's Trial
            os.rmdir(trial.local_path)

    def _write(self, write: Any) -> None:
        try:
            write()
        except OSError as e:  # a full disk: the disk guard stops the search
            if not self._warned:
                log.warning("could not write a trial's result file: %s", one_line(e, 200))
                self._warned = True


def append_whole_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` whole or not at all: a write the disk cuts short is cut
    back to the file's previous end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = line.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"{path}: wrote {written} of {len(data)} bytes")
        except OSError:
            os.ftruncate(fd, end)
            raise
    finally:
        os.close(fd)


def _finite(result: dict) -> dict:
    """``result`` with NaN and infinities as ``null``: the file stays standard JSON."""
    return {k: (_finite(v) if isinstance(v, dict) else
                None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in result.items()}


def _plain(value: Any) -> Any:
    """A JSON form of what ``json`` cannot write: NumPy and torch values, else their text."""
    if hasattr(value, "tolist"):
        value = value.tolist()
        return None if isinstance(value, float) and not math.isfinite(value) else value
    return str(value)
