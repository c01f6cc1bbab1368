"""``run_search``: Ray Tune + Optuna + ASHA over a space, MLflow for every trial, best config out.

The flow (DESIGN.md, Data flow):

1. validate the settings, the base config and the space (sampled against Config), reach the
   tracking store (writable), check that ``--out`` is writable and load the data set -- all
   before Ray starts, so bad input fails in one line;
2. start or join Ray and check the resources a trial asks for against the cluster;
3. only then create the search folder (:mod:`extune.search.store`) and the MLflow parent run
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

from extune.errors import ConfigError, DiskFullError, ExtuneError, one_line
from extune.files import atomic_write_text, check_free_space, check_writable, is_disk_full
from extune.search.resources import ResourcePlan, cluster_plan
from extune.search.results import (
    TrialRecord,
    pareto_front,
    plot_summary,
    records_from_study,
    select_trial,
    summary_csv,
    summary_markdown,
)
from extune.search.services import (
    check_tracking_uri,
    connect_ray,
    probe_ray_address,
    quiet_ray_env,
)
from extune.search.settings import Objective, SearchSettings, make_sampler
from extune.search.store import SearchDir, refuse_taken_name
from extune.search.writer import bounded_http_client
from extune.spaces import get_space, validate_space
from extune.spaces.validate import SpaceCheck
from extune.train.config import Config

if TYPE_CHECKING:
    from extune.train.data import DataSplits

__all__ = ["SearchResult", "run_search", "search_tracker", "TRACKING_DIR"]

log = logging.getLogger(__name__)

TRACKING_DIR = "tracking"
"""Folder of the search folder that holds the MLflow writes not yet sent (journal, files)."""
FLUSH_TIMEOUT_S = 60.0
"""How long a search that ends waits for an unreachable tracking store before it leaves the
unsent writes in its journal (``extune sync`` sends them)."""


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
    from extune.search import disk

    start = time.time()
    quiet_ray_env()
    bounded_http_client()
    disk.reset()
    if resume is not None:
        sdir: SearchDir | None = SearchDir.load(resume)
        sdir.refuse_failed("start a new one")
        settings = sdir.settings
        settings.address = address or settings.address
        _check_services(settings, sdir.meta["tracking_uri"])
        if sdir.meta["status"] == "finished":
            return _finish(sdir, search_tracker(sdir), interrupted=False, start=start, trials=[])
        base, space, max_epochs, check = sdir.base_config(), None, None, None
    else:
        settings = settings or SearchSettings()
        base = settings.base_config()
        space = get_space(settings.space)
        check = validate_space(space, base, name=settings.space, seed=settings.seed)
        base, check = _apply_unsearched_fixes(settings, base, space, check)
        max_epochs = check.max_epochs
        _check_services(settings, settings.resolved_tracking_uri())
        check_writable(settings.out, "search folders in --out")
        check_free_space(settings.out, "search folders in --out")
        check_free_space(tempfile.gettempdir(), "the temporary folder trials train in")
        refuse_taken_name(settings)
        sdir = None
    from extune.train.data import load_data  # torch: imported on use

    data = load_data(base.data)  # bad data fails here, before Ray or any folder
    return _run(sdir, settings, base, space, data, max_epochs, check, start=start,
                callbacks=callbacks or [], stop=stop)


def _apply_unsearched_fixes(settings: SearchSettings, base: Config, space: Any,
                            check: SpaceCheck) -> tuple[Config, SpaceCheck]:
    """``--fix KEY=VALUE`` where the space does not search KEY: applied to the base config, as
    ``--set`` would (the search trains with it and its parent run records it); said in one
    line, since a fixed value is usually meant for a searched key."""
    unsearched = {k: v for k, v in settings.resolved_fixed.items() if k not in check.keys}
    if not unsearched or all(base.flatten()[k] == v for k, v in unsearched.items()):
        return base, check
    told = [f"{k}={v}" for k, v in unsearched.items() if k in settings.fixed]
    if told:
        Console().print(f"--fix {', '.join(told)}: space '{settings.space}' does not search "
                        f"{'it' if len(told) == 1 else 'them'}; applied to the base config, "
                        "as --set would", highlight=False, markup=False)
    base = base.with_overrides(unsearched)
    return base, validate_space(space, base, name=settings.space, seed=settings.seed)


def _check_services(settings: SearchSettings, tracking_uri: str) -> None:
    """The Ray address answers and the tracking store is reachable and writable."""
    probe_ray_address(settings.address)
    check_tracking_uri(tracking_uri)


def search_tracker(sdir: SearchDir) -> Any:
    """The MLflow tracker of a search, its parent run created (or found again) and described."""
    from extune.search.tracking import VIEW_TAG, MlflowTracker

    tracker = MlflowTracker(sdir.meta["tracking_uri"], sdir.settings.experiment,
                            sdir.search_id, sdir.name, tags=sdir.settings.run_tags)
    tracker.check()
    created = _parent_params(sdir)
    run_id = tracker.parent_run(params=created)
    if sdir.meta.get("parent_run_id") != run_id:
        view = _share_view(tracker, sdir, run_id)
        sdir.set_status(sdir.meta["status"], parent_run_id=run_id, mlflow_view=view)
        tracker.set_tags(run_id, {**_parent_tags(sdir), VIEW_TAG: view})
        for name in ("base_config.yaml", sdir.meta.get("space_file"), "search.json"):
            if name and (sdir.path / name).is_file():
                tracker.log_artifact(run_id, sdir.path / name)
    return tracker


def _parent_params(sdir: SearchDir) -> dict[str, Any]:
    s = sdir.settings
    params: dict[str, Any] = {
        "space": sdir.meta["space_name"], "objective": ",".join(s.objective),
        "metrics": ",".join(o.metric for o in s.objectives), "sampler": s.sampler,
        "seed": s.seed, "scheduler": s.resolved_scheduler, "trials": s.trials,
        "max_concurrent": s.max_concurrent or "auto", "cpus_per_trial": s.cpus_per_trial,
        "gpus_per_trial": "auto" if s.gpus_per_trial is None else s.gpus_per_trial,
        "time_budget_s": s.time_budget_s, "epoch_budget": s.epoch_budget,
        "startup_trials": s.startup_trials or "auto",
        "max_failures": s.max_failures, "address": s.address or "local",
        "full_eval": s.full_eval,
        "storage": sdir.experiment_path, "search_dir": str(sdir.path),
        "fixed": ",".join(f"{k}={v}" for k, v in s.resolved_fixed.items()) or "none",
        "start_at_base": s.start_at_base,
    }
    if s.resolved_scheduler == "asha":
        params.update(asha_reduction_factor=s.reduction_factor, asha_grace_period=s.grace_period)
    return {**params, **_constant_params(sdir)}


def _share_view(tracker: Any, sdir: SearchDir, parent: str) -> str:
    """The search's runs table as an MLflow shared view; returns its UI page."""
    from extune.search.tracking import runs_table_view

    view = runs_table_view(parent, tuple(sdir.objectives), sorted(_searched_keys(sdir)))
    return tracker.share_view(f"extune-{sdir.search_id[:12]}", view)


