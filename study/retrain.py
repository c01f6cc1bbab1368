"""A study's final runs: every method's chosen config retrained with K seeds, as Ray trials,
and the same for each control arm (the method's chosen config with its explanation-driven part
switched off: ``excon-off`` trains it as SupCon, ``edda-off`` as CE, ``edda-random`` with
random occlusions of its chosen sizes), with the same seeds.

Each final run is a Tune trial whose config is the full override dict of its run (``method``,
the chosen parameters, ``runtime.seed``) and its label ``_label`` (``excon-seed2``), under the
key ``_run``: an experiment is a Tune grid over these dicts, so each runs exactly once. The
trainable is the search's own :func:`~extune.search.engine.trainable.train_trial`, and the configs
carry ``eval.test=true``, so the last epoch's report holds the ``test/...`` metrics.

Runs are reused across experiments: a run counts as done when some experiment of the study
(``study.json`` lists them) finished it with the planned epochs. An interrupted experiment is
restored (finished runs are not trained again, unfinished ones continue from their checkpoint);
runs an experiment does not hold (``--resume --seeds`` with more seeds, or ``--final-epochs``
changed) go to a new experiment.
"""

from __future__ import annotations

import json
import math
from typing import Any

from extune.evaluate.objectives import Objective
from extune.files import atomic_write_text
from extune.signals import sigint_kept
from extune.tracking.trials import (
    ARM,
    LABEL,
    RUN,
    config_label,
    reported_metrics,
    trial_config,
    trial_error,
)
from extune.train.config import Config

__all__ = ["run_final_stage", "final_points", "HISTORY_KEYS"]

TEST_ACCURACY = Objective("accuracy", "test/accuracy", "max")

HISTORY_KEYS = ("epoch", "val/accuracy", "val/loss", "val/ece", "train/loss", "train/accuracy",
                "train/driven_share", "train/mask_keep_rate", "train/salient_confidence",
                "train/seconds")
"""What each final run keeps per epoch (learning curves and diagnostics in results.json)."""


def final_points(sdir: Any, chosen: dict[str, list[dict[str, Any]]],
                 controls: dict[str, list[dict[str, str]]] | None = None
                 ) -> tuple[Config, list[dict]]:
    """The final runs' shared base config and one Tune config per (arm, seed).

    Final run ``i`` of a method trains the config of its search ``i mod S`` (S searches per
    method); so does run ``i`` of each of its control arms (``controls``: method -> arms, each
    ``{"arm", "trains", "what"}``), trained by the arm's method. Methods whose search had no
    complete trial get no final runs (the report says so). Each arm's config (of its first
    search) is written to ``final/configs/<arm>.yaml``.
    """
    settings = sdir.settings
    seeds = settings.final_seeds()
    base = settings.final_config(Config.load(sdir.base_file), seeds[0])
    base_flat = base.flatten()
    configs = sdir.final_dir / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    points = []
    for method, searches in chosen.items():
        files = [c.get("config") for c in searches]
        if not any(files):
            continue
        first = next(f for f in files if f)
        arms = [(method, method)] + [(a["arm"], a["trains"])
                                     for a in (controls or {}).get(method, [])]
        for arm, trains in arms:
            settings.final_config(Config.load(first), seeds[0]).with_overrides(
                {"method": trains}).save(configs / f"{arm}.yaml")
            for index, seed in enumerate(seeds):
                search_index = index % len(files)
                source = files[search_index] or first
                flat = settings.final_config(Config.load(source), seed).flatten()
                overrides = {k: v for k, v in flat.items() if base_flat.get(k) != v}
                overrides.update({"method": trains, "runtime.seed": seed})
                point = {**overrides, LABEL: f"{arm}-seed{seed}", "_seed_index": index,
                         "_search_index": search_index}
                if arm != method:
                    point[ARM] = arm
                points.append(point)
    return base, points


def run_final_stage(sdir: Any, chosen: dict[str, list[dict[str, Any]]], tracker: Any,
                    controls: dict[str, list[dict[str, str]]] | None = None) -> list[dict]:
    """Train (or finish) every final run and control; returns one record per run.

    Returns:
        ``[{"method" (the arm: ``excon`` or ``excon-off``), "trains", "seed", "seed_index",
        "search_index", "label", "state", "metrics", "history", "seconds", "checkpoint",
        "per_image", "protocol", "epochs", "error"}]``, also written to ``final/runs.json``.
    """
    base, points = final_points(sdir, chosen, controls)
    epochs = base.optim.epochs
    done = _collect_all(sdir, points, base)
    todo = [p for p in points if done.get(p[LABEL], {}).get("state") != "complete"]
    if todo:
        from ray.tune import ExperimentAnalysis

        from extune.search import keep_latest_checkpoints
        from extune.tracking.journal import close_writer

        path = _experiment_for(sdir, [p[LABEL] for p in todo], epochs)
        try:
            with sigint_kept():  # Tune leaves its handler: the next Ctrl-C would be swallowed
                _tuner(sdir, base, todo, tracker, path).fit()
        finally:
            close_writer(sdir.final_dir / "tracking", timeout=60)
        try:
            keep_latest_checkpoints(ExperimentAnalysis(path).trials)  # Ray kept two per run
        except ValueError:  # Ray saved no snapshot of the experiment: nothing to tidy
            pass
        done = _collect_all(sdir, points, base)
    runs = [done.get(p[LABEL]) or _record(p, None, base, None) for p in points]
    atomic_write_text(sdir.final_dir / "runs.json", json.dumps(runs, indent=2))
    return runs


