"""``run_search``: Ray Tune + Optuna + ASHA over a space, MLflow for every trial, best config out.

The flow (docs/search.md and docs/interfaces.md):

1. validate the settings, the base config and the space (sampled against Config), reach the
   tracking store (writable), check that ``--out`` is writable and load the data set -- all
   before Ray starts, so bad input fails in one line;
2. start or join Ray and check the resources a trial asks for against the cluster;
3. only then create the search folder (:mod:`extune.search.folder`; its lock, like a resumed
   one's, keeps a second writer out: :mod:`extune.locks`) and the MLflow parent run
   (a failure from here on before any trial marks the folder ``failed``); the decoded data set
   goes to Ray's object store once;
4. ``Tuner(train_trial, PruneAwareOptunaSearch(space), ASHA)`` and fit (or ``Tuner.restore``);
5. settle trials the time budget stopped, rank the trials, write the summary, the plots and the
   best config, and log them on the parent run.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from extune.errors import ConfigError, DiskFullError, ExtuneError
from extune.evaluate.objectives import Objective
from extune.files import check_free_space, check_writable, is_disk_full
from extune.locks import folder_lock, unlock_folder
from extune.search.connections import connect_ray, probe_ray_address, quiet_ray_env
from extune.search.engine.held_settings import held_space, reconcile_fixed
from extune.search.engine.resources import ResourcePlan, cluster_plan
from extune.search.engine.stopped_trials import ray_trials, settle_stopped, was_interrupted
from extune.search.folder import SearchDir, refuse_taken_name
from extune.search.reporting.parent_run import (
    close_orphans,
    close_search_writer,
    journal_dir,
    log_results,
    mark_interrupted,
    parent_facts,
    search_tracker,
    search_writer,
)
from extune.search.reporting.results import (
    TrialRecord,
    pareto_front,
    records_from_study,
    select_trial,
)
from extune.search.reporting.summary import write_outputs, write_plots
from extune.search.settings import SearchSettings, make_sampler
from extune.signals import sigint_kept
from extune.spaces import get_space, validate_space
from extune.spaces.validate import SpaceCheck
from extune.tracking.journal import FLUSH_TIMEOUT_S, Op, bounded_http_client
from extune.tracking.store import check_tracking_uri
from extune.train.config import Config

if TYPE_CHECKING:
    from extune.train.data import DataSplits

__all__ = ["SearchResult", "run_search"]

log = logging.getLogger(__name__)



@dataclass
class SearchResult:
    """What a search produced.

    Attributes:
        name: the search name (also the Optuna study and the MLflow parent run name).
        path: the search folder.
        search_id: unique id (MLflow tag ``extune.search_id``).
        objectives: the objectives.
        records: every trial.
        best: the trial whose config was exported (the best, or the knee of the Pareto front).
        pareto: the Pareto front (complete trials no other complete trial dominates).
        best_config: ``<path>/best_config.yaml`` when there was a complete trial.
        tracking_uri: the MLflow store.
        parent_run_id: the MLflow parent run.
        interrupted: the search stopped before its trials ended (resume with ``--resume``).
        wall_s: seconds this call took.
        files: summary files written in the search folder.
        mlflow_view: the MLflow UI page of the search's runs table (after ``http://host:port/``).
        tracking_pending: MLflow writes the store did not take (kept for ``extune sync``).
        plots_left_out: plot name -> why it was not drawn (too few trials to fit an
            importance, nothing varies); ``plots/plots.html`` lists them too.
    """

    name: str
    path: Path
    search_id: str
    objectives: list[Objective]
    records: list[TrialRecord]
    best: TrialRecord | None
    pareto: list[TrialRecord]
    best_config: Path | None
    tracking_uri: str
    parent_run_id: str | None
    interrupted: bool
    wall_s: float
    files: dict[str, Path] = field(default_factory=dict)
    mlflow_view: str | None = None
    tracking_pending: int = 0
    plots_left_out: dict[str, str] = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.records)


def run_search(settings: SearchSettings | None = None, *, resume: str | Path | None = None,
               address: str | None = None, callbacks: list[Any] | None = None,
               stop: Any = None) -> SearchResult:
    """Run a search (or finish an interrupted one) and export its best config.

    Args:
        settings: what to search (``None``: the defaults, a quick ExCon search).
        resume: a search folder to continue; its saved settings are used.
        address: with ``resume``, a Ray cluster to join instead of the saved address.
        callbacks: extra Ray Tune callbacks (picklable: Ray saves them with the search and
            uses the saved ones on resume).
        stop: a Ray Tune ``Stopper`` (``tune.stopper``); a search whose ``stop_all()`` it
            answers with true ends as finished, as one that runs out of ``time_budget_s``
            does (the benchmarks stop a search at a target accuracy this way).

    Raises:
        ExtuneError: bad settings, config or space; unreachable Ray cluster or tracking server;
            missing data.
    """
    from extune.search.engine import disk

    start = time.time()
    quiet_ray_env()
    bounded_http_client()
    disk.reset()
    if resume is not None:
        sdir = SearchDir.load(resume)
        with folder_lock(sdir.path, "search"):  # one writer: a second --resume is refused
            return _resume(sdir, address, start=start, callbacks=callbacks or [], stop=stop)
    settings = settings or SearchSettings()
    base = settings.base_config()
    space = get_space(settings.space)
    check = validate_space(space, base, name=settings.space, seed=settings.seed)
    base, check = reconcile_fixed(settings, base, space, check)
    _check_services(settings, settings.resolved_tracking_uri())
    check_writable(settings.out, "search folders in --out")
    disk.check_storage(settings.storage)
    check_free_space(settings.out, "search folders in --out")
    check_free_space(tempfile.gettempdir(), "the temporary folder trials train in")
    refuse_taken_name(settings)
    from extune.train.data import load_data  # torch: imported on use

    data = load_data(base.data)  # bad data fails here, before Ray or any folder
    return _run(None, settings, base, space, data, check.max_epochs, check, start=start,
                callbacks=callbacks or [], stop=stop)


def _resume(sdir: SearchDir, address: str | None, *, start: float, callbacks: list[Any],
            stop: Any) -> SearchResult:
    """Finish the search of a folder whose lock this process holds (as :func:`run_search`)."""
    from extune.search.engine import disk

    sdir.refuse_failed("start a new one")
    settings = sdir.settings
    if sdir.meta["status"] != "finished":
        disk.check_resumable(sdir)  # before Ray: damage is named, never restarted
    settings.address = address or settings.address
    _check_services(settings, sdir.meta["tracking_uri"])
    if sdir.meta["status"] == "finished":
        return _finish(sdir, search_tracker(sdir), interrupted=False, start=start, trials=[])
    base = sdir.base_config()
    from extune.train.data import load_data  # torch: imported on use

    data = load_data(base.data)  # bad data fails here, before Ray
    return _run(sdir, settings, base, None, data, None, None, start=start, callbacks=callbacks,
                stop=stop)


def _check_services(settings: SearchSettings, tracking_uri: str) -> None:
    """The Ray address answers and the tracking store is reachable and writable."""
    probe_ray_address(settings.address)
    check_tracking_uri(tracking_uri)


def _run(sdir: SearchDir | None, settings: SearchSettings, base: Config, space: Any,
         data: DataSplits, max_epochs: int | None, check: SpaceCheck | None, *, start: float,
         callbacks: list[Any], stop: Any = None) -> SearchResult:
    """Start or join Ray, plan the resources, then (only then) create the folder of a new
    search (``sdir=None``) and run the trials."""
    import ray

    from extune.search.connections import ray_address

    where = ray_address(settings.address)
    _say("starting Ray on this machine ..." if where is None else f"joining Ray at {where} ...")
    started = connect_ray(settings.address)
    created = None
    try:
        plan = cluster_plan(cpus_per_trial=settings.cpus_per_trial,
                            gpus_per_trial=settings.gpus_per_trial,
                            max_concurrent=settings.max_concurrent, trials=settings.trials)
        _check_storage(settings)
        resumed = sdir is not None
        if sdir is None:
            constants = check.constants() if check is not None else {}
            searched = check.keys - set(constants) if check is not None else ()
            sdir = created = SearchDir.create(settings, base, space, searched=searched,
                                              constants=constants)  # locked: ours
        tracker = _prepared(sdir, resumed)
        _say_where(sdir, tracker)
        return _fit(sdir, settings, tracker, plan, data, max_epochs, resumed=resumed,
                    start=start, callbacks=callbacks, stop=stop)
    finally:
        if created is not None:
            unlock_folder(created.path)
        if started:
            ray.shutdown()


def _say(text: str) -> None:
    """One line of what the search does now (a log stays no longer silent than a phase)."""
    Console().print(text, highlight=False, markup=False, soft_wrap=True)


def _say_where(sdir: SearchDir, tracker: Any) -> None:
    """Where the search is, once it has a folder and a parent run: the folder, and the link of
    its live view in the MLflow UI (of a running ``extune ui`` on its store, or of a server
    store; else the command that starts the UI and the page it will have)."""
    from extune.tracking.mlflow_app import DEFAULT_UI, running_ui

    page = sdir.meta.get("mlflow_view")
    address = running_ui(tracker.uri)
    if page and address:
        live = f"follow it live at {address}/{page}"
    elif page:
        live = (f"follow it live with extune ui --search {sdir.name} (on this store: "
                f"{DEFAULT_UI}/{page})")
    else:
        live = f"extune ui --search {sdir.name} prints its link"
    _say(f"search folder {sdir.path}; MLflow: parent run {tracker.parent_run()} in experiment "
         f"{tracker.experiment}; {live}")


def _prepared(sdir: SearchDir, resumed: bool) -> Any:
    """The MLflow tracker of the search; a new search that fails here is marked failed (its
    folder holds no trial: ``--resume`` and ``export`` refuse it, saying why)."""
    try:
        return search_tracker(sdir)
    except ExtuneError as e:
        if not resumed:
            sdir.set_status("failed", error=str(e))
        raise


def _fit(sdir: SearchDir, settings: SearchSettings, tracker: Any, plan: ResourcePlan,
         data: DataSplits, max_epochs: int | None, *, resumed: bool, start: float,
         callbacks: list[Any], stop: Any = None) -> SearchResult:
    from extune.search.engine.budget import search_budgets
    from extune.search.engine.disk import raise_if_disk_full
    from extune.search.engine.tuner import keep_latest_checkpoints

    interrupted = True
    try:
        sdir.set_status("running", resources=plan.text())
        Console().print(plan.text(), highlight=False, markup=False)
        tuner = _tuner(sdir, settings, plan, data, tracker, max_epochs, resumed, callbacks,
                       stop)
        fit_start = time.time()
        with sigint_kept():  # Tune leaves its handler: the next Ctrl-C would be swallowed
            tuner.fit()
        raise_if_disk_full(sdir, tracker, None)
        trials = ray_trials(sdir)
        keep_latest_checkpoints(trials)
        spent = [type(b).__name__ for b in search_budgets(sdir, settings, trials)
                 if b.stop_all()]
        stopped = bool(spent) or (stop is not None and bool(stop.stop_all()))
        interrupted = not stopped and was_interrupted(trials, settings, time.time() - fit_start)
        reason = ("seconds budget" if spent == ["SecondsBudget"] else "epoch budget" if spent
                  else "stopper" if stopped else "time budget")
        return _finish(sdir, tracker, interrupted=interrupted, start=start, trials=trials,
                       stopped_by=reason)
    except DiskFullError:
        raise
    except BaseException as e:
        if interrupted and is_disk_full(e):
            raise_if_disk_full(sdir, tracker, e)
        if interrupted or isinstance(e, KeyboardInterrupt):  # a signal during the summary too
            mark_interrupted(sdir, tracker)
        raise


def _check_storage(settings: SearchSettings) -> None:
    """On a cluster of several machines, trial results and checkpoints need a path every node
    sees: Ray checks the storage path from the worker on every checkpoint upload, so a trial on
    another machine would fail after its first epoch."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not settings.storage:
        raise ConfigError(
            f"this Ray cluster has {len(nodes)} nodes but trial results would go to the search "
            f"folder in {Path(settings.out).resolve()} on this machine; pass --storage with a "
            "path every node reaches (NFS) or a bucket URI (s3://..., gs://...)")


