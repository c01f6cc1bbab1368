"""Driver-side MLflow tracking: one parent run per search, one child run per trial.

Why not Ray's ``MLflowLoggerCallback``: it makes no parent run, logs Ray's internal keys as
metrics and opens new runs for restored trials (leaving the old ones RUNNING). Here every run is
found again by its tags (``extune.search_id``, ``extune.trial_id``) before one is created, so a
resumed search continues its runs instead of duplicating them. All writes happen on the driver,
batched with ``log_batch``, by one writer thread (:mod:`extune.search.writer`) that keeps their
order and keeps them on disk until the store has them; the workers need no MLflow access.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ray.tune import Callback

from extune.errors import one_line
from extune.search.services import ServiceError, check_tracking_uri
from extune.search.settings import Objective
from extune.search.trials import (
    config_label,
    reported_metrics,
    split_config,
    trial_config,
    trial_error,
    trial_label,
)
from extune.train.checkpoint import CHECKPOINT_NAME
from extune.train.grid import GRID_NAME

__all__ = ["MlflowTracker", "MlflowCallback", "mlflow_client", "param_value", "STATE_TAG",
           "EXPERIMENT_KIND_TAG", "VIEW_TAG", "view_page", "runs_table_view",
           "recent_views"]

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's UI opens an experiment with this kind in its model-training view (the runs
table), not in the GenAI view (traces) it infers for an experiment without the tag."""
SHARED_VIEW_TAG = "mlflow.sharedViewState."
"""Experiment tag prefix of MLflow 3's shared runs-table views: the value is the view as JSON
(``selectedColumns``, ``orderByKey``, ``runsExpanded``, ...), opened by the page URL's
``viewStateShareKey``. The page's ``workflowType=machine_learning`` picks the model-training
view; MLflow 3.17 ignores the experiment kind tag when its GenAI/model-training switch is on."""
VIEW_TAG = "extune.mlflow_view"
"""Tag of a search's parent run: the UI page of its runs table (:func:`view_page`)."""
STATE_TAG = "extune.state"
"""A trial run's state: ``running``, ``complete``, ``pruned``, ``failed`` or ``interrupted``."""
log = logging.getLogger(__name__)
_MAX_PARAMS = 100  # MLflow's limit per log_batch call
_MAX_METRICS = 1000


def param_value(value: Any) -> str:
    """A Config value as an MLflow param string that ``yaml.safe_load`` reads back."""
    import yaml

    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


