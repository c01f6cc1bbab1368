"""The parent MLflow run of a search: created with the search's constants and description,
given its shared runs-table view, told the search's results, and tidied when a driver stopped
(runs still RUNNING). Where Ray Tune keeps such work in callbacks, the trials' side is in
:mod:`~extune.tracking.callback`; this module is the search's side, called by the engine
when a search starts, ends or stops, and by ``extune sync`` (:func:`search_journals`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
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
from extune.tracking.notes import NOTE_TAG, finite, rounded
from extune.tracking.sync import Job
from extune.tracking.views import BEST_SO_FAR, SEARCH_TAG

__all__ = ["search_tracker", "searched_keys", "log_results", "journal_dir", "search_writer",
           "close_search_writer", "close_orphans", "end_killed", "mark_interrupted",
           "search_journals", "ParentFacts", "Progress", "parent_facts",
           "search_note", "end_progress", "BEST_SO_FAR", "PROGRESS_TAG"]

log = logging.getLogger(__name__)



def search_tracker(sdir: SearchDir, *, reopen: bool = True) -> Any:
    """The MLflow tracker of a search, its parent run created (or found again: RUNNING again
    unless ``reopen`` is false, as for ``extune sync``) and described."""
    from extune.tracking.client import VIEW_TAG, MlflowTracker

    tracker = MlflowTracker(sdir.meta["tracking_uri"], sdir.settings.experiment,
                            sdir.search_id, sdir.name, tags=sdir.settings.run_tags,
                            reopen=reopen)
    tracker.check()
    created = _parent_params(sdir)
    run_id = tracker.parent_run(params=created)
    if sdir.meta.get("parent_run_id") != run_id:
        view = _share_view(tracker, sdir)
        sdir.set_status(sdir.meta["status"], parent_run_id=run_id, mlflow_view=view)
        tracker.set_tags(run_id, {**_parent_tags(sdir, run_id, tracker.experiment_id),
                                  VIEW_TAG: view})
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


def _parent_tags(sdir: SearchDir, run_id: str, experiment_id: str) -> dict[str, str]:
    """What the parent run says about itself: the Optuna study, the search's name (what a
    comparison groups by) and the description of a search that starts."""
    storage = sdir.meta["optuna_storage"]
    facts = parent_facts(sdir, run_id, experiment_id)
    return {"extune.optuna_storage": storage, "extune.optuna_study": sdir.name,
            "extune.objectives": ",".join(o.metric for o in sdir.objectives),
            SEARCH_TAG: sdir.name, NOTE_TAG: search_note(facts, Progress())}


@dataclass(frozen=True)
class ParentFacts:
    """What a search's description says that does not change while it runs.

    Attributes:
        name: the search's name; settings: its space, trials, objectives, sampler and
            scheduler in words; objectives: its objectives; trials: how many it runs.
        view: the page of its trials' table (after ``http://host:port/``); plots: the page of
            its ``plots/plots.html``; storage: the Optuna study's storage URL.
        started_s: when the search started (its folder's creation, seconds since the epoch).
    """

    name: str
    settings: str
    objectives: tuple[Objective, ...]
    trials: int
    view: str | None
    plots: str
    storage: str
    started_s: float = 0.0


def parent_facts(sdir: SearchDir, run_id: str, experiment_id: str) -> ParentFacts:
    """The fixed parts of the description of the search of ``sdir`` (parent run ``run_id``)."""
    from extune.search.reporting.plots import PLOTS_DIR
    from extune.tracking.client import run_page

    s = sdir.settings
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in sdir.objectives)
    settings = (f"space `{sdir.meta['space_name']}`, {s.trials} trials, objective {objectives}, "
                f"sampler {s.sampler} (seed {s.seed}), {s.scheduler_text()}")
    try:
        started = time.mktime(time.strptime(sdir.meta["created"], "%Y-%m-%d %H:%M:%S"))
    except (KeyError, ValueError, OverflowError):
        started = time.time()
    return ParentFacts(sdir.name, settings, tuple(sdir.objectives), s.trials,
                       sdir.meta.get("mlflow_view"),
                       f"{run_page(experiment_id, run_id)}/artifacts/{PLOTS_DIR}/plots.html",
                       sdir.meta["optuna_storage"], started)


@dataclass
class Progress:
    """Where a search stands, for its description.

    Attributes:
        state: ``starting``, ``running``, ``finished`` or ``interrupted``.
        counts: trials per state (``complete``, ``pruned``, ``failed``, ``running``).
        best: the best complete trial so far (the chosen one once finished):
            ``(name, Tune trial id, {objective name: value})``.
        chosen: how the best was chosen (``best``; ``knee of the Pareto front``).
        ranked: the trials best first (finished): ``(name, Tune trial id, state, epochs,
            {objective name: value})``.
    """

    state: str = "starting"
    counts: dict[str, int] = field(default_factory=dict)
    best: tuple[str, str | None, dict[str, float]] | None = None
    chosen: str = "best"
    ranked: list[tuple[str, str | None, str, str, dict[str, float]]] = field(
        default_factory=list)


_RANKED_SHOWN = 10


def search_note(facts: ParentFacts, progress: Progress) -> str:
    """A search's description (its parent run's, what MLflow shows first): where it stands and
    its best trial in the first line, then links to its trials (best first), their charts and
    its plots, its best trials ranked, its settings and its Optuna study. A trial's link is
    ``[trial-003](trial:<Tune trial id>)``, made a link to its run when it is written
    (:func:`~extune.tracking.journal.resolve_trial_links`)."""
    lines = [f"**{facts.name}** (`extune search`): {_standing(facts, progress)}"]
    links = []
    if facts.view:
        links += [f"[its trials, best first]({facts.view})",
                  f"[their charts]({facts.view}&compareRunsMode=CHART)"]
    if progress.state in ("finished", "interrupted"):
        links.append(f"[plots.html]({facts.plots}) (importances, parallel coordinates, "
                     "contours, history)")
    else:
        links.append("`plots/plots.html` when it ends")
    lines += ["", "Open " + ", ".join(links) + "."]
    if progress.ranked:
        names = [o.name for o in facts.objectives]
        lines += ["", "| # | trial | state | epochs | " + " | ".join(names) + " |",
                  "|---|---|---|---|" + "---|" * len(names)]
        for i, (name, trial_id, state, epochs, values) in enumerate(
                progress.ranked[:_RANKED_SHOWN], 1):
            cells = [_number(values.get(n)) for n in names]
            lines.append(f"| {i} | {_trial_link(name, trial_id)} | {state} | {epochs} | "
                         + " | ".join(cells) + " |")
        if len(progress.ranked) > _RANKED_SHOWN:
            lines += ["", f"... and {len(progress.ranked) - _RANKED_SHOWN} more in its trials' "
                          "table."]
    lines += ["", f"Settings: {facts.settings}. Each trial is a child run (tag "
                  "`extune.role = 'trial'`; its state is the tag `extune.state` and the end of "
                  "its name); this run's params are the settings no trial changes."]
    lines += ["", f"Optuna study `{facts.name}` in `{facts.storage}` (`pip install "
                  f"optuna-dashboard`, then `optuna-dashboard {facts.storage}`)."]
    return "\n".join(lines)


def _standing(facts: ParentFacts, progress: Progress) -> str:
    """``finished: best [trial-005](...) alignment **0.1678**; 8 trials: 3 complete, ...``"""
    c = progress.counts
    done = sum(c.get(k, 0) for k in ("complete", "pruned", "failed"))
    tally = (f"{c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, "
             f"{c.get('failed', 0)} failed")
    best = "no complete trial yet"
    if progress.best is not None:
        name, trial_id, values = progress.best
        scores = ", ".join(f"{o.name} **{_number(values.get(o.name))}**"
                           for o in facts.objectives)
        best = f"{progress.chosen} {_trial_link(name, trial_id)}: {scores}"
    if progress.state == "finished":
        return f"finished, {best}. {done} trials: {tally}."
    if progress.state == "interrupted":
        return (f"interrupted after {done} of {facts.trials} trials ({tally}); "
                f"{best.replace(progress.chosen, progress.chosen + ' so far', 1)}.")
    if progress.state == "starting":
        return f"starting, {facts.trials} trials."
    so_far = best.replace(progress.chosen, progress.chosen + " so far", 1)
    return (f"running, {done} of {facts.trials} trials done ({tally}), "
            f"{c.get('running', 0)} running; {so_far}.")


def _trial_link(name: str, trial_id: str | None) -> str:
    return f"[{name}](trial:{trial_id})" if trial_id else name


def _number(value: Any) -> str:
    return rounded(value) if finite(value) else "-"


PROGRESS_TAG = "extune.progress"
"""The parent run's progress in one tag (``5/8 done: 3 complete, 2 pruned, 0 failed; 2
running``), a column of the experiment's runs table."""


