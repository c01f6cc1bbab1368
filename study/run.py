"""``run_study``: a fair, seeded comparison of methods (docs/study.md).

For each method: one search (or ``--search-seeds S``) of its built-in space with the same budget
(trials or trial-epochs, epochs, scheduler, sampler and seed), selected on the validation split;
then every method's chosen config is retrained with K seeds at the final epoch count, as Ray
trials (a cluster runs them in parallel), and scored on the test split under one evaluation
protocol; then the saved checkpoints are re-scored under the sensitivity protocols, their explainers
audited (:func:`~extune.study.sensitivity.audit_stage`), and the report is written
(:mod:`extune.study.report`).

Everything is resumable: a finished search is read, an unfinished one resumed; the final runs'
Tune experiments are restored, so nothing is trained twice. MLflow: one parent run for the study
(``extune.role=study``) whose children are the searches' parent runs (``extune.stage=search``)
and the final runs (``extune.stage=final``), all tagged with ``extune.method``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from extune.locks import hold_folder
from extune.search import SearchDir, chosen_trial
from extune.study.folder import StudyDir
from extune.study.plan import PLAN_FILE, build_plan
from extune.study.settings import StudySettings
from extune.tracking.journal import bounded_http_client

__all__ = ["StudyResult", "run_study", "study_tracker"]


@dataclass
class StudyResult:
    """What a study produced: the folder, the report files and the MLflow parent run."""

    name: str
    path: Path
    files: dict[str, Path]
    results: dict[str, Any]
    parent_run_id: str
    tracking_uri: str
    wall_s: float


def run_study(settings: StudySettings | None = None, *, resume: str | Path | None = None,
              final_epochs: int | None = None, seeds: int | None = None,
              plan: dict[str, Any] | None = None, protocols: str | None = None
              ) -> StudyResult:
    """Run a study (or finish an interrupted one): plan, searches, final runs and controls,
    sensitivity, report.

    Args:
        settings: the study (``None``: the defaults).
        resume: a study folder to finish with its saved settings.
        final_epochs, seeds, plan, protocols: with ``resume``, new values of these settings
            (``protocols`` re-scores the saved checkpoints only: a study stranded by a bad
            protocol finishes without training anything again); each change is recorded as
            a deviation (finished final runs of the same epochs are reused), and so is any
            change of the plan rebuilt from them and today's code.

    Raises:
        ExtuneError: bad settings or spaces, unreachable Ray cluster or tracking server,
            missing data.
    """
    import ray

    from extune.search import connect_ray, quiet_ray_env
    from extune.tracking.store import check_tracking_uri, resolve_tracking_uri

    start = time.time()
    quiet_ray_env()
    bounded_http_client()
    if resume is not None:
        sdir = StudyDir.load(resume)
        hold_folder(sdir.path, "study")  # one writer per folder (extune.locks)
        _check_resumed_protocols(sdir, protocols)
        sdir.change_settings(final_epochs=final_epochs, seeds=seeds, plan=plan,
                             protocols=_protocol_list(protocols))
        sdir.check_plan()
        settings = sdir.settings
    else:
        settings = settings or StudySettings()
        _validate_spaces(settings)
        planned = build_plan(settings)
    uri = resolve_tracking_uri(settings.tracking_uri)
    check_tracking_uri(uri)
    if resume is None:
        sdir = StudyDir.create(settings)  # holds the folder's lock
        sdir.write_plan(planned)  # before the first trial
    tracker = study_tracker(sdir, uri)
    started = connect_ray(settings.address)
    try:
        results, files = _stages(sdir, tracker)
    except BaseException:
        sdir.update(status="interrupted")
        tracker.end(tracker.parent_run(), "KILLED")
        raise
    finally:
        if started:
            ray.shutdown()
    return StudyResult(sdir.name, sdir.path, files, results, tracker.parent_run(), uri,
                       time.time() - start)


def _stages(sdir: StudyDir, tracker: Any) -> tuple[dict[str, Any], dict[str, Path]]:
    """Searches, final runs, sensitivity and report of a study whose Ray is up."""
    from extune.study.report import write_report
    from extune.study.retrain import run_final_stage
    from extune.study.sensitivity import audit_stage, rescore_stage

    settings = sdir.settings
    console = Console()
    sdir.update(status="running", cluster=_cluster())
    plan = sdir.plan()
    held = {key: h["value"] for key, h in plan["held"].items()}
    if held:
        console.print(f"study {sdir.name}: held for every method (searched by some, read by "
                      "all): " + ", ".join(f"{k}={v}" for k, v in held.items()),
                      highlight=False, markup=False)
    chosen = _search_stages(sdir, tracker.parent_run(), held, console)
    _warn_inactive(chosen, console)
    arms = sum(len(a) for a in plan["controls"].values())
    console.print(f"study {sdir.name}: final runs ({len(chosen)} methods"
                  + (f" and {arms} control arm(s)" if arms else "")
                  + f" x {settings.seeds} seeds)", highlight=False, markup=False)
    t0 = time.time()
    runs = run_final_stage(sdir, chosen, tracker, plan["controls"])
    sdir.add_seconds("final", time.time() - t0)
    if any(r["state"] in ("unfinished", "missing") for r in runs):
        raise KeyboardInterrupt  # Ctrl-C during the final runs: resume trains the rest
    t0 = time.time()
    sensitivity = rescore_stage(sdir, runs, console)
    sdir.add_seconds("sensitivity", time.time() - t0)
    t0 = time.time()
    audit = audit_stage(sdir, runs, console)
    sdir.add_seconds("audit", time.time() - t0)
    results, files = write_report(sdir, runs, chosen, sensitivity, audit)
    _log_study(tracker, results, files)
    incomplete = any(r["state"] != "complete" for r in runs)
    sdir.update(status="finished" if not incomplete else "finished with failures")
    tracker.end(tracker.parent_run(), "FINISHED")
    return results, files


def _warn_inactive(chosen: dict[str, list[dict[str, Any]]], console: Console) -> None:
    """One line for each chosen config that would never switch its method on (its claims will
    be "not tested")."""
    from extune.train.config import Config
    from extune.train.methods import inactive_reason

    for method, searches in chosen.items():
        for search in searches:
            reason = search.get("config") and inactive_reason(Config.load(search["config"]))
            if reason:
                console.print(f"warning: {search.get('name', method)}: {reason}",
                              highlight=False, markup=False)


def _cluster() -> dict[str, Any]:
    """Where the study runs (recorded with its results): Ray's CPUs and GPUs, the driver's
    platform."""
    import platform

    import ray

    resources = ray.cluster_resources()
    return {"cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "platform": platform.platform(), "processor": platform.processor() or
            platform.machine()}


def _protocol_list(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


def _check_resumed_protocols(sdir: StudyDir, protocols: str | None) -> None:
    """``--resume --protocols``: the new protocols' layers, before anything changes."""
    if protocols is None:
        return
    from extune.study.protocols import check_protocols
    from extune.train.methods import config_model

    settings = sdir.settings
    final = settings.final_config(settings.base_config(), settings.final_seeds()[0])
    check_protocols(_protocol_list(protocols), config_model(final, 2))