def _searched_keys(sdir: SearchDir) -> set[str]:
    """The keys the space varies, less those ``--fix`` (or the quick base) holds."""
    return set(sdir.meta.get("searched_keys", [])) - set(sdir.settings.resolved_fixed)


def _constant_params(sdir: SearchDir) -> dict[str, Any]:
    """The base config's keys that no trial changes (``--fix`` values included): logged once,
    on the parent run; a trial run holds only what the space searched."""
    searched = _searched_keys(sdir)
    config = sdir.base_config().with_overrides(
        {**sdir.meta.get("space_constants", {}), **sdir.settings.resolved_fixed}).flatten()
    return {k: v for k, v in config.items() if k not in searched}


def _parent_tags(sdir: SearchDir) -> dict[str, str]:
    """What the parent run says about itself: the Optuna study and a description (MLflow shows
    ``mlflow.note.content`` on the run page)."""
    s = sdir.settings
    storage = sdir.meta["optuna_storage"]
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in sdir.objectives)
    columns = ", ".join(f"objective/{o.name}" for o in sdir.objectives)
    note = (
        f"**extune search `{sdir.name}`**: space `{sdir.meta['space_name']}`, {s.trials} trials, "
        f"objective {objectives}, sampler {s.sampler} (seed {s.seed}), "
        f"{s.scheduler_text()}.\n\n"
        f"Each trial is a child run (expand this row). Its state is the tag `extune.state` "
        f"(complete, pruned, failed, interrupted) and the end of its name; filter with "
        f"`tags.extune.state = 'complete'`, add the columns {columns} and the searched params "
        f"to compare. The constant settings are this run's params.\n\n"
        f"Plots (importances, parallel coordinates, contours, history or Pareto front): "
        f"artifacts `plots/` (`plots/plots.html` is interactive).\n\n"
        f"Optuna study `{sdir.name}` in `{storage}`: `optuna-dashboard {storage}`.")
    return {"extune.optuna_storage": storage, "extune.optuna_study": sdir.name,
            "extune.objectives": ",".join(o.metric for o in sdir.objectives),
            "mlflow.note.content": note}


