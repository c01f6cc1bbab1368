"""The Tune callback that mirrors every trial into a child MLflow run of its search.

Why not Ray's ``MLflowLoggerCallback``: it makes no parent run, logs Ray's internal keys as
metrics and opens new runs for restored trials (leaving the old ones RUNNING). Here every run is
found again by its tags before one is created (:class:`~extune.tracking.client.
MlflowTracker`), and the hooks only build ops for the search's journal writer
(:mod:`extune.tracking.journal`), so a slow store never stalls Tune's loop.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from extune.errors import one_line
from extune.evaluate.objectives import Objective
from extune.tracking.client import FINAL_ROLE, ROLE_TAG, STATE_TAG, MlflowTracker
from extune.tracking.journal import Op
from extune.tracking.notes import NOTE_TAG, trial_note
from extune.tracking.trials import (
    PLACE_KEYS,
    config_arm,
    config_label,
    planned_epochs,
    reported_metrics,
    split_config,
    trial_config,
    trial_error,
    trial_label,
)
from extune.tracking.views import EPOCH_TAG, SEARCH_TAG
from extune.train.checkpoint import CHECKPOINT_NAME
from extune.train.grid import GRID_NAME

__all__ = ["MlflowCallback"]

log = logging.getLogger(__name__)


def _never_fail(hook: Callable[..., None]) -> Callable[..., None]:
    """A tracking hook that logs its errors instead of stopping the search."""

    @functools.wraps(hook)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            hook(self, *args, **kwargs)
        except Exception as e:  # trials matter more than their records
            log.warning("MLflow tracking failed in %s: %s", hook.__name__,
                        one_line(e, 300))

    return wrapper


class MlflowCallback(Callback):
    """Tune callback that mirrors every trial into a child run of the search's parent run.

    A child run holds:

    - params: the trial's searched parameters only (dotted keys; conditional ones only where
      active, as the define-by-run space asked for them); the constants are on the parent;
    - metrics: the per-epoch metrics under the names ``fit`` reports (step = epoch; no Ray
      keys, no ``epoch`` metric) and, once the trial ends, ``objective/<name>`` for each
      objective (the value told to Optuna, or a pruned trial's last one);
    - tags: ``extune.state`` (``running``, ``complete``, ``pruned``, ``failed``,
      ``interrupted``: the one state tag), ``extune.epoch`` (``2/4``: epochs reported of
      planned, with every report), ``extune.trial_id``, ``extune.search`` (the search's name),
      ``extune.method``, ``extune.node_id`` (and ``gpu_ids``, ``hostname``, ``pid``),
      ``extune.error`` (failed), ``extune.role`` (``trial``; ``final`` for a study's final
      runs, tagged ``extune.stage=final``); the run name (``excon · trial-003``) ends with
      the state once the trial ends;
    - a description (the run page shows it first): the objectives, the suite's metrics rounded
      or "not measured", the searched settings (:mod:`~extune.tracking.notes`);
    - artifacts: ``config.yaml`` (the trial's full Config), the labelled saliency grid of its
      last epoch (every trial that trained an epoch), and with ``log_checkpoint`` the
      checkpoint;
    - status FINISHED (complete or pruned), FAILED, or KILLED (interrupted).

    The hooks only build ops for the search's
    :class:`~extune.tracking.journal.TrackingWriter` (one thread, in order, journaled in
    ``journal_dir``): a slow or unreachable tracking store never stalls Tune's event loop.

    Args:
        tracker: the search's :class:`MlflowTracker`.
        base: the base config as a dict (a trial's full config is ``base`` + its parameters).
        tags: tags of every child run (a study's final runs: ``extune.stage=final``).
        objectives: the search's objectives (the ``objective/<name>`` metrics).
        constant: keys held at one value (``--fix``): logged on the parent, not per trial.
        log_checkpoint: also log each trial's final checkpoint (large; off by default).
        journal_dir: the writer's journal and the copies of artifacts waiting to be sent (in
            the search folder); ``None``: memory only.
    """

    def __init__(self, tracker: MlflowTracker, base: dict[str, Any],
                 tags: dict[str, str] | None = None, *, objectives: tuple[Objective, ...] = (),
                 constant: tuple[str, ...] = (), log_checkpoint: bool = False,
                 journal_dir: str | Path | None = None) -> None:
        self.tracker = tracker
        self.base = base
        self.tags = dict(tags or {})
        self.objectives = tuple(objectives)
        self.constant = frozenset(constant)
        self.log_checkpoint = log_checkpoint
        self.journal_dir = str(journal_dir) if journal_dir is not None else None
        self._started: set[str] = set()
        self._ended: set[str] = set()
        self._epochs: dict[str, int | str] = {}

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks; a new process starts
        return {**self.__dict__, "_started": set(), "_ended": set(),  # its runs again (by tag)
                "_epochs": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:  # saved by an older extune too
        self.__dict__.update({"_epochs": {}, **state})

    @property
    def writer(self) -> Any:
        from extune.tracking.journal import writer_for

        return writer_for(self.tracker, self.journal_dir)

    def _submit(self, op: str, trial: Any, **fields: Any) -> None:
        self.writer.submit(Op(op, trial.trial_id, **fields))

    def setup(self, **info: Any) -> None:
        self.writer  # noqa: B018  (starts the thread; unsent ops of a previous run go first)

    def _label(self, trial: Any) -> str:
        """The run's name without its state: ``excon · trial-003`` (the method says which
        search a row belongs to where several share an experiment), or the trial's own label
        (a study's final runs: ``excon-seed1``)."""
        number, overrides = split_config(trial.config)
        label = config_label(trial.config)
        if label:
            return label
        method = overrides.get("method", self.base.get("method"))
        name = trial_label(number, trial.trial_id)
        return f"{method} · {name}" if method else name

    def _start(self, trial: Any) -> None:
        """Queue the trial's run (created or found again by tag) once per process."""
        if trial.trial_id in self._started:
            return
        self._started.add(trial.trial_id)
        number, overrides = split_config(trial.config)
        params = {k: v for k, v in overrides.items() if k not in self.constant}
        method = overrides.get("method", self.base.get("method", ""))
        tags = {**self.tags, "extune.searched": ",".join(sorted(params)),
                "extune.method": str(method), STATE_TAG: "running",
                SEARCH_TAG: self.tracker.search_name}
        if self.tags.get("extune.stage") == "final":  # a study's final run: not a trial
            tags[ROLE_TAG] = FINAL_ROLE
        arm = config_arm(trial.config)
        if arm:  # a study's control: excon-off trains supcon
            tags["extune.arm"] = arm
        if number is not None:
            tags["extune.optuna_trial"] = str(number)
        seed = overrides.get("runtime.seed", self.base.get("runtime", {}).get("seed"))
        if seed is not None:
            tags["extune.seed"] = str(seed)
        self._submit("start", trial, name=self._label(trial), params=params, tags=tags,
                     config_yaml=_config_yaml(self.base, trial.config))

    @_never_fail
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.discard(trial.trial_id)
        self._start(trial)

    @_never_fail
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._start(trial)
        metrics = reported_metrics(result)
        step = int(metrics.get("epoch", result.get("training_iteration", 0)))
        tags = {EPOCH_TAG: f"{step}/{self._planned(trial)}"}  # a column of the live view
        if step == 1:
            tags.update({f"extune.{k}": str(result[k]) for k in PLACE_KEYS if k in result})
        self._submit("tags", trial, tags=tags)
        # the epoch is the step: as a metric too it would lead MLflow's alphabetical lists
        # (the compare page's parallel plot picks the first shared metric)
        self._submit("metrics", trial, step=step,
                     metrics={k: v for k, v in metrics.items() if k != "epoch"})

    def _planned(self, trial: Any) -> int | str:
        """The epochs a trial trains (``?`` when its parameters make no valid config)."""
        if trial.trial_id not in self._epochs:
            planned = planned_epochs(self.base, trial.config)
            self._epochs[trial.trial_id] = "?" if planned is None else planned
        return self._epochs[trial.trial_id]

    @_never_fail
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)
        planned = trial_config(self.base, trial.config).optim.epochs
        epoch = int(trial.last_result.get("epoch", planned))
        state = "pruned" if epoch < planned else "complete"
        self._settle(trial, state, "FINISHED", {},
                     suffix=f"pruned at {epoch}/{planned}" if state == "pruned" else "complete")

    @_never_fail
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)
        self._settle(trial, "failed", "FAILED", {"extune.error": trial_error(trial)},
                     suffix="failed")

    def _settle(self, trial: Any, state: str, status: str, tags: dict[str, str], *,
                suffix: str) -> None:
        """A trial's end: state and description, objective metrics, artifacts, name, status."""
        self._submit("tags", trial, tags={**tags, STATE_TAG: state,
                                          NOTE_TAG: self._note(trial, state)})
        if state != "failed":
            values = {f"objective/{o.name}": trial.last_result.get(o.metric)
                      for o in self.objectives}
            values = {k: v for k, v in values.items() if v is not None}
            if values:
                self._submit("metrics", trial, metrics=values, once_per_step=False,
                             step=int(trial.last_result.get("epoch", 0)))
        for path, folder in self._checkpoint_files(trial):
            self._submit("artifact", trial, path=str(path), dir=folder, spooled=True)
        self._submit("end", trial, status=status, name=f"{self._label(trial)} · {suffix}")
        self._ended.add(trial.trial_id)

    def _note(self, trial: Any, state: str) -> str:
        """The run's description (:func:`~extune.tracking.notes.trial_note`)."""
        _, overrides = split_config(trial.config)
        planned = trial_config(self.base, trial.config).optim.epochs
        result = trial.last_result or {}
        return trial_note(
            name=self._label(trial), search=self.tracker.search_name, state=state,
            epoch=int(result.get("epoch", 0)), planned=planned,
            metrics=reported_metrics(result), objectives=self.objectives,
            params={k: v for k, v in overrides.items() if k not in self.constant})

    @_never_fail
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)
        self._submit("tags", trial, tags={"extune.retries": str(trial.num_failures),
                                          "extune.last_error": trial_error(trial)})

    @_never_fail
    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Runs of trials that did not end (interrupted search, time budget) become KILLED."""
        for trial in trials:
            if trial.trial_id in self._started and trial.trial_id not in self._ended:
                self._submit("tags", trial, tags={STATE_TAG: "interrupted"})
                self._submit("end", trial, status="KILLED")

    def _checkpoint_files(self, trial: Any) -> list[tuple[Path, str | None]]:
        """Copies (in the journal folder, or a temporary one) of the grid and, with
        ``log_checkpoint``, the checkpoint of the trial's latest checkpoint, on any Ray
        storage; ``(path, artifact folder)`` each."""
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return []
        names = [GRID_NAME] + ([CHECKPOINT_NAME] if self.log_checkpoint else [])
        spool = (Path(self.journal_dir) / "files" if self.journal_dir
                 else Path(tempfile.mkdtemp(prefix="extune-mlflow-"))) / trial.trial_id
        copies = []
        for name in names:
            source = f"{checkpoint.path.rstrip('/')}/{name}"
            try:
                with checkpoint.filesystem.open_input_file(source) as f:
                    data = f.readall()
            except (OSError, FileNotFoundError):
                continue
            spool.mkdir(parents=True, exist_ok=True)
            (spool / name).write_bytes(data)
            copies.append((spool / name, "checkpoint" if name == CHECKPOINT_NAME else None))
        return copies


def _config_yaml(base: dict[str, Any], params: dict[str, Any]) -> str:
    """The trial's full Config as YAML (``extune train --config`` reads it)."""
    try:
        return trial_config(base, params).to_yaml()
    except Exception as e:  # an invalid draw: the trial fails and says why; keep the record
        return f"# this trial's parameters do not make a valid config: {e}\n"