def _validate_spaces(settings: StudySettings) -> None:
    """Every method's space against the base, the final runs' settings (the evaluation
    protocol) and the sensitivity protocols' layers, before any folder or run exists."""
    from extune.spaces import get_space, validate_space
    from extune.study.protocols import check_protocols
    from extune.train.methods import check_explain_layer, config_model
    from extune.train.validate import validate_config

    base = settings.base_config()
    final = validate_config(settings.final_config(base, settings.final_seeds()[0]))
    check_explain_layer(final)
    check_protocols(settings.protocols, config_model(final, 2))
    for method in settings.methods:
        validate_space(get_space(method), base, name=method, seed=settings.seed)


def study_tracker(sdir: StudyDir, uri: str, *, reopen: bool = True) -> Any:
    """The MLflow tracker of the study's parent run (created, or found again on resume: RUNNING
    again unless ``reopen`` is false, as for ``extune sync``)."""
    from extune.tracking.client import VIEW_TAG, MlflowTracker
    from extune.tracking.views import study_view

    s = sdir.settings
    tracker = MlflowTracker(uri, s.experiment, sdir.study_id, sdir.name, role="study",
                            tags={"extune.study_id": sdir.study_id}, reopen=reopen)
    tracker.check()
    base = s.base_config()
    params = {"methods": ",".join(s.methods), "seeds": s.seeds, "final_seeds":
              ",".join(map(str, s.final_seeds())), "trials_per_method": s.trials,
              "budget_epochs": s.budget_epochs, "search_seeds": s.search_seeds,
              "search_epochs": base.optim.epochs, "final_epochs": s.resolved_final_epochs(),
              "sampler": s.sampler, "seed": s.seed, "scheduler": s.scheduler,
              "objective": s.objective, "fixed": json.dumps(s.fixed) if s.fixed else "none",
              "eval_explainer": s.eval_explainer, "eval_layer": s.eval_layer or "last stage",
              "test": s.test, "correction": s.correction, "data": base.data.name,
              "study_dir": str(sdir.path), "plan_hash": sdir.meta.get("plan_hash"),
              "budget_seconds": s.budget_seconds}
    run_id = tracker.parent_run(params=params)
    if sdir.meta.get("parent_run_id") != run_id:
        view = tracker.share_view(f"extune-{sdir.study_id[:12]}", study_view(sdir.study_id))
        tracker.set_tags(run_id, {VIEW_TAG: view})
        sdir.update(parent_run_id=run_id, tracking_uri=uri, mlflow_view=view)
        tracker.log_artifact(run_id, sdir.base_file)
        tracker.log_artifact(run_id, sdir.path / PLAN_FILE)  # the plan's second copy
    return tracker