def log_results(writer: Any, files: dict[str, Path], plots: dict[str, Path],
                best: TrialRecord | None, objectives: list[Objective], *,
                facts: ParentFacts | None = None, records: list[TrialRecord] | None = None,
                interrupted: bool = False) -> None:
    """Queue the parent run's results: files, plots, ``best/<metric>``, the best trial and,
    given ``facts``, the description of the search's end (its best trial and its trials
    ranked, from ``records``)."""
    from extune.search.reporting.plots import PLOTS_DIR

    for path in files.values():
        writer.submit(Op("artifact", path=str(path)))
    for path in plots.values():
        writer.submit(Op("artifact", path=str(path), dir=PLOTS_DIR))
    if facts is not None:
        progress = end_progress(records or [], objectives, best, interrupted)
        writer.submit(Op("tags", tags={NOTE_TAG: search_note(facts, progress)}))
    if best is None:
        return
    values = {f"best/{o.metric}": best.value(o) for o in objectives if best.value(o) is not None}
    writer.submit(Op("metrics", metrics=values, step=0, once_per_step=False))
    writer.submit(Op("tags", tags={"extune.best_trial": best.name,
                                   "extune.best_trial_id": best.trial_id}))
    if best.trial_id:
        writer.submit(Op("best", best_trial=best.trial_id))


