"""The MLflow run of ``extune train``: a final run beside the searches, its model and lineage.

``extune train`` opens one run (:func:`open_final_run`), found again by its tag
``extune.train_id`` (an :class:`~extune.tracking.client.MlflowTracker` whose "parent"
is this run), so that ``--resume`` continues it. The run holds

- params: every config key (dotted);
- metrics: every epoch's (step = epoch), then the test split's at the last epoch;
- tags: ``extune.role=final``, ``extune.state`` (``running``, ``complete``, ``failed``,
  ``interrupted``), ``extune.method``, ``extune.version``, ``extune.out``, ``extune.error``, and
  for an exported config ``extune.lineage.<key>`` (search, trial, MLflow run, selection rule,
  extune version of the export: :data:`~extune.train.config.LINEAGE_KEY`);
- a description (:func:`~extune.tracking.notes.final_note`) with links to the trial and
  the search it came from; the search's parent run and the trial run get a link back and the
  tag ``extune.final_runs``;
- artifacts: ``config.yaml``, ``metrics.json``, the labelled saliency grid, ``summary.txt`` (the
  console's final table) and the model ``model`` (:mod:`~extune.tracking.logged_model`),
  registered with ``--register NAME``;
- status FINISHED, FAILED (an error) or KILLED (Ctrl-C, SIGTERM, SIGHUP).

The store is checked and the run created before training starts (one line when it cannot be:
the same check as a search's). Everything after goes through the journal writer of
``<out>/tracking/`` (:mod:`~extune.tracking.journal`): a store that stops answering
costs no training, the unsent writes stay there and ``extune sync <out>`` sends them. Trials of
a search never open such a run: this is the command line's, not :func:`~extune.train.fit`'s.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extune import __version__
from extune.errors import ConfigError, ServiceError, one_line
from extune.tracking.client import (
    FINAL_ROLE,
    STATE_TAG,
    TRAIN_ID_TAG,
    MlflowTracker,
    run_page,
    tag_filter,
)
from extune.tracking.journal import (
    TRACKING_DIR,
    Op,
    TrackingWriter,
    apply_op,
    bounded_http_client,
    close_writer,
    writer_for,
)
from extune.tracking.notes import NOTE_TAG, final_note, model_sentence
from extune.tracking.store import resolve_tracking_uri
from extune.tracking.sync import Job

__all__ = ["FinalRun", "open_final_run", "train_journals", "is_train_folder", "TRAIN_ID_TAG",
           "LINEAGE_PREFIX", "RUN_FILE", "DEFAULT_EXPERIMENT"]

log = logging.getLogger(__name__)

LINEAGE_PREFIX = "extune.lineage."
RUN_FILE = "run.json"
"""``<out>/tracking/run.json``: the store, experiment and id of the run (for ``--resume`` and
``extune sync``)."""
DEFAULT_EXPERIMENT = "extune"
SUMMARY_NAME = "summary.txt"


@dataclass
class FinalRun:
    """The MLflow run of one ``extune train`` (see the module docstring); a context manager
    that ends the run FAILED or KILLED when training raises."""

    tracker: MlflowTracker
    run_id: str
    out: Path
    what: str
    register: str | None = None
    source: str | None = None
    _writer: TrackingWriter | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.tracker.search_name

    @property
    def page(self) -> str:
        """The run's UI page (after ``http://host:port/``)."""
        return run_page(self.tracker.experiment_id, self.run_id)

    # ------------------------------------------------------------ what training calls
    def epoch(self, metrics: dict[str, float]) -> None:
        """One epoch's metrics (the test split's wait for :meth:`finish`)."""
        values = {k: v for k, v in metrics.items() if k != "epoch" and not k.startswith("test/")}
        self._submit(Op("metrics", metrics=values, step=int(metrics.get("epoch", 0))))

    def finish(self, metrics: dict[str, float], epochs: int, summary: str) -> None:
        """The end of training: test metrics, files, the model, description, FINISHED."""
        from extune.files import atomic_write_text
        from extune.tracking.logged_model import MODEL_NAME
        from extune.train.checkpoint import CHECKPOINT_NAME
        from extune.train.grid import GRID_NAME

        test = {k: v for k, v in metrics.items() if k.startswith("test/")}
        if test:
            self._submit(Op("metrics", metrics=test, step=epochs, once_per_step=False))
        atomic_write_text(self.out / SUMMARY_NAME, summary)
        for name in ("config.yaml", "metrics.json", GRID_NAME, SUMMARY_NAME):
            self._submit(Op("artifact", path=str(self.out / name)))
        # the description before the model: logging the model links its sentence
        self._describe("complete", {}, metrics,
                       model_sentence(MODEL_NAME, register=self.register))
        self._submit(Op("model", path=str(self.out / CHECKPOINT_NAME), dir=MODEL_NAME,
                        register=self.register, step=epochs))
        self._submit(Op("end", status="FINISHED"))

    def __enter__(self) -> FinalRun:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> bool:
        if kind is None:
            return False
        if issubclass(kind, KeyboardInterrupt):
            self._end("interrupted", "KILLED", {})
        else:
            self._end("failed", "FAILED", {"extune.error": one_line(error, 500)})
        self.close(timeout=10)
        return False

    def close(self, timeout: float) -> int:
        """Send what is queued (trying for at most ``timeout`` seconds); returns the writes left
        in ``<out>/tracking/`` (``extune sync <out>`` sends them).

        Stopped while it sends (Ctrl-C, SIGTERM, SIGHUP: ``KeyboardInterrupt``), it ends the
        run KILLED straight away, so that the run is not left RUNNING behind writes that wait
        (the model's upload), and raises again; the writes stay in the journal, and
        ``extune sync <out>`` sends them (the run's own end with them).
        """
        if self._writer is None:
            return 0
        self._writer = None
        try:
            return close_writer(self.out / TRACKING_DIR, timeout)
        except KeyboardInterrupt:
            self._end_now()
            raise

    def _end_now(self) -> None:
        """End the run KILLED (``interrupted``) at once, past the journal's queue."""
        try:
            self.tracker.set_tags(self.run_id, {STATE_TAG: "interrupted"})
            self.tracker.end(self.run_id, "KILLED")
        except Exception as e:  # MLflow, requests and SQLAlchemy raise many types
            log.warning("could not end the MLflow run %s: %s; extune sync %s ends it",
                        self.run_id, one_line(e, 200), self.out)

    def registered_version(self) -> str | None:
        """The registered version of this run's model (``None`` without ``--register`` or
        before the store has it)."""
        if not self.register:
            return None
        try:
            found = self.tracker.client.search_model_versions(
                f"name = '{self.register}' and run_id = '{self.run_id}'")
        except Exception as e:  # MLflow, requests and SQLAlchemy raise many types
            log.warning("could not read the Model Registry: %s", one_line(e, 200))
            return None
        return str(found[0].version) if found else None

    # ------------------------------------------------------------ inside
    def _end(self, state: str, status: str, tags: dict[str, str]) -> None:
        self._describe(state, tags)
        self._submit(Op("end", status=status))

    def _describe(self, state: str, tags: dict[str, str],
                  metrics: dict[str, float] | None = None, model: str | None = None) -> None:
        note = final_note(name=self.name, state=state, what=self.what, metrics=metrics or {},
                          source=self.source, model=model, out=str(self.out))
        self._submit(Op("tags", tags={**tags, STATE_TAG: state, NOTE_TAG: note}))

    def _submit(self, op: Op) -> None:
        """Journal the write in ``<out>/tracking/`` once training has written into the output
        folder (its ``config.yaml``); before that (a failed start) apply it at once: nothing is
        left on disk."""
        if self._writer is None and (self.out / "config.yaml").is_file():
            self._writer = writer_for(self.tracker, self.out / TRACKING_DIR)
            _write_run_file(self.out, self.tracker)
        if self._writer is not None:
            self._writer.submit(op)
            return
        try:
            apply_op(self.tracker, op, {})
        except Exception as e:  # MLflow, requests and SQLAlchemy raise many types
            log.warning("MLflow tracking failed (%s): %s", op.kind, one_line(e, 200))


