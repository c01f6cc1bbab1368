"""The MLflow client of a search: :class:`MlflowTracker` finds or creates its runs by tag.

Why not Ray's ``MLflowLoggerCallback``: it makes no parent run, logs Ray's internal keys as
metrics and opens new runs for restored trials (leaving the old ones RUNNING). Here every run is
found again by its tags (``extune.search_id``, ``extune.trial_id``) before one is created, so a
resumed search continues its runs instead of duplicating them. All writes happen on the driver,
batched with ``log_batch``, by one writer thread (:mod:`extune.tracking.journal`) that
keeps their order and keeps them on disk until the store has them; the workers need no MLflow
access.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from extune.errors import ServiceError, one_line
from extune.tracking.store import check_tracking_uri

__all__ = ["MlflowTracker", "mlflow_client", "param_value", "tag_filter", "all_runs", "STATE_TAG",
           "EXPERIMENT_KIND_TAG", "ROLE_TAG", "FINAL_ROLE", "TRAIN_ID_TAG",
           "VIEW_TAG", "SHARED_VIEW_TAG", "FINAL_RUNS_TAG", "view_page", "run_page", "model_page",
           "version_page"]

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's UI opens an experiment with this kind in its model-training view (the runs
table), not in the GenAI view (traces) it infers for an experiment without the tag."""
SHARED_VIEW_TAG = "mlflow.sharedViewState."
"""Experiment tag prefix of MLflow 3's shared runs-table views: the value is the view as JSON
(``selectedColumns``, ``orderByKey``, ``runsExpanded``, ...), opened by the page URL's
``viewStateShareKey``. The page's ``workflowType=machine_learning`` picks the model-training
view; MLflow (checked with 3.17) ignores the experiment kind tag when its switch between GenAI
and model training is on."""
VIEW_TAG = "extune.mlflow_view"
"""Tag of a search's parent run: the UI page of its runs table (:func:`view_page`)."""
FINAL_RUNS_TAG = "extune.final_runs"
"""Tag of a search's parent run and of a trial run: the ids of the runs of ``extune train``
trained from it (comma-separated)."""
STATE_TAG = "extune.state"
"""A trial run's state: ``running``, ``complete``, ``pruned``, ``failed`` or ``interrupted``."""
ROLE_TAG = "extune.role"
"""What a run is: ``search`` (a search's parent run), ``trial`` (a search's trial), ``study``
(a study's parent run) or ``final`` (:data:`FINAL_ROLE`)."""
FINAL_ROLE = "final"
"""The role of a final run: the run of ``extune train`` (tag :data:`TRAIN_ID_TAG`) and a
study's final runs (tag ``extune.stage=final``); never ``trial``, so that a filter of trials
leaves them out. Runs of ``extune train`` written before extune 0.2 have the role ``train``."""
TRAIN_ID_TAG = "extune.train_id"
"""The id of the run of ``extune train`` (how ``--resume`` finds it again)."""
log = logging.getLogger(__name__)
_MAX_PARAMS = 100  # MLflow's limit per log_batch call
_MAX_METRICS = 1000


def tag_filter(tags: dict[str, Any]) -> str:
    """MLflow's filter of the runs with all these tags (``tags.`extune.role` = 'trial' and
    ...``; backquotes: the keys have dots)."""
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