def end_progress(records: list[TrialRecord], objectives: list[Objective],
                 best: TrialRecord | None, interrupted: bool) -> Progress:
    """A search's standing at its end: the counts, the chosen trial, the trials ranked."""
    from extune.search.reporting.results import rank_records

    counts: dict[str, int] = {}
    for r in records:
        counts[r.state] = counts.get(r.state, 0) + 1

    def values(r: TrialRecord) -> dict[str, float]:
        return {o.name: v for o in objectives if (v := r.value(o)) is not None}

    ranked = [(r.name, r.trial_id, r.state, f"{r.epoch}/{r.planned_epochs or '?'}", values(r))
              for r in rank_records(records, objectives)]
    chosen = "knee of the Pareto front" if len(objectives) > 1 else "best"
    return Progress("interrupted" if interrupted else "finished", counts,
                    (best.name, best.trial_id, values(best)) if best else None, chosen, ranked)


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
    """End the search's MLflow runs whose trial Ray no longer has (it started after Ray's last
    saved state: the driver died, or a full disk kept Ray from saving) as FAILED, saying why:
    RUNNING ones (a killed driver) and KILLED ones (a stopped search ended them, and
    ``--resume`` sampled a new trial instead). The Optuna study fails such trials on resume
    (``PruneAwareOptunaSearch.restore``)."""
    known = {t.trial_id for t in trials}
    writer = search_writer(sdir, tracker)
    for run in _trial_runs(sdir, tracker, "RUNNING") + _trial_runs(sdir, tracker, "KILLED"):
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
    for run in _trial_runs(sdir, tracker, "RUNNING"):
        trial_id = run.data.tags.get("extune.trial_id")
        if trial_id:  # the state tag too: a run KILLED but tagged running reads as live
            writer.submit(Op("tags", trial_id, tags={STATE_TAG: "interrupted"}))
            writer.submit(Op("end", trial_id, status="KILLED"))
    writer.submit(Op("end", status="KILLED"))
    close_search_writer(sdir, timeout=10)


def _trial_runs(sdir: SearchDir, tracker: Any, status: str) -> list[Any]:
    """The search's trial runs MLflow has in ``status`` (none when the store is down: the
    next ``--resume`` or ``extune sync`` looks again)."""
    try:
        return tracker.client.search_runs(
            [tracker.experiment_id], max_results=5000,
            filter_string=f"tags.`extune.search_id` = '{sdir.search_id}' and "
                          f"tags.`extune.role` = 'trial' and attributes.status = '{status}'")
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
    return [(root / TRACKING_DIR, lambda: search_tracker(SearchDir.load(root), reopen=False))]