def _search_stages(sdir: StudyDir, parent_run: str, held: dict[str, Any], console: Console
                   ) -> dict[str, list[dict[str, Any]]]:
    """Every method's searches, at the same time where the Ray cluster has room for more than
    one (:mod:`extune.study.searches`), else one after another in this process; returns each
    method's chosen trials (:func:`~extune.search.chosen_trial`, with the search's wall
    time)."""
    from extune.study.searches import searches_at_once

    settings = sdir.settings
    states = {(m, i): _search_state(sdir, m, i)
              for m in settings.methods for i in range(settings.search_seeds)}
    todo = {search: state for search, state in states.items() if state != "finished"}
    at_once = searches_at_once(settings, len(todo))
    if todo:  # a resumed study with its searches done keeps the record of how they ran
        sdir.update(searches_at_once=at_once)
    if at_once > 1:
        _searches_in_drivers(sdir, todo, at_once, parent_run, held, console)
    chosen: dict[str, list[dict[str, Any]]] = {}
    for i, method in enumerate(settings.methods, 1):
        if at_once == 1:
            console.print(f"study {sdir.name}: search {i}/{len(settings.methods)}: {method}",
                          highlight=False, markup=False)
        chosen[method] = [_search_stage(sdir, method, index, parent_run, held)
                          for index in range(settings.search_seeds)]
    return chosen


def _search_state(sdir: StudyDir, method: str, index: int) -> str:
    """``new``, ``unfinished`` or ``finished``: where search ``index`` of ``method`` stands."""
    folder = sdir.search_dir(sdir.settings.search_name(method, index))
    if not (folder / "search.json").is_file():
        return "new"
    return "finished" if SearchDir.load(folder).meta.get("status") == "finished" \
        else "unfinished"