def all_runs(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    """Every run that matches, newest first (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string,
                                  order_by=["attributes.start_time DESC"], max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


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
        role: the parent run's ``extune.role`` tag: ``search``, ``study`` for a study's run, or
            ``final`` for the run of ``extune train`` (:mod:`~extune.tracking.training_run`).
        tags: more tags of the parent run when it is created (``mlflow.parentRunId`` nests a
            search under a study's run).
        id_tag: the tag that holds ``search_id`` on the parent run (``extune.train_id`` for
            the run of ``extune train``, which has no trials).
        reopen: whether :meth:`parent_run` sets a found run RUNNING again (a resumed search);
            ``False`` for ``extune sync``, which only sends what was written and ends what a
            killed process left RUNNING.
    """

    id_tag = "extune.search_id"
    """Tag of the parent run's id (a class default: trackers pickled by earlier versions)."""

    def __init__(self, uri: str, experiment: str, search_id: str, search_name: str, *,
                 role: str = "search", tags: dict[str, str] | None = None,
                 id_tag: str | None = None, reopen: bool = True) -> None:
        if id_tag is not None:
            self.id_tag = id_tag
        self.uri = uri
        self.experiment = experiment
        self.search_id = search_id
        self.search_name = search_name
        self.role = role
        self.tags = dict(tags or {})
        self.reopen = reopen
        self._client: Any = None
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._children: dict[str, str] | None = None  # trial id -> run id (_child_runs)
        self._reopened: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # picklable for Ray's tuner.pkl
        return {**self.__dict__, "_client": None, "_children": None, "_reopened": set()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # the store is read again after a restore: runs were made after the pickle (and an
        # older extune pickled its partial map of them)
        self.__dict__.update({**state, "_children": None, "_reopened": set()})

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
        runs = self.client.search_runs([self.experiment_id], filter_string=tag_filter(tags),
                                       max_results=2)
        return runs[0].info.run_id if runs else None

    def parent_run(self, params: dict[str, Any] | None = None) -> str:
        """The search's parent run (found by tag, else created with ``params``), RUNNING
        unless the tracker was made with ``reopen=False`` (``extune sync``: a found run keeps
        its status, so a search that ended is not turned RUNNING again)."""
        if self._parent is None:
            tags = {self.id_tag: self.search_id, ROLE_TAG: self.role}
            run_id = self._find(tags)
            if run_id is None and self.role == FINAL_ROLE:  # a run of an older extune
                run_id = self._find({**tags, ROLE_TAG: "train"})
            if run_id is None:
                run = self.client.create_run(self.experiment_id, run_name=self.search_name,
                                             tags={**self.tags, **tags})
                run_id = run.info.run_id
                self.log_params(run_id, params or {})
            elif self.reopen:
                self.client.update_run(run_id, status="RUNNING")
            self._parent = run_id
        return self._parent

    def child_run(self, trial_id: str, *, name: str, params: dict[str, Any],
                  tags: dict[str, str] | None = None) -> tuple[str, bool]:
        """The trial's child run, found by tag or created; returns ``(run_id, created)``."""
        children = self._child_runs()
        if trial_id in children:
            if trial_id not in self._reopened:  # a run an earlier driver made: running again
                self.client.update_run(children[trial_id], status="RUNNING")
                self._reopened.add(trial_id)
            return children[trial_id], False
        key = {"extune.search_id": self.search_id, "extune.trial_id": trial_id}
        all_tags = {**key, "mlflow.parentRunId": self.parent_run(), "extune.role": "trial",
                    **(tags or {})}
        run_id = self.client.create_run(self.experiment_id, run_name=name,
                                        tags=all_tags).info.run_id
        self.log_params(run_id, params)
        children[trial_id] = run_id
        self._reopened.add(trial_id)
        return run_id, True

    def find_child(self, trial_id: str) -> str | None:
        return self._child_runs().get(trial_id)

    def _child_runs(self) -> dict[str, str]:
        """Trial id -> run id of the search's trial runs, read from the store once (all pages;
        the newest of a trial's runs where an older extune left two); later trials' runs are
        added as this tracker creates them. One query per new trial instead grew with the
        experiment's runs: 4.7% of a search driver's busy time at trial 2,000."""
        if self._children is None:
            runs = all_runs(self.client, [self.experiment_id],
                            tag_filter({"extune.search_id": self.search_id}))
            self._children = {}
            for run in runs:  # newest first
                trial = run.data.tags.get("extune.trial_id")
                if trial is not None:
                    self._children.setdefault(trial, run.info.run_id)
        return self._children

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self.client.log_batch(run_id, params=items[i:i + _MAX_PARAMS])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, _significant(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(v)]
        for i in range(0, len(items), _MAX_METRICS):
            self.client.log_batch(run_id, metrics=items[i:i + _MAX_METRICS])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def last_step(self, run_id: str) -> int:
        """The last epoch logged to a run (0 if none): a resumed trial replays nothing. Read
        from ``train/loss``, which every epoch reports (and ``epoch``, which older runs
        logged as a metric)."""
        return max((m.step for key in ("train/loss", "epoch")
                    for m in self.client.get_metric_history(run_id, key)), default=0)

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def end_abandoned(self) -> int:
        """End as KILLED (state ``interrupted``) every run of this search (its parent and
        trials: tag ``extune.search_id``; the run of ``extune train``: its ``id_tag``) that
        MLflow still has as RUNNING. Only for a folder no process writes (its lock is free):
        a process killed with SIGKILL, or a lost node, left them so.

        Returns:
            How many runs were ended.
        """
        ids = {self.id_tag, "extune.search_id"}
        ended = 0
        for tag in sorted(ids):
            runs = self.client.search_runs(
                [self.experiment_id], max_results=5000,
                filter_string=f"{tag_filter({tag: self.search_id})} and "
                              "attributes.status = 'RUNNING'")
            for run in runs:
                self.set_tags(run.info.run_id, {STATE_TAG: "interrupted"})
                self.end(run.info.run_id, "KILLED")
                ended += 1
        return ended

    def share_view(self, key: str, view: dict[str, Any]) -> str:
        """Save a runs-table view (columns, sort, expanded rows) as the experiment's shared view
        ``key``; returns its page (:func:`view_page`)."""
        self.client.set_experiment_tag(self.experiment_id, f"{SHARED_VIEW_TAG}{key}",
                                       json.dumps(view))
        return view_page(self.experiment_id, key)

    def add_final_run(self, run_id: str, final_run_id: str, name: str) -> None:
        """Tell a search's run (its parent or a trial) about a run of ``extune train`` trained
        from it: the tag ``extune.final_runs`` lists their ids, and its description starts with a
        link to each (once per final run: the collapsed description shows it)."""
        from extune.tracking.notes import NOTE_TAG

        run = self.client.get_run(run_id)
        listed = [r for r in run.data.tags.get(FINAL_RUNS_TAG, "").split(",") if r]
        if final_run_id in listed:
            return
        final = self.client.get_run(final_run_id)
        link = f"[{name}]({run_page(final.info.experiment_id, final_run_id)})"
        note = run.data.tags.get(NOTE_TAG, "").rstrip()
        what = "search" if run.data.tags.get("extune.role") == "search" else "trial"
        line = f"Final run trained from this {what}: {link}"
        self.set_tags(run_id, {FINAL_RUNS_TAG: ",".join([*listed, final_run_id]),
                               NOTE_TAG: f"{line}\n\n{note}".rstrip()})  # first: shown

    def rename(self, run_id: str, name: str) -> None:
        self.client.update_run(run_id, name=name)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None
                     ) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)


