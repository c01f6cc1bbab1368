"""The parent MLflow run of a search: created with the search's constants and description,
given its shared runs-table view, told the search's results, and tidied when a driver stopped
(runs still RUNNING). Where Ray Tune keeps such work in callbacks, the trials' side is in
:mod:`~extune.tracking.callback`; this module is the search's side, called by the engine
when a search starts, ends or stops, and by ``extune sync`` (:func:`search_journals`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from extune.errors import ConfigError, one_line
from extune.evaluate.objectives import Objective
from extune.search.connections import ray_address
from extune.search.folder import SearchDir
from extune.search.reporting.results import TrialRecord
from extune.tracking.client import STATE_TAG
from extune.tracking.journal import (
    TRACKING_DIR,
    Op,
    TrackingWriter,
    close_writer,
    writer_for,
)
from extune.tracking.sync import Job

__all__ = ["search_tracker", "searched_keys", "log_results", "journal_dir", "search_writer",
           "close_search_writer", "close_orphans", "end_killed", "mark_interrupted",
           "search_journals"]

log = logging.getLogger(__name__)



def search_tracker(sdir: SearchDir) -> Any:
    """The MLflow tracker of a search, its parent run created (or found again) and described."""
    from extune.tracking.client import VIEW_TAG, MlflowTracker

    tracker = MlflowTracker(sdir.meta["tracking_uri"], sdir.settings.experiment,
                            sdir.search_id, sdir.name, tags=sdir.settings.run_tags)
    tracker.check()
    created = _parent_params(sdir)
    run_id = tracker.parent_run(params=created)
    if sdir.meta.get("parent_run_id") != run_id:
        view = _share_view(tracker, sdir)
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
        "seconds_budget": s.seconds_budget,
        "startup_trials": s.startup_trials or "auto",
        "max_failures": s.max_failures, "address": ray_address(s.address) or "local",
        "full_eval": s.full_eval,
        "storage": sdir.experiment_path, "search_dir": str(sdir.path),
        "fixed": ",".join(f"{k}={v}" for k, v in s.resolved_fixed.items()) or "none",
        "start_at_base": s.start_at_base,
    }
    if s.resolved_scheduler == "asha":
        params.update(asha_reduction_factor=s.reduction_factor, asha_grace_period=s.grace_period)
    return {**params, **_constant_params(sdir)}


def _share_view(tracker: Any, sdir: SearchDir) -> str:
    """The search's runs table as an MLflow shared view; returns its UI page."""
    from extune.tracking.views import runs_table_view

    view = runs_table_view(sdir.search_id, tuple(sdir.objectives), sorted(searched_keys(sdir)))
    return tracker.share_view(f"extune-{sdir.search_id[:12]}", view)


def searched_keys(sdir: SearchDir) -> set[str]:
    """The keys the space varies, less those ``--fix`` (or the quick base) holds."""
    return set(sdir.meta.get("searched_keys", [])) - set(sdir.settings.resolved_fixed)


def _constant_params(sdir: SearchDir) -> dict[str, Any]:
    """The base config's keys that no trial changes (``--fix`` values included): logged once,
    on the parent run; a trial run holds only what the space searched."""
    searched = searched_keys(sdir)
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
        f"Each trial is a child run; `extune ui --search {sdir.name}` prints the link of "
        f"its runs table (the filter `tags.extune.search_id = '{sdir.search_id}' and "
        f"tags.extune.role = 'trial'`), best first by {columns}. A trial's state is the tag "
        f"`extune.state` (complete, pruned, failed, interrupted) and the end of its name. The "
        f"constant settings are this run's params.\n\n"
        f"Plots (importances, parallel coordinates, contours, history or Pareto front): "
        f"artifacts `plots/` (`plots/plots.html` is interactive).\n\n"
        f"Optuna study `{sdir.name}` in `{storage}`: `optuna-dashboard {storage}`.")
    return {"extune.optuna_storage": storage, "extune.optuna_study": sdir.name,
            "extune.objectives": ",".join(o.metric for o in sdir.objectives),
            "mlflow.note.content": note}