def open_final_run(cfg: Any, out: Path, *, tracking_uri: str | None, experiment: str | None,
                   lineage: dict[str, str], resume: Path | None, register: str | None
                   ) -> FinalRun:
    """Check the store and create (or, resuming, find again) the run of ``extune train``.

    Raises:
        ServiceError: the store cannot be reached or used (before anything trains).
    """
    bounded_http_client()
    previous = _run_file(resume) if resume is not None else {}
    uri = resolve_tracking_uri(tracking_uri or previous.get("tracking_uri"))  # resumed: its store
    out = Path(out).resolve()
    tags = {"extune.method": cfg.method, "extune.version": __version__, "extune.out": str(out),
            **{f"{LINEAGE_PREFIX}{k}": v for k, v in lineage.items()}}
    tracker = MlflowTracker(uri, experiment or previous.get("experiment") or DEFAULT_EXPERIMENT,
                            previous.get("train_id") or uuid.uuid4().hex,
                            previous.get("name") or out.name, role=FINAL_ROLE, tags=tags,
                            id_tag=TRAIN_ID_TAG)
    tracker.check()
    if register is not None:
        _check_registry(tracker)
    try:
        run_id = tracker.parent_run(params=cfg.flatten())
        source, linked = _source(tracker, lineage)
        what = (f"{cfg.method} on {cfg.data.name} with {cfg.model.backbone}, "
                f"{cfg.optim.epochs} epoch{'s' if cfg.optim.epochs != 1 else ''}")
        run = FinalRun(tracker, run_id, out, what, register, source)
        tracker.set_tags(run_id, {STATE_TAG: "running", NOTE_TAG: final_note(
            name=run.name, state="running", what=what, metrics={}, source=source, model=None,
            out=str(out))})
    except Exception as e:  # MLflow, requests and SQLAlchemy raise many types
        raise ServiceError(f"cannot create the MLflow run in {uri}: {one_line(e, 200)}; pass "
                           "another --tracking-uri, or --no-track") from None
    for other in linked:
        run._submit(Op("link", link_run=other, name=run.name))
    return run