class MlflowTracker:
    """Finds or creates the runs of one search in an MLflow experiment.

    Args:
        uri: tracking URI (``sqlite:///...``, ``http://...``).
        experiment: experiment name (created when missing).
        search_id: the search's unique id (tag ``extune.search_id``).
        search_name: the search's name (the parent run's name).
        role: the parent run's ``extune.role`` tag: ``search``, or ``study`` for a study's run.
        tags: more tags of the parent run when it is created (``mlflow.parentRunId`` nests a
            search under a study's run).
    """

    def __init__(self, uri: str, experiment: str, search_id: str, search_name: str, *,
                 role: str = "search", tags: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.search_id = search_id
        self.search_name = search_name
        self.role = role
        self.tags = dict(tags or {})
        self._client: Any = None
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._children: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:  # picklable for Ray's tuner.pkl
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = mlflow_client(self.uri)
        return self._client

    def check(self) -> None:
        """Reach the store once (creating the experiment).

        Raises:
            ServiceError: the tracking server or store cannot be used.
        """
        check_tracking_uri(self.uri)
        try:
            with _store_setup_lock(self.uri):
                self.experiment_id  # noqa: B018
        except Exception as e:  # mlflow raises its own exception types
            raise ServiceError(f"cannot use the MLflow tracking store {self.uri}: "
                               f"{one_line(e, 200)}") from None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                self._experiment_id = found.experiment_id
                if EXPERIMENT_KIND_TAG not in found.tags:  # made by MLflow itself, or older
                    self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG,
                                                   EXPERIMENT_KIND)
            else:
                self._experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=self._artifact_location(),
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        return self._experiment_id

    def _artifact_location(self) -> str | None:
        """Artifacts of a SQLite store go beside the database file, not in the working folder."""
        if not self.uri.startswith("sqlite:///"):
            return None
        db = Path(self.uri[len("sqlite:///"):])
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", self.experiment)
        return (db.parent / "mlartifacts" / safe).resolve().as_uri()

    def _find(self, tags: dict[str, str]) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=2)
        return runs[0].info.run_id if runs else None

    def parent_run(self, params: dict[str, Any] | None = None) -> str:
        """The search's parent run (found by tag, else created with ``params``), RUNNING."""
        if self._parent is None:
            tags = {"extune.search_id": self.search_id, "extune.role": self.role}
            run_id = self._find(tags)
            if run_id is None:
                run = self.client.create_run(self.experiment_id, run_name=self.search_name,
                                             tags={**self.tags, **tags})
                run_id = run.info.run_id
                self.log_params(run_id, params or {})
            else:
                self.client.update_run(run_id, status="RUNNING")
            self._parent = run_id
        return self._parent

    def child_run(self, trial_id: str, *, name: str, params: dict[str, Any],
                  tags: dict[str, str] | None = None) -> tuple[str, bool]:
        """The trial's child run, found by tag or created; returns ``(run_id, created)``."""
        if trial_id in self._children:
            return self._children[trial_id], False
        key = {"extune.search_id": self.search_id, "extune.trial_id": trial_id}
        run_id = self._find(key)
        created = run_id is None
        if created:
            all_tags = {**key, "mlflow.parentRunId": self.parent_run(), "extune.role": "trial",
                        **(tags or {})}
            run_id = self.client.create_run(self.experiment_id, run_name=name,
                                            tags=all_tags).info.run_id
            self.log_params(run_id, params)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._children[trial_id] = run_id
        return run_id, created

    def find_child(self, trial_id: str) -> str | None:
        if trial_id not in self._children:
            run_id = self._find({"extune.search_id": self.search_id, "extune.trial_id": trial_id})
            if run_id is None:
                return None
            self._children[trial_id] = run_id
        return self._children[trial_id]

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self.client.log_batch(run_id, params=items[i:i + _MAX_PARAMS])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(v)]
        for i in range(0, len(items), _MAX_METRICS):
            self.client.log_batch(run_id, metrics=items[i:i + _MAX_METRICS])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def last_step(self, run_id: str) -> int:
        """The last logged ``epoch`` step of a run (0 if none): a resumed trial replays nothing."""
        history = self.client.get_metric_history(run_id, "epoch")
        return max((m.step for m in history), default=0)

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def share_view(self, key: str, view: dict[str, Any]) -> str:
        """Save a runs-table view (columns, sort, expanded rows) as the experiment's shared view
        ``key``; returns its page (:func:`view_page`)."""
        self.client.set_experiment_tag(self.experiment_id, f"{SHARED_VIEW_TAG}{key}",
                                       json.dumps(view))
        return view_page(self.experiment_id, key)

    def rename(self, run_id: str, name: str) -> None:
        self.client.update_run(run_id, name=name)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None
                     ) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)