def _run(sdir: SearchDir | None, settings: SearchSettings, base: Config, space: Any,
         data: DataSplits, max_epochs: int | None, check: SpaceCheck | None, *, start: float,
         callbacks: list[Any], stop: Any = None) -> SearchResult:
    """Start or join Ray, plan the resources, then (only then) create the folder of a new
    search (``sdir=None``) and run the trials."""
    import ray

    started = connect_ray(settings.address)
    try:
        plan = cluster_plan(cpus_per_trial=settings.cpus_per_trial,
                            gpus_per_trial=settings.gpus_per_trial,
                            max_concurrent=settings.max_concurrent, trials=settings.trials)
        _check_storage(settings)
        resumed = sdir is not None
        if sdir is None:
            constants = check.constants() if check is not None else {}
            searched = check.keys - set(constants) if check is not None else ()
            sdir = SearchDir.create(settings, base, space, searched=searched,
                                    constants=constants)
        tracker = _prepared(sdir, resumed)
        return _fit(sdir, settings, tracker, plan, data, max_epochs, resumed=resumed,
                    start=start, callbacks=callbacks, stop=stop)
    finally:
        if started:
            ray.shutdown()


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
    interrupted = True
    try:
        sdir.set_status("running", resources=plan.text())
        Console().print(plan.text(), highlight=False, markup=False)
        tuner = _tuner(sdir, settings, plan, data, tracker, max_epochs, resumed, callbacks,
                       stop)
        fit_start = time.time()
        tuner.fit()
        _raise_if_disk_full(sdir, tracker, None)
        trials = _ray_trials(sdir)
        spent = settings.epoch_budget is not None and _epoch_budget(sdir, settings,
                                                                   trials).stop_all()
        stopped = spent or (stop is not None and bool(stop.stop_all()))
        interrupted = not stopped and _was_interrupted(trials, settings, time.time() - fit_start)
        reason = "epoch budget" if spent else "stopper" if stopped else "time budget"
        return _finish(sdir, tracker, interrupted=interrupted, start=start, trials=trials,
                       stopped_by=reason)
    except DiskFullError:
        raise
    except BaseException as e:
        if interrupted and is_disk_full(e):
            _raise_if_disk_full(sdir, tracker, e)
        if interrupted:
            _mark_interrupted(sdir, tracker)
        raise


def _mark_interrupted(sdir: SearchDir, tracker: Any) -> None:
    """A stopped search: ``interrupted`` in ``search.json`` (where the disk allows), its
    MLflow runs still running ended KILLED."""
    try:
        sdir.set_status("interrupted")
    except OSError:  # a full disk: resume reads "running" the same way
        pass
    writer = _writer(sdir, tracker)
    for trial_id in _running_trial_runs(sdir, tracker):
        writer.submit({"op": "end", "trial": trial_id, "status": "KILLED"})
    writer.submit({"op": "end", "trial": None, "status": "KILLED"})
    _close_writer(sdir, timeout=10)


def _raise_if_disk_full(sdir: SearchDir, tracker: Any, error: BaseException | None) -> None:
    """Stop a search that a full disk stopped (the guard, or ``error``): resumable, said in
    one line.

    Raises:
        DiskFullError: when a disk is full.
    """
    from extune.files import free_bytes
    from extune.search.disk import full_disk

    found = full_disk()
    if found is None and error is None:
        return
    folder, free = found if found is not None else (str(sdir.path), free_bytes(sdir.path))
    _mark_interrupted(sdir, tracker)
    left = f"{free / 2**20:.1f} MiB free" if free is not None else "full"
    raise DiskFullError(f"the disk of {folder} is full ({left}): the search stopped, its "
                        f"trials kept; free some space, then: extune search --resume {sdir.path}"
                        ) from None