def _tuner(sdir: SearchDir, settings: SearchSettings, plan: ResourcePlan, data: DataSplits,
           tracker: Any, max_epochs: int | None, resumed: bool, callbacks: list[Any],
           stop: Any = None) -> Any:
    """The search's Tuner (:func:`~extune.search.engine.tuner.trial_tuner`): its searcher,
    scheduler, budgets and callbacks; the data decoded once (in run_search)."""
    from extune.search.engine.budget import with_budget
    from extune.search.engine.tuner import trial_tuner

    base = sdir.base_config()
    base_dict = base.to_dict()
    epochs = max_epochs or base.optim.epochs
    return trial_tuner(
        sdir.experiment_path, base=base_dict, data=data, plan=plan,
        cpus_per_trial=settings.cpus_per_trial,
        objectives=[o.metric for o in settings.objectives],
        callbacks=_callbacks(sdir, settings, tracker, base_dict, callbacks),
        tune_config={"search_alg": _searcher(sdir, settings, base_dict),
                     "scheduler": _scheduler(settings, epochs), "num_samples": settings.trials,
                     "time_budget_s": settings.time_budget_s},
        stop=with_budget(sdir, settings, stop), max_failures=settings.max_failures,
        full_epochs=settings.full_epochs(epochs), restore=resumed,
        restore_then=sdir.what_remains())