def log_results(writer: Any, files: dict[str, Path], plots: dict[str, Path],
                best: TrialRecord | None, objectives: list[Objective]) -> None:
    """Queue the parent run's results: files, plots, ``best/<metric>`` and the best trial."""
    from extune.search.reporting.plots import PLOTS_DIR

    for path in files.values():
        writer.submit(Op("artifact", path=str(path)))
    for path in plots.values():
        writer.submit(Op("artifact", path=str(path), dir=PLOTS_DIR))
    if best is None:
        return
    values = {f"best/{o.metric}": best.value(o) for o in objectives if best.value(o) is not None}
    writer.submit(Op("metrics", metrics=values, step=0, once_per_step=False))
    writer.submit(Op("tags", tags={"extune.best_trial": best.name,
                                   "extune.best_trial_id": best.trial_id}))
    if best.trial_id:
        writer.submit(Op("best", best_trial=best.trial_id))


def journal_dir(sdir: SearchDir) -> Path:
    """The folder of the search's journal (:mod:`extune.tracking.journal`)."""
    return sdir.path / TRACKING_DIR


def search_writer(sdir: SearchDir, tracker: Any) -> TrackingWriter:
    """The process's journal writer of the search."""
    return writer_for(tracker, journal_dir(sdir))


def close_search_writer(sdir: SearchDir, timeout: float) -> int:
    """Close the search's writer; returns the writes left unsent (kept in the journal)."""
    return close_writer(journal_dir(sdir), timeout)


def close_orphans(sdir: SearchDir, tracker: Any, trials: list[Any]) -> None:
    """End the search's MLflow runs that are still RUNNING but whose trial Ray no longer has
    (it started after Ray's last saved state, and the driver died): FAILED, saying why. The
    Optuna study fails such trials on resume (``PruneAwareOptunaSearch.restore``)."""
    known = {t.trial_id for t in trials}
    writer = search_writer(sdir, tracker)
    for run in _running_trial_runs(sdir, tracker):
        trial_id = run.data.tags.get("extune.trial_id")
        if trial_id and trial_id not in known:
            writer.submit(Op("tags", trial_id, tags={
                "extune.state": "failed", "extune.error": "lost: the search's driver stopped "
                "before Ray saved this trial; --resume sampled a new trial instead"}))
            writer.submit(Op("end", trial_id, status="FAILED", name=f"{run.info.run_name} · lost"))


def end_killed(sdir: SearchDir, tracker: Any) -> None:
    """End the search's runs still RUNNING, its trials' and its own, as KILLED (a stopped
    search), and send what the store takes within 10 s."""
    writer = search_writer(sdir, tracker)
    for run in _running_trial_runs(sdir, tracker):
        trial_id = run.data.tags.get("extune.trial_id")
        if trial_id:  # the state tag too: a run KILLED but tagged running reads as live
            writer.submit(Op("tags", trial_id, tags={STATE_TAG: "interrupted"}))
            writer.submit(Op("end", trial_id, status="KILLED"))
    writer.submit(Op("end", status="KILLED"))
    close_search_writer(sdir, timeout=10)


def _running_trial_runs(sdir: SearchDir, tracker: Any) -> list[Any]:
    """The search's trial runs MLflow has as RUNNING (none when the store is down: the next
    ``--resume`` or ``extune sync`` looks again)."""
    try:
        return tracker.client.search_runs(
            [tracker.experiment_id], max_results=5000,
            filter_string=f"tags.`extune.search_id` = '{sdir.search_id}' and "
                          "tags.`extune.role` = 'trial' and attributes.status = 'RUNNING'")
    except Exception as e:  # MLflow, requests and SQLAlchemy raise many types
        log.warning("could not look for unfinished MLflow runs: %s", one_line(e, 200))
        return []


def mark_interrupted(sdir: SearchDir, tracker: Any) -> None:
    """A stopped search: ``interrupted`` in ``search.json`` (where the disk allows), its
    MLflow runs still running ended KILLED."""
    try:
        sdir.set_status("interrupted")
    except OSError:  # a full disk: resume reads "running" the same way
        pass
    end_killed(sdir, tracker)


def search_journals(folder: str | Path) -> list[Job]:
    """The journal of a search folder with its search's tracker (``extune sync``,
    :func:`extune.tracking.sync.sync_journals`).

    Raises:
        ConfigError: not a search folder.
    """
    from extune.search.folder import is_search_folder

    root = Path(folder).resolve()
    if not is_search_folder(root):
        raise ConfigError(f"{root} is not a search or study folder (no search.json or "
                          "study.json), nor an output folder of a tracked `extune train` (no "
                          "tracking/run.json); pass the folder `extune search` printed")
    return [(root / TRACKING_DIR, lambda: search_tracker(SearchDir.load(root)))]