def _experiment_for(sdir: Any, labels: list[str], epochs: int) -> str:
    """The experiment that trains ``labels``: the last one when it planned them all with these
    epochs (an interrupted stage), else a new one."""
    from ray import tune

    experiments = sdir.meta.get("final_experiments") or []
    if experiments:
        last = experiments[-1]
        if last["epochs"] == epochs and set(labels) <= set(last["labels"]) and \
                tune.Tuner.can_restore(last["path"]):
            return last["path"]
    return sdir.new_final_experiment(labels, epochs)


def _tuner(sdir: Any, base: Config, points: list[dict], tracker: Any, path: str) -> Any:
    """The final runs' Tuner (:func:`extune.search.trial_tuner`): a grid of whole configs, one
    trial each, restored when an earlier attempt saved the experiment."""
    from ray import tune

    from extune.search import LiveConsole, cluster_plan, trial_tuner
    from extune.tracking.callback import MlflowCallback
    from extune.tracking.journal import TRACKING_DIR
    from extune.train.data import load_data

    settings = sdir.settings
    base_dict = base.to_dict()
    plan = cluster_plan(cpus_per_trial=settings.cpus_per_trial,
                        gpus_per_trial=settings.gpus_per_trial,
                        max_concurrent=settings.max_concurrent, trials=len(points))
    callbacks = [
        MlflowCallback(tracker, base_dict, tags={"extune.stage": "final",
                                                 "extune.study_id": sdir.study_id},
                       journal_dir=sdir.final_dir / TRACKING_DIR),
        LiveConsole(title=f"{sdir.name} final runs", objectives=[TEST_ACCURACY], base=base_dict,
                    total=len(points), live=settings.live),
    ]
    return trial_tuner(path, base=base_dict, data=load_data(base.data), plan=plan,
                       cpus_per_trial=settings.cpus_per_trial, objectives=("val/accuracy",),
                       callbacks=callbacks, tune_config={},
                       param_space={RUN: tune.grid_search(points)})


def _experiments(sdir: Any) -> list[dict[str, Any]]:
    """The study's final experiments; a study written before they were listed has one,
    ``final/trials``."""
    listed = sdir.meta.get("final_experiments")
    if listed:
        return listed
    legacy = sdir.final_dir / "trials"
    if legacy.is_dir():
        return [{"path": str(legacy), "labels": None,
                 "epochs": sdir.settings.resolved_final_epochs()}]
    return []


def _collect_all(sdir: Any, points: list[dict], base: Config) -> dict[str, dict]:
    """Label -> the best record of that run over every experiment (a complete run with the
    planned epochs first, else the latest attempt)."""
    from ray.tune import ExperimentAnalysis

    epochs = base.optim.epochs
    wanted = {p[LABEL]: p for p in points}
    found: dict[str, dict] = {}
    for experiment in _experiments(sdir):
        if experiment["epochs"] != epochs:
            continue
        try:
            analysis = ExperimentAnalysis(experiment["path"])
        except Exception:  # nothing ran there yet
            continue
        frames = analysis.trial_dataframes
        for trial in analysis.trials:
            label = config_label(trial.config)
            if label not in wanted:
                continue
            record = _record(wanted[label], trial, base, frames.get(trial.trial_id))
            record["experiment"] = experiment["path"]
            if found.get(label, {}).get("state") != "complete":
                found[label] = record
    return found


def _record(point: dict, trial: Any, base: Config, frame: Any) -> dict[str, Any]:
    """One final run as plain data (see :func:`run_final_stage`)."""
    from extune.train.loop import PER_IMAGE_NAME
    from extune.train.methods import evaluation_protocol

    metrics = reported_metrics(trial.last_result or {}) if trial is not None else {}
    cfg = trial_config(base.to_dict(), point)
    state = _state(trial, metrics, cfg.optim.epochs)
    checkpoint = getattr(trial, "checkpoint", None) if trial is not None else None
    seconds = (trial.last_result or {}).get("time_total_s") if trial is not None else None
    folder = checkpoint.path if checkpoint is not None else None
    return {"method": point.get(ARM, point["method"]), "trains": point["method"],
            "seed": point.get("runtime.seed"), "seed_index": point["_seed_index"],
            "search_index": point.get("_search_index", 0), "label": point[LABEL],
            "state": state, "metrics": metrics, "history": _history(frame), "seconds": seconds,
            "epochs": cfg.optim.epochs, "checkpoint": folder,
            "per_image": f"{folder.rstrip('/')}/{PER_IMAGE_NAME}"
            if folder and state == "complete" else None,
            "protocol": {**evaluation_protocol(cfg),
                         "explain_samples": cfg.eval.explain_samples,
                         "top_fraction": cfg.eval.top_fraction,
                         "deletion_steps": cfg.eval.deletion_steps},
            "error": trial_error(trial) if state == "failed" else None}


def _history(frame: Any) -> list[dict[str, float]]:
    """The per-epoch values of :data:`HISTORY_KEYS` from a trial's results."""
    if frame is None or len(frame) == 0:
        return []
    keys = [k for k in HISTORY_KEYS if k in frame.columns]
    rows = []
    for values in frame[keys].to_dict("records"):
        row = {k: float(v) for k, v in values.items()
               if isinstance(v, (int, float)) and math.isfinite(v)}
        if row:
            rows.append(row)
    return rows


def _state(trial: Any, metrics: dict[str, float], epochs: int) -> str:
    if trial is None:
        return "missing"
    if trial.status == "ERROR":
        return "failed"
    if trial.status == "TERMINATED" and metrics.get("epoch", 0) >= epochs and \
            "test/accuracy" in metrics:
        return "complete"
    return "unfinished"