def _searcher(sdir: SearchDir, settings: SearchSettings, base: dict[str, Any]) -> Any:
    import optuna

    from extune.search.engine.optuna_search import PruneAwareOptunaSearch
    from extune.spaces import base_point
    from extune.train.config import Config

    objectives = settings.objectives
    multi = len(objectives) > 1
    space = held_space(sdir.space(), settings)
    # the base point is the first trial of a new study only: Ray's OptunaSearch enqueues its
    # points_to_evaluate whenever it is built, and a resumed search ran the base config again
    # once per resume (a trial of its budget each time)
    first = base_point(space, Config.from_dict(base)) \
        if settings.start_at_base and not sdir.study_has_trials() else None
    return PruneAwareOptunaSearch(
        space, base=base, points_to_evaluate=[first] if first else None,
        metric=[o.metric for o in objectives] if multi else objectives[0].metric,
        mode=[o.mode for o in objectives] if multi else objectives[0].mode,
        sampler=make_sampler(settings.sampler, settings.seed, settings.trials, len(objectives),
                             settings.startup_trials),
        storage=optuna.storages.RDBStorage(sdir.meta["optuna_storage"]), study_name=sdir.name)


def _scheduler(settings: SearchSettings, max_epochs: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.resolved_scheduler == "none":
        return FIFOScheduler()
    first = settings.objectives[0]  # the scheduler ranks trials by the first objective
    return ASHAScheduler(time_attr="epoch", metric=first.metric, mode=first.mode,
                         max_t=max(1, max_epochs), grace_period=min(settings.grace_period,
                                                                    max(1, max_epochs)),
                         reduction_factor=settings.reduction_factor, stop_last_trials=False)


def _callbacks(sdir: SearchDir, settings: SearchSettings, tracker: Any, base: dict[str, Any],
               extra: list[Any]) -> list[Any]:
    """The disk guard, the trials' MLflow runs, the parent run's progress, the live console,
    then ``extra``."""
    from extune.search.engine.disk import DiskGuard, watched_folders
    from extune.search.reporting.console import LiveConsole
    from extune.search.reporting.progress import ParentProgress
    from extune.tracking.callback import MlflowCallback

    console = LiveConsole(title=sdir.name, objectives=settings.objectives, base=base,
                          total=settings.trials, live=settings.live,
                          study=(sdir.meta["optuna_storage"], sdir.name))
    guard = DiskGuard(watched_folders(sdir.path, sdir.experiment_path))
    tracking = MlflowCallback(
        tracker, base, tags=_trial_tags(settings), objectives=tuple(settings.objectives),
        journal_dir=journal_dir(sdir), log_checkpoint=settings.log_checkpoints,
        constant=(*settings.resolved_fixed, *sdir.meta.get("space_constants", {})))
    progress = ParentProgress(parent_facts(sdir, tracker.parent_run(), tracker.experiment_id),
                              base, tracker, journal_dir(sdir))
    return [guard, tracking, progress, console, *extra]


def _trial_tags(settings: SearchSettings) -> dict[str, str]:
    """Tags every trial run shares with the search's (a study's id, so that the study's
    filters find its trials), less MLflow's own (a trial's parent is the search run)."""
    return {k: v for k, v in (settings.run_tags or {}).items() if not k.startswith("mlflow.")}


def _finish(sdir: SearchDir, tracker: Any, *, interrupted: bool, start: float,
            trials: list[Any], stopped_by: str = "time budget") -> SearchResult:
    from extune.tracking.trials import trial_error

    study = sdir.study()
    if not interrupted:
        settle_stopped(sdir, study, trials, tracker, stopped_by)
        close_orphans(sdir, tracker, trials)
    objectives = sdir.objectives
    records = records_from_study(study, objectives)
    errors = {t.trial_id: trial_error(t) for t in trials if t.status == "ERROR"}
    for r in records:
        r.error = errors.get(r.trial_id or "", r.error)
    best = None
    if any(r.state == "complete" for r in records):
        best = select_trial(records, objectives)
    files = write_outputs(sdir, records, objectives, best)
    plots = write_plots(sdir, study, objectives)
    writer = search_writer(sdir, tracker)
    facts = parent_facts(sdir, tracker.parent_run(), tracker.experiment_id)
    log_results(writer, files, plots, best, objectives, facts=facts, records=records,
                interrupted=interrupted)
    writer.submit(Op("end", status="KILLED" if interrupted else "FINISHED"))
    pending = close_search_writer(sdir, timeout=FLUSH_TIMEOUT_S)
    sdir.set_status("interrupted" if interrupted else "finished",
                    best_trial=best.name if best else None, tracking_pending=pending)
    return SearchResult(sdir.name, sdir.path, sdir.search_id, objectives, records, best,
                        pareto_front(records, objectives), files.get("best_config"),
                        sdir.meta["tracking_uri"], sdir.meta.get("parent_run_id"), interrupted,
                        time.time() - start, files, sdir.meta.get("mlflow_view"), pending,
                        dict(plots.left_out))