def _running_trial_runs(sdir: SearchDir, tracker: Any) -> list[str]:
    """Trial ids of the search's MLflow runs still RUNNING (none when the store is down)."""
    try:
        runs = tracker.client.search_runs(
            [tracker.experiment_id], max_results=5000,
            filter_string=f"tags.`extune.search_id` = '{sdir.search_id}' and "
                          "tags.`extune.role` = 'trial' and attributes.status = 'RUNNING'")
    except Exception:  # the store is down: the journal keeps the parent's end
        return []
    return [r.data.tags["extune.trial_id"] for r in runs if r.data.tags.get("extune.trial_id")]


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
    from ray import tune

    from extune.search.trainable import train_trial

    base = sdir.base_config()
    base_dict = base.to_dict()
    epochs = max_epochs or base.optim.epochs
    # data: decoded once (in run_search), shared through Ray's object store
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base_dict, data=data,
                             cpus=settings.cpus_per_trial,
                             objectives=tuple(o.metric for o in settings.objectives),
                             storage=sdir.experiment_path,
                             full_epochs=settings.full_epochs(epochs)),
        {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})
    if resumed and tune.Tuner.can_restore(sdir.experiment_path):
        from extune.search.disk import repair_error_files

        repair_error_files(sdir.experiment_path)  # a full disk may have cut some short
        return tune.Tuner.restore(sdir.experiment_path, trainable=trainable,
                                  resume_unfinished=True, resume_errored=False)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(sdir, settings, base_dict),
            scheduler=_scheduler(settings, epochs),
            num_samples=settings.trials, max_concurrent_trials=plan.concurrency,
            time_budget_s=settings.time_budget_s, reuse_actors=True),
        run_config=_run_config(sdir, settings, tracker, base_dict, callbacks, stop))


def _searcher(sdir: SearchDir, settings: SearchSettings, base: dict[str, Any]) -> Any:
    import optuna

    from extune.search.optuna_search import PruneAwareOptunaSearch
    from extune.spaces import base_point
    from extune.train.config import Config

    objectives = settings.objectives
    multi = len(objectives) > 1
    space = sdir.space()
    first = base_point(space, Config.from_dict(base).with_overrides(settings.resolved_fixed)) \
        if settings.start_at_base else None
    return PruneAwareOptunaSearch(
        space, base=base, points_to_evaluate=[first] if first else None,
        metric=[o.metric for o in objectives] if multi else objectives[0].metric,
        mode=[o.mode for o in objectives] if multi else objectives[0].mode,
        sampler=make_sampler(settings.sampler, settings.seed, settings.trials, len(objectives),
                             settings.resolved_fixed, settings.startup_trials),
        storage=optuna.storages.RDBStorage(sdir.meta["optuna_storage"]),
        study_name=sdir.name)


def _scheduler(settings: SearchSettings, max_epochs: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.resolved_scheduler == "none":
        return FIFOScheduler()
    first = settings.objectives[0]  # the scheduler ranks trials by the first objective
    return ASHAScheduler(time_attr="epoch", metric=first.metric, mode=first.mode,
                         max_t=max(1, max_epochs), grace_period=min(settings.grace_period,
                                                                    max(1, max_epochs)),
                         reduction_factor=settings.reduction_factor, stop_last_trials=False)


def _run_config(sdir: SearchDir, settings: SearchSettings, tracker: Any,
                base: dict[str, Any], callbacks: list[Any], stop: Any = None) -> Any:
    from ray import tune

    from extune.search.console import LiveConsole
    from extune.search.disk import DiskGuard, watched_folders
    from extune.search.tracking import MlflowCallback

    storage, _, name = sdir.experiment_path.rpartition("/")
    stop = _with_budget(sdir, settings, stop)
    console = LiveConsole(title=sdir.name, objectives=settings.objectives, base=base,
                          total=settings.trials, live=settings.live,
                          study=(sdir.meta["optuna_storage"], sdir.name))
    guard = DiskGuard(watched_folders(sdir.path, sdir.experiment_path))
    return tune.RunConfig(
        name=name, storage_path=storage, verbose=0, stop=stop,
        callbacks=[guard, MlflowCallback(tracker, base, objectives=tuple(settings.objectives),
                                  journal_dir=_journal(sdir),
                                  constant=(*settings.resolved_fixed,
                                            *sdir.meta.get("space_constants", {})),
                                  log_checkpoint=settings.log_checkpoints),
                   console, *callbacks],
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))


def _with_budget(sdir: SearchDir, settings: SearchSettings, stop: Any) -> Any:
    """``stop`` and, with ``epoch_budget``, the search's :class:`EpochBudget`."""
    if settings.epoch_budget is None:
        return stop
    from ray.tune.stopper import CombinedStopper

    budget = _epoch_budget(sdir, settings)
    return budget if stop is None else CombinedStopper(stop, budget)