def _searches_in_drivers(sdir: StudyDir, todo: dict[tuple[str, int], str], at_once: int,
                         parent_run: str, held: dict[str, Any], console: Console) -> None:
    """Run the searches ``todo`` (``(method, index)``: ``new`` or ``unfinished``) in driver
    processes, ``at_once`` at a time, on the study's Ray; each search's wall time and window
    are recorded."""
    from extune.study.searches import SearchJob, run_searches, study_ray_address

    settings = sdir.settings
    jobs = []
    for (method, index), state in todo.items():
        name = settings.search_name(method, index)
        folder = sdir.search_dir(name)
        if state == "unfinished":
            jobs.append(SearchJob(name, folder, resume=str(folder)))
        else:
            jobs.append(SearchJob(name, folder, settings=_new_search(
                sdir, method, index, parent_run, held).to_dict()))
    console.print(f"study {sdir.name}: {len(jobs)} searches, {at_once} at once (each a driver "
                  f"of its own on the study's Ray): {', '.join(j.name for j in jobs)}",
                  highlight=False, markup=False)
    try:
        run_searches(jobs, at_once, study_ray_address(settings.address),
                     lambda line: console.print(line, highlight=False, markup=False),
                     sdir.path / "searches" / "drivers")
    finally:
        for job in jobs:
            if job.started is not None and job.ended is not None:
                _record_window(sdir, job.name, job.started, job.ended)


def _new_search(sdir: StudyDir, method: str, index: int, parent_run: str,
                held: dict[str, Any]) -> Any:
    """The settings of search ``index`` of ``method`` (one after another or beside others):
    the study's budget and seeds, the plan's ``held`` settings, under the study's run."""
    folder = sdir.search_dir(sdir.settings.search_name(method, index))
    return sdir.settings.search_settings(
        method, index, out=str(folder.parent), parent_run=parent_run, study_id=sdir.study_id,
        base_file=str(sdir.base_file), held=held)


def _record_window(sdir: StudyDir, name: str, started: float, ended: float) -> None:
    """A search's wall time (``stage_seconds``) and when it ran (``search_windows``: start and
    end, seconds since the epoch; searches that ran at the same time overlap)."""
    windows = sdir.meta.setdefault("search_windows", {})
    windows.setdefault(name, []).append([started, ended])
    sdir.add_seconds(f"search/{name}", ended - started)


def _search_stage(sdir: StudyDir, method: str, index: int, parent_run: str,
                  held: dict[str, Any]) -> dict[str, Any]:
    """Run (or finish, or read) search ``index`` of ``method`` with the plan's ``held``
    settings in this process; returns its chosen trial (:func:`~extune.search.chosen_trial`)
    with the search's wall time."""
    from extune.search import run_search

    name = sdir.settings.search_name(method, index)
    folder = sdir.search_dir(name)
    state = _search_state(sdir, method, index)
    t0 = time.time()
    result = None
    if state == "unfinished":
        result = run_search(resume=folder)
    elif state == "new":
        result = run_search(_new_search(sdir, method, index, parent_run, held))
    if state != "finished":
        _record_window(sdir, name, t0, time.time())
    if result is not None and result.interrupted:  # Ctrl-C: Tune returns, the study stops
        raise KeyboardInterrupt
    chosen = chosen_trial(SearchDir.load(folder))
    chosen["seconds"] = sdir.meta.get("stage_seconds", {}).get(f"search/{name}")
    return chosen


def _log_study(tracker: Any, results: dict[str, Any], files: dict[str, Path]) -> None:
    parent = tracker.parent_run()
    for key, path in files.items():
        tracker.log_artifact(parent, path, "plots" if key.startswith("plot") else None)
    metrics = {}
    for method, summary in results["methods"].items():
        for metric, interval in summary["final"].items():
            if interval.get("mean") is not None:
                metrics[f"{method}/test/{metric}"] = interval["mean"]  # mean over seeds
    tracker.log_metrics(parent, metrics, step=0)
    verdicts = {f"extune.{c['kind']}.{c['a']}-{c['b']}.{c['metric']}": c["verdict"]
                for c in results["comparisons"]}
    tracker.set_tags(parent, verdicts)