def _check_registry(tracker: MlflowTracker) -> None:
    """``--register`` needs a store with a Model Registry: said before anything trains.

    Raises:
        ServiceError: the store has none (or refuses to list it).
    """
    try:
        tracker.client.search_registered_models(max_results=1)
    except Exception as e:  # MLflow, requests and SQLAlchemy raise many types
        raise ServiceError(f"--register needs a Model Registry, and the MLflow store "
                           f"{tracker.uri} has none ({one_line(e, 160)}); drop --register, or "
                           "use a database or server store (sqlite:///mlflow.db)") from None


def _source(tracker: MlflowTracker, lineage: dict[str, str]) -> tuple[str | None, list[str]]:
    """Where an exported config came from, as a sentence with links, and the runs of its
    search in this store (its trial and parent) to link back from."""
    if not lineage:
        return None, []
    trial = lineage.get("trial", "a trial")
    search = lineage.get("search", "a search")
    rule = lineage.get("rule") or lineage.get("select")
    tail = (f", {rule}" if rule else "") + (
        f" (`extune export`, extune {lineage['extune_version']})"
        if "extune_version" in lineage else "")
    stored = lineage.get("tracking_uri")
    if stored and resolve_tracking_uri(stored) != tracker.uri:
        return (f"Trained from {trial} of search `{search}`{tail}; its runs are in the store "
                f"`{stored}`.", [])
    runs = {"trial": _found(tracker, lineage.get("run_id"),
                            {"extune.search_id": lineage.get("search_id"),
                             "extune.trial_id": lineage.get("trial_id")}),
            "search": _found(tracker, lineage.get("parent_run_id"),
                             {"extune.search_id": lineage.get("search_id"),
                              "extune.role": "search"})}
    names = {"trial": trial, "search": f"`{search}`"}
    text = {k: f"[{names[k]}]({run_page(r.info.experiment_id, r.info.run_id)})" if r
            else names[k] for k, r in runs.items()}
    return (f"Trained from {text['trial']} of search {text['search']}{tail}.",
            [r.info.run_id for r in runs.values() if r is not None])


def _found(tracker: MlflowTracker, run_id: str | None, tags: dict[str, str | None]) -> Any:
    """A run of the store by id, else by tags (every experiment); ``None`` when not there."""
    from mlflow.exceptions import MlflowException

    client = tracker.client
    try:
        if run_id:
            return client.get_run(run_id)
        if not all(tags.values()):
            return None
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, filter_string=tag_filter(tags), max_results=1)
        return runs[0] if runs else None
    except MlflowException:
        return None


# ------------------------------------------------------------------ <out>/tracking/run.json
def _write_run_file(out: Path, tracker: MlflowTracker) -> None:
    from extune.files import atomic_write_text

    record = {"tracking_uri": tracker.uri, "experiment": tracker.experiment,
              "train_id": tracker.search_id, "name": tracker.search_name}
    try:
        atomic_write_text(out / TRACKING_DIR / RUN_FILE, json.dumps(record, indent=2))
    except OSError as e:  # a full disk: --resume starts a new run, sync cannot send
        log.warning("cannot write %s: %s", out / TRACKING_DIR / RUN_FILE, e.strerror or e)


def _run_file(folder_or_checkpoint: Path) -> dict[str, str]:
    """The run record of an output folder (or of the folder of a checkpoint), if any."""
    from extune.train.checkpoint import checkpoint_path

    path = Path(folder_or_checkpoint)
    folder = path if path.is_dir() else checkpoint_path(path).parent
    try:
        return json.loads((folder / TRACKING_DIR / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def is_train_folder(path: str | Path) -> bool:
    """Whether ``path`` is an output folder of a tracked ``extune train``."""
    return (Path(path) / TRACKING_DIR / RUN_FILE).is_file()


def train_journals(folder: str | Path) -> list[Job]:
    """The journal of an ``extune train`` output folder with its run's tracker.

    Raises:
        ConfigError: not such a folder.
    """
    root = Path(folder).resolve()
    record = _run_file(root)
    if not record:
        raise ConfigError(f"{root} holds no MLflow run record ({TRACKING_DIR}/{RUN_FILE}); "
                          "pass a search, study or `extune train` output folder")

    def tracker() -> MlflowTracker:
        return MlflowTracker(record["tracking_uri"], record["experiment"], record["train_id"],
                             record["name"], role=FINAL_ROLE, id_tag=TRAIN_ID_TAG,
                             reopen=False)

    return [(root / TRACKING_DIR, tracker)]