def _epoch_budget(sdir: SearchDir, settings: SearchSettings, trials: list[Any] = ()) -> Any:
    """The search's :class:`EpochBudget`, told the last results of ``trials`` (Ray's saved
    trials: after ``fit``, what the stopping instance saw)."""
    from extune.search.budget import EpochBudget

    budget = EpochBudget(settings.epoch_budget, sdir.meta["optuna_storage"], sdir.name)
    for trial in trials:
        budget(trial.trial_id, trial.last_result or {})
    return budget


def _ray_trials(sdir: SearchDir) -> list[Any]:
    from ray.tune import ExperimentAnalysis

    try:
        return list(ExperimentAnalysis(sdir.experiment_path).trials)
    except Exception:  # no experiment state (nothing ran)
        return []


def _was_interrupted(trials: list[Any], settings: SearchSettings, elapsed: float) -> bool:
    """Ctrl-C makes ``Tuner.fit`` return normally; the saved trial states tell."""
    if any(t.status in ("RUNNING", "PENDING", "PAUSED") for t in trials):
        return True
    budget_hit = settings.time_budget_s is not None and elapsed >= settings.time_budget_s - 1
    return len(trials) < settings.trials and not budget_hit


def _settle_stopped(sdir: SearchDir, study: Any, trials: list[Any], tracker: Any,
                    reason: str) -> None:
    """Trials the time budget (or a stopper) stopped are never told to the searcher: PRUNED
    (or FAIL)."""
    from optuna.trial import Trial, TrialState

    from extune.search.trials import reported_metrics

    by_id = {t.trial_id: t for t in trials}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = t.user_attrs.get("extune.ray_trial_id")
        ray_trial = by_id.get(trial_id)
        metrics = reported_metrics(ray_trial.last_result) if ray_trial is not None else {}
        failed = (ray_trial is not None and ray_trial.status == "ERROR") or not metrics
        live = Trial(study, t._trial_id)
        if metrics:
            live.set_user_attr("extune.metrics", metrics)
        if not metrics:
            live.set_user_attr("extune.error", f"stopped by the {reason} before an epoch ended")
        study.tell(t.number, state=TrialState.FAIL if failed else TrialState.PRUNED)
        if trial_id and ray_trial is not None and ray_trial.status != "PENDING":
            # "if_run": a trial the stop caught while its actor was being set up has no run
            state = "failed" if failed else "pruned"
            _writer(sdir, tracker).submit({"op": "tags", "trial": trial_id, "if_run": True,
                                           "tags": {"extune.pruned": str(not failed).lower(),
                                                    "extune.state": state,
                                                    "extune.stopped": reason}})


def _finish(sdir: SearchDir, tracker: Any, *, interrupted: bool, start: float,
            trials: list[Any], stopped_by: str = "time budget") -> SearchResult:
    from extune.search.trials import trial_error

    study = sdir.study()
    if not interrupted:
        _settle_stopped(sdir, study, trials, tracker, stopped_by)
        _close_orphans(sdir, tracker, trials)
    objectives = sdir.objectives
    records = records_from_study(study, objectives)
    errors = {t.trial_id: trial_error(t) for t in trials if t.status == "ERROR"}
    for r in records:
        r.error = errors.get(r.trial_id or "", r.error)
    best = None
    if any(r.state == "complete" for r in records):
        best = select_trial(records, objectives)
    files = _write_outputs(sdir, records, objectives, best)
    plots = _write_plots(sdir, study, objectives)
    writer = _writer(sdir, tracker)
    _log_parent(writer, files, plots, best, objectives)
    writer.submit({"op": "end", "trial": None, "status": "KILLED" if interrupted else "FINISHED"})
    pending = _close_writer(sdir, timeout=FLUSH_TIMEOUT_S)
    sdir.set_status("interrupted" if interrupted else "finished",
                    best_trial=best.name if best else None, tracking_pending=pending)
    return SearchResult(sdir.name, sdir.path, sdir.search_id, objectives, records, best,
                        pareto_front(records, objectives), files.get("best_config"),
                        sdir.meta["tracking_uri"], sdir.meta.get("parent_run_id"), interrupted,
                        time.time() - start, files, sdir.meta.get("mlflow_view"), pending)


