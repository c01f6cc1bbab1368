"""``run_search``: Ray Tune + Optuna + ASHA over a space, MLflow for every trial, best config out.

The flow (DESIGN.md, Data flow):

1. validate the settings, the base config and the space (sampled against Config) and reach the
   tracking store -- all before Ray starts, so bad input fails in one line;
2. create the search folder (:mod:`extune.search.store`) and the MLflow parent run;
3. start or join Ray, put the decoded data set in the object store once;
4. ``Tuner(train_trial, PruneAwareOptunaSearch(space), ASHA)`` and fit (or ``Tuner.restore``);
5. settle trials the time budget stopped, rank the trials, write the summary, the plots and the
   best config, and log them on the parent run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from extune.errors import ConfigError, ExtuneError
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
from extune.search.store import SearchDir
from extune.spaces import get_space, validate_space

__all__ = ["SearchResult", "run_search"]


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

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.records)


def run_search(settings: SearchSettings | None = None, *, resume: str | Path | None = None,
               address: str | None = None, callbacks: list[Any] | None = None) -> SearchResult:
    """Run a search (or finish an interrupted one) and export its best config.

    Args:
        settings: what to search (``None``: the defaults, a quick ExCon search).
        resume: a search folder to continue; its saved settings are used.
        address: with ``resume``, a Ray cluster to join instead of the saved address.
        callbacks: extra Ray Tune callbacks (picklable: Ray saves them with the search and
            uses the saved ones on resume).

    Raises:
        ExtuneError: bad settings, config or space; unreachable Ray cluster or tracking server;
            missing data.
    """
    start = time.time()
    quiet_ray_env()
    if resume is not None:
        sdir = SearchDir.load(resume)
        if sdir.meta["status"] == "failed":
            raise ConfigError(f"{sdir.path} is a search that failed before any trial ran "
                              f"({sdir.meta.get('error', 'unknown error')}); start a new one")
        settings = sdir.settings
        settings.address = address or settings.address
        probe_ray_address(settings.address)
        check_tracking_uri(sdir.meta["tracking_uri"])
        max_epochs = None
    else:
        settings = settings or SearchSettings()
        base = settings.base_config()
        space = get_space(settings.space)
        check = validate_space(space, base, name=settings.space, seed=settings.seed)
        probe_ray_address(settings.address)
        check_tracking_uri(settings.resolved_tracking_uri())
        sdir = SearchDir.create(settings, base, space)
        max_epochs = check.max_epochs
    tracker = _tracker(sdir)
    if sdir.meta["status"] == "finished":
        return _finish(sdir, tracker, interrupted=False, start=start, trials=[])
    return _run(sdir, settings, tracker, max_epochs, resumed=resume is not None, start=start,
                callbacks=callbacks or [])


def _tracker(sdir: SearchDir) -> Any:
    from extune.search.tracking import MlflowTracker

    tracker = MlflowTracker(sdir.meta["tracking_uri"], sdir.settings.experiment,
                            sdir.search_id, sdir.name, tags=sdir.settings.run_tags)
    tracker.check()
    created = _parent_params(sdir)
    run_id = tracker.parent_run(params=created)
    if sdir.meta.get("parent_run_id") != run_id:
        sdir.set_status(sdir.meta["status"], parent_run_id=run_id)
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
        "time_budget_s": s.time_budget_s,
        "max_failures": s.max_failures, "address": s.address or "local",
        "full_eval": s.full_eval,
        "storage": sdir.experiment_path, "search_dir": str(sdir.path),
        "fixed": ",".join(f"{k}={v}" for k, v in s.resolved_fixed.items()) or "none",
        "start_at_base": s.start_at_base,
    }
    if s.resolved_scheduler == "asha":
        params.update(asha_reduction_factor=s.reduction_factor, asha_grace_period=s.grace_period)
    return params


def _run(sdir: SearchDir, settings: SearchSettings, tracker: Any, max_epochs: int | None, *,
         resumed: bool, start: float, callbacks: list[Any]) -> SearchResult:
    import ray

    started = connect_ray(settings.address)
    interrupted = True
    try:
        try:
            plan = cluster_plan(cpus_per_trial=settings.cpus_per_trial,
                                gpus_per_trial=settings.gpus_per_trial,
                                max_concurrent=settings.max_concurrent, trials=settings.trials)
            _check_storage(settings, sdir)
        except ExtuneError as e:  # nothing ran: the folder says why, --resume refuses it
            interrupted = False
            sdir.set_status("failed", error=str(e))
            tracker.end(tracker.parent_run(), "FAILED")
            raise
        sdir.set_status("running", resources=plan.text())
        Console().print(plan.text(), highlight=False, markup=False)
        tuner = _tuner(sdir, settings, plan, tracker, max_epochs, resumed, callbacks)
        fit_start = time.time()
        tuner.fit()
        trials = _ray_trials(sdir)
        interrupted = _was_interrupted(trials, settings, time.time() - fit_start)
        return _finish(sdir, tracker, interrupted=interrupted, start=start, trials=trials)
    except BaseException:
        if interrupted:
            sdir.set_status("interrupted")
            tracker.end(tracker.parent_run(), "KILLED")
        raise
    finally:
        if started:
            ray.shutdown()


def _check_storage(settings: SearchSettings, sdir: SearchDir) -> None:
    """On a cluster of several machines, trial results and checkpoints need a path every node
    sees: Ray checks the storage path from the worker on every checkpoint upload, so a trial on
    another machine would fail after its first epoch."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not settings.storage:
        raise ConfigError(
            f"this Ray cluster has {len(nodes)} nodes but trial results would go to "
            f"{sdir.experiment_path} on this machine; pass --storage with a path every node "
            "reaches (NFS) or a bucket URI (s3://..., gs://...)")