@contextlib.contextmanager
def _store_setup_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive file lock beside a SQLite store while it is set up: MLflow creates and
    migrates the tables and the experiment on first use, and two searches doing that at once
    on a new store fail ("No such index ...", "experiment already exists"). Other stores need
    no lock (a server serialises its own set-up)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(uri[len("sqlite:///"):]).expanduser().with_suffix(".extune-lock")
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
      keys) and, once the trial ends, ``objective/<name>`` for each objective (the value told
      to Optuna, or a pruned trial's last one);
    - tags: ``extune.state`` (``running``, ``complete``, ``pruned``, ``failed``,
      ``interrupted``), ``extune.trial_id``, ``extune.node_id``, ``extune.error`` (failed);
      the run name ends with the state once the trial ends;
    - artifacts: ``config.yaml`` (the trial's full Config), the labelled saliency grid of its
      last epoch (every trial that trained an epoch), and with ``log_checkpoint`` the
      checkpoint;
    - status FINISHED (complete or pruned), FAILED, or KILLED (interrupted).

    The hooks only build ops for the search's :class:`~extune.search.writer.TrackingWriter`
    (one thread, in order, journaled in ``journal_dir``): a slow or unreachable tracking store
    never stalls Tune's event loop.

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

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks; a new process starts
        return {**self.__dict__, "_started": set(), "_ended": set()}  # its runs again (by tag)

    @property
    def writer(self) -> Any:
        from extune.search.writer import writer_for

        return writer_for(self.tracker, self.journal_dir)

    def _submit(self, op: str, trial: Any, **fields: Any) -> None:
        self.writer.submit({"op": op, "trial": trial.trial_id, **fields})

    def setup(self, **info: Any) -> None:
        self.writer  # noqa: B018  (starts the thread; unsent ops of a previous run go first)

    def _label(self, trial: Any) -> str:
        number, _ = split_config(trial.config)
        return trial_label(number, trial.trial_id, config_label(trial.config))

    def _start(self, trial: Any) -> None:
        """Queue the trial's run (created or found again by tag) once per process."""
        if trial.trial_id in self._started:
            return
        self._started.add(trial.trial_id)
        number, overrides = split_config(trial.config)
        params = {k: v for k, v in overrides.items() if k not in self.constant}
        method = overrides.get("method", self.base.get("method", ""))
        tags = {**self.tags, "extune.searched": ",".join(sorted(params)),
                "extune.method": str(method), STATE_TAG: "running"}
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
        if step == 1:
            self._submit("tags", trial, tags={f"extune.{k}": str(result[k]) for k in
                                              ("node_id", "hostname", "pid") if k in result})
        self._submit("metrics", trial, metrics=metrics, step=step)

    @_never_fail
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)
        planned = trial_config(self.base, trial.config).optim.epochs
        epoch = int(trial.last_result.get("epoch", planned))
        state = "pruned" if epoch < planned else "complete"
        self._settle(trial, state, "FINISHED", {"extune.pruned": str(state == "pruned").lower()},
                     suffix=f"pruned at {epoch}/{planned}" if state == "pruned" else "complete")

    @_never_fail
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)
        self._settle(trial, "failed", "FAILED",
                     {"extune.error": trial_error(trial), "extune.pruned": "false"},
                     suffix="failed")

    def _settle(self, trial: Any, state: str, status: str, tags: dict[str, str], *,
                suffix: str) -> None:
        """A trial's end: state, objective metrics, artifacts, name, status."""
        self._submit("tags", trial, tags={**tags, STATE_TAG: state})
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


def view_page(experiment_id: str, share_key: str | None = None) -> str:
    """The MLflow UI page (after ``http://host:port/``) of an experiment's runs table in the
    model-training view, with a shared view when ``share_key`` is given."""
    query = f"viewStateShareKey={share_key}&" if share_key else ""
    return f"#/experiments/{experiment_id}/runs?{query}workflowType=machine_learning"


def runs_table_view(parent_run: str, objectives: tuple[Objective, ...],
                    params: list[str]) -> dict[str, Any]:
    """A search's runs-table view: its trials expanded under the parent, sorted by the first
    objective, with the columns that compare them (objectives, accuracy and alignment, the
    state, the searched params)."""
    metrics = [f"objective/{o.name}" for o in objectives]
    metrics += [m for m in ("val/accuracy", "val/alignment")
                if m not in {o.metric for o in objectives}]
    columns = ([f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]
               + [f"tags.`{STATE_TAG}`"])
    first = objectives[0] if objectives else None
    view: dict[str, Any] = {"selectedColumns": columns, "runsExpanded": {parent_run: True},
                            "searchFilter": ""}
    if first is not None:
        view.update(orderByKey=f"metrics.`objective/{first.name}`",
                    orderByAsc=first.mode == "min")
    return view


def recent_views(uri: str, limit: int = 5) -> list[tuple[str, str]]:
    """``(search name, UI page)`` of the latest searches in a store, newest first."""
    client = mlflow_client(uri)
    experiments = client.search_experiments()
    if not experiments:
        return []
    runs = client.search_runs([e.experiment_id for e in experiments],
                              filter_string="tags.`extune.role` = 'search'",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    return [(r.info.run_name, r.data.tags[VIEW_TAG]) for r in runs if VIEW_TAG in r.data.tags]


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` with MLflow's and alembic's INFO logging (table creation) silenced."""
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # after the import: mlflow sets its levels on import
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)