def _write_outputs(sdir: SearchDir, records: list[TrialRecord], objectives: list[Objective],
                   best: TrialRecord | None) -> dict[str, Path]:
    files = {"summary_csv": sdir.path / "summary.csv", "summary_md": sdir.path / "summary.md"}
    atomic_write_text(files["summary_csv"], summary_csv(records, objectives))
    atomic_write_text(files["summary_md"], summary_markdown(records, objectives, title=sdir.name))
    if any(r.state in ("complete", "pruned") for r in records):
        plot = "pareto_front.png" if len(objectives) > 1 else "optimization_history.png"
        files["plot"] = plot_summary(records, objectives, sdir.path / plot)
    if best is not None:
        config = sdir.base_config().with_overrides(best.params)
        files["best_config"] = sdir.path / "best_config.yaml"
        atomic_write_text(files["best_config"], _config_header(sdir, best) + config.to_yaml())
    return files


def _write_plots(sdir: SearchDir, study: Any, objectives: list[Objective]) -> dict[str, Path]:
    """Optuna's plots of the search (:mod:`extune.search.plots`); a plotting failure costs the
    plots, never the search's results."""
    from extune.search.plots import PLOTS_DIR, search_plots

    try:
        return search_plots(study, objectives, sdir.path / PLOTS_DIR, title=sdir.name)
    except Exception as e:  # plotting libraries raise many types on odd studies
        log.warning("could not draw the search's plots: %s", one_line(e, 300))
        return {}


def _config_header(sdir: SearchDir, best: TrialRecord) -> str:
    values = ", ".join(f"{o.metric}={best.value(o):.4g}" for o in sdir.objectives
                       if best.value(o) is not None)
    return (f"# best config of search {sdir.name} ({best.name}, Tune trial {best.trial_id}): "
            f"{values}\n# train it: extune train --config best_config.yaml\n")


def _log_parent(writer: Any, files: dict[str, Path], plots: dict[str, Path],
                best: TrialRecord | None, objectives: list[Objective]) -> None:
    """Queue the parent run's results: files, plots, ``best/<metric>`` and the best trial."""
    from extune.search.plots import PLOTS_DIR

    for path in files.values():
        writer.submit({"op": "artifact", "trial": None, "path": str(path)})
    for path in plots.values():
        writer.submit({"op": "artifact", "trial": None, "path": str(path), "dir": PLOTS_DIR})
    if best is None:
        return
    values = {f"best/{o.metric}": best.value(o) for o in objectives if best.value(o) is not None}
    writer.submit({"op": "metrics", "trial": None, "metrics": values, "step": 0,
                   "once_per_step": False})
    writer.submit({"op": "tags", "trial": None, "tags": {
        "extune.best_trial": best.name, "extune.best_trial_id": best.trial_id}})
    if best.trial_id:
        writer.submit({"op": "best", "trial": None, "best_trial": best.trial_id})


def _journal(sdir: SearchDir) -> Path:
    return sdir.path / TRACKING_DIR


def _writer(sdir: SearchDir, tracker: Any) -> Any:
    from extune.search.writer import writer_for

    return writer_for(tracker, _journal(sdir))


def _close_writer(sdir: SearchDir, timeout: float) -> int:
    from extune.search.writer import close_writer

    return close_writer(_journal(sdir), timeout)


def _close_orphans(sdir: SearchDir, tracker: Any, trials: list[Any]) -> None:
    """End the search's MLflow runs that are still RUNNING but whose trial Ray no longer has
    (it started after Ray's last saved state, and the driver died): FAILED, saying why. The
    Optuna study fails such trials on resume (``PruneAwareOptunaSearch.restore``)."""
    known = {t.trial_id for t in trials}
    try:
        runs = tracker.client.search_runs(
            [tracker.experiment_id], max_results=5000,
            filter_string=f"tags.`extune.search_id` = '{sdir.search_id}' and "
                          "tags.`extune.role` = 'trial' and attributes.status = 'RUNNING'")
    except Exception as e:  # the store is down: the next --resume or sync looks again
        log.warning("could not look for unfinished MLflow runs: %s", " ".join(str(e).split()))
        return
    writer = _writer(sdir, tracker)
    for run in runs:
        trial_id = run.data.tags.get("extune.trial_id")
        if trial_id and trial_id not in known:
            writer.submit({"op": "tags", "trial": trial_id, "tags": {
                "extune.state": "failed", "extune.error": "lost: the search's driver stopped "
                "before Ray saved this trial; --resume sampled a new trial instead"}})
            writer.submit({"op": "end", "trial": trial_id, "status": "FAILED",
                           "name": f"{run.info.run_name} · lost"})