def _tuner(sdir: SearchDir, settings: SearchSettings, plan: ResourcePlan, tracker: Any,
           max_epochs: int | None, resumed: bool, callbacks: list[Any]) -> Any:
    from ray import tune

    from extune.search.trainable import train_trial
    from extune.train.data import load_data

    base = sdir.base_config()
    base_dict = base.to_dict()
    epochs = max_epochs or base.optim.epochs
    data = load_data(base.data)  # decoded once, shared through Ray's object store
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base_dict, data=data,
                             cpus=settings.cpus_per_trial,
                             objectives=tuple(o.metric for o in settings.objectives),
                             storage=sdir.experiment_path,
                             full_epochs=settings.full_epochs(epochs)),
        {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})
    if resumed and tune.Tuner.can_restore(sdir.experiment_path):
        return tune.Tuner.restore(sdir.experiment_path, trainable=trainable,
                                  resume_unfinished=True, resume_errored=False)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(sdir, settings, base_dict),
            scheduler=_scheduler(settings, epochs),
            num_samples=settings.trials, max_concurrent_trials=plan.concurrency,
            time_budget_s=settings.time_budget_s, reuse_actors=True),
        run_config=_run_config(sdir, settings, tracker, base_dict, callbacks))


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
                             settings.resolved_fixed),
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
                base: dict[str, Any], callbacks: list[Any]) -> Any:
    from ray import tune

    from extune.search.console import LiveConsole
    from extune.search.tracking import MlflowCallback

    storage, _, name = sdir.experiment_path.rpartition("/")
    console = LiveConsole(title=sdir.name, objectives=settings.objectives, base=base,
                          total=settings.trials, live=settings.live,
                          study=(sdir.meta["optuna_storage"], sdir.name))
    return tune.RunConfig(
        name=name, storage_path=storage, verbose=0,
        callbacks=[MlflowCallback(tracker, base), console, *callbacks],
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))


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


def _settle_stopped(study: Any, trials: list[Any], tracker: Any) -> None:
    """Trials the time budget stopped are never told to the searcher: PRUNED (or FAIL)."""
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
            live.set_user_attr("extune.error", "stopped by the time budget before an epoch ended")
        study.tell(t.number, state=TrialState.FAIL if failed else TrialState.PRUNED)
        run_id = tracker.find_child(trial_id) if trial_id else None
        if run_id is not None:
            tracker.set_tags(run_id, {"extune.pruned": str(not failed).lower(),
                                      "extune.stopped": "time budget"})


def _finish(sdir: SearchDir, tracker: Any, *, interrupted: bool, start: float,
            trials: list[Any]) -> SearchResult:
    from extune.search.trials import trial_error

    study = sdir.study()
    if not interrupted:
        _settle_stopped(study, trials, tracker)
    objectives = sdir.objectives
    records = records_from_study(study, objectives)
    errors = {t.trial_id: trial_error(t) for t in trials if t.status == "ERROR"}
    for r in records:
        r.error = errors.get(r.trial_id or "", r.error)
    best = None
    if any(r.state == "complete" for r in records):
        best = select_trial(records, objectives)
    files = _write_outputs(sdir, records, objectives, best)
    parent = tracker.parent_run()
    _log_parent(tracker, parent, files, best, objectives)
    tracker.end(parent, "KILLED" if interrupted else "FINISHED")
    sdir.set_status("interrupted" if interrupted else "finished",
                    best_trial=best.name if best else None)
    return SearchResult(sdir.name, sdir.path, sdir.search_id, objectives, records, best,
                        pareto_front(records, objectives), files.get("best_config"),
                        sdir.meta["tracking_uri"], parent, interrupted, time.time() - start,
                        files)


def _write_outputs(sdir: SearchDir, records: list[TrialRecord], objectives: list[Objective],
                   best: TrialRecord | None) -> dict[str, Path]:
    files = {"summary_csv": sdir.path / "summary.csv", "summary_md": sdir.path / "summary.md"}
    files["summary_csv"].write_text(summary_csv(records, objectives))
    files["summary_md"].write_text(summary_markdown(records, objectives, title=sdir.name))
    if any(r.state in ("complete", "pruned") for r in records):
        plot = "pareto_front.png" if len(objectives) > 1 else "optimization_history.png"
        files["plot"] = plot_summary(records, objectives, sdir.path / plot)
    if best is not None:
        config = sdir.base_config().with_overrides(best.params)
        files["best_config"] = sdir.path / "best_config.yaml"
        files["best_config"].write_text(_config_header(sdir, best) + config.to_yaml())
    return files


def _config_header(sdir: SearchDir, best: TrialRecord) -> str:
    values = ", ".join(f"{o.metric}={best.value(o):.4g}" for o in sdir.objectives
                       if best.value(o) is not None)
    return (f"# best config of search {sdir.name} ({best.name}, Tune trial {best.trial_id}): "
            f"{values}\n# train it: extune train --config best_config.yaml\n")


def _log_parent(tracker: Any, parent: str, files: dict[str, Path], best: TrialRecord | None,
                objectives: list[Objective]) -> None:
    for path in files.values():
        tracker.log_artifact(parent, path)
    if best is None:
        return
    values = {f"best/{o.metric}": best.value(o) for o in objectives if best.value(o) is not None}
    tracker.log_metrics(parent, values, step=0)
    tags = {"extune.best_trial": best.name, "extune.best_trial_id": best.trial_id}
    child = tracker.find_child(best.trial_id) if best.trial_id else None
    if child:
        tags["extune.best_run_id"] = child
    tracker.set_tags(parent, tags)