def _significant(value: float) -> float:
    """``value`` to 7 significant digits: the metrics come from float32 tensors, whose digits
    beyond the 7th are noise (0.18999999761581 is 0.19 in float32), and the UI shows them all."""
    return float(f"{float(value):.7g}")


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


def view_page(experiment_id: str, share_key: str | None = None) -> str:
    """The MLflow UI page (after ``http://host:port/``) of an experiment's runs table in the
    model-training view, with a shared view when ``share_key`` is given."""
    query = f"viewStateShareKey={share_key}&" if share_key else ""
    return f"#/experiments/{experiment_id}/runs?{query}workflowType=machine_learning"


def run_page(experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run (after ``http://host:port/``; a link in a run's description
    opens it)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def model_page(experiment_id: str, model_id: str) -> str:
    """The MLflow UI page of a logged model (after ``http://host:port/``)."""
    return f"#/experiments/{experiment_id}/models/{model_id}"


def version_page(name: str, version: str) -> str:
    """The MLflow UI page of a registered model's version (after ``http://host:port/``)."""
    return f"#/models/{name}/versions/{version}"


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` with MLflow's and alembic's INFO logging (table creation) silenced,
    and its SQL errors logged in one line (:class:`SqlErrorOneLine`)."""
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # after the import: mlflow sets its levels on import
        logging.getLogger(name).setLevel(logging.WARNING)
    logger = logging.getLogger(_SQL_ERROR_LOGGER)
    if not any(isinstance(f, SqlErrorOneLine) for f in logger.filters):
        logger.addFilter(SqlErrorOneLine())
    return MlflowClient(tracking_uri=uri)


_SQL_ERROR_LOGGER = "mlflow.store.db.utils"
"""MLflow's logger of the SQL errors of a database store, each with a 60-line traceback."""


class SqlErrorOneLine(logging.Filter):
    """MLflow logs every SQL error of its store with the traceback, then raises it: a store
    that is locked for a while (another process writing) printed four such tracebacks during
    one ``extune train``. Its ``database is locked`` is left out (the writer of the journal
    retries, and says once that tracking is behind), any other error is one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        if "database is locked" in str(error):
            return False
        record.msg, record.args = f"MLflow's store: {one_line(error, 200)}", None
        record.exc_info = record.exc_text = None
        return True
