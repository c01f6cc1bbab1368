"""A study's final runs: every method's chosen config retrained with K seeds, as Ray trials.

One Tune experiment holds all final runs (a cluster runs them in parallel). Each trial's config
is the full override dict of its run (``method``, the chosen parameters, ``runtime.seed``) and
its label ``_label`` (``excon-seed2``), under the key ``_run``: the experiment is a Tune grid over
these dicts, so each runs exactly once. The trainable is the search's own
:func:`~extune.search.trainable.train_trial`, and the configs carry ``eval.test=true``, so the
last epoch's report holds the ``test/...`` metrics. An interrupted stage is restored from its
Tune experiment: finished runs are not trained again, unfinished ones continue from their last
checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from extune.search.resources import cluster_plan
from extune.search.settings import Objective
from extune.search.trials import (
    LABEL,
    RUN,
    config_label,
    reported_metrics,
    trial_config,
    trial_error,
)
from extune.train.config import Config

__all__ = ["run_final_stage", "final_points"]

TEST_ACCURACY = Objective("accuracy", "test/accuracy", "max")


def final_points(sdir: Any, best: dict[str, dict[str, Any]]) -> tuple[Config, list[dict]]:
    """The final runs' shared base config and one Tune config per (method, seed).

    Methods whose search had no complete trial get no final runs (the report says so).
    Each method's final config is also written to ``final/configs/<method>.yaml``.
    """
    settings = sdir.settings
    base = settings.final_config(Config.load(sdir.base_file), settings.final_seeds()[0])
    base_flat = base.flatten()
    configs = sdir.final_dir / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    points = []
    for method, chosen in best.items():
        if not chosen.get("config"):
            continue
        chosen_cfg = Config.load(chosen["config"])
        settings.final_config(chosen_cfg, settings.final_seeds()[0]).save(
            configs / f"{method}.yaml")
        for index, seed in enumerate(settings.final_seeds()):
            flat = settings.final_config(chosen_cfg, seed).flatten()
            overrides = {k: v for k, v in flat.items() if base_flat.get(k) != v}
            overrides.update({"method": method, "runtime.seed": seed})
            points.append({**overrides, LABEL: f"{method}-seed{seed}", "_seed_index": index})
    return base, points


def run_final_stage(sdir: Any, best: dict[str, dict[str, Any]], tracker: Any) -> list[dict]:
    """Train (or finish) every final run; returns one record per run.

    Returns:
        ``[{"method", "seed", "seed_index", "label", "state", "metrics", "error"}]``, also
        written to ``final/runs.json``.
    """
    base, points = final_points(sdir, best)
    path = sdir.final_experiment_path()
    if points:
        from extune.search.writer import close_writer

        try:
            _tuner(sdir, base, points, tracker, path).fit()
        finally:
            close_writer(sdir.final_dir / "tracking", timeout=60)
    runs = _collect(path, points, base)
    (sdir.final_dir / "runs.json").write_text(json.dumps(runs, indent=2))
    return runs


def _tuner(sdir: Any, base: Config, points: list[dict], tracker: Any, path: str) -> Any:
    from ray import tune

    from extune.search.console import LiveConsole
    from extune.search.tracking import MlflowCallback
    from extune.search.trainable import train_trial
    from extune.train.data import load_data

    settings = sdir.settings
    base_dict = base.to_dict()
    plan = cluster_plan(cpus_per_trial=settings.cpus_per_trial,
                        gpus_per_trial=settings.gpus_per_trial,
                        max_concurrent=settings.max_concurrent, trials=len(points))
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base_dict, data=load_data(base.data),
                             cpus=settings.cpus_per_trial, objectives=("val/accuracy",),
                             storage=path),
        {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False)
    storage, _, name = path.rpartition("/")
    callbacks = [
        MlflowCallback(tracker, base_dict, tags={"extune.stage": "final",
                                                 "extune.study_id": sdir.study_id},
                       journal_dir=sdir.final_dir / "tracking"),
        LiveConsole(title=f"{sdir.name} final runs", objectives=[TEST_ACCURACY], base=base_dict,
                    total=len(points), live=settings.live),
    ]
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=plan.concurrency, reuse_actors=True),
        param_space={RUN: tune.grid_search(points)},
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def _collect(path: str, points: list[dict], base: Config) -> list[dict]:
    """One record per planned run, from the Tune experiment's saved trial states."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = list(ExperimentAnalysis(path).trials) if points else []
    except Exception:  # nothing ran
        trials = []
    by_label = {config_label(t.config): t for t in trials}
    base_dict = base.to_dict()
    runs = []
    for point in points:
        trial = by_label.get(point[LABEL])
        metrics = reported_metrics(trial.last_result or {}) if trial is not None else {}
        epochs = trial_config(base_dict, point).optim.epochs
        state = _state(trial, metrics, epochs)
        runs.append({"method": point["method"], "seed": point.get("runtime.seed"),
                     "seed_index": point["_seed_index"], "label": point[LABEL],
                     "state": state, "metrics": metrics,
                     "error": trial_error(trial) if state == "failed" else None})
    return runs


def _state(trial: Any, metrics: dict[str, float], epochs: int) -> str:
    if trial is None:
        return "missing"
    if trial.status == "ERROR":
        return "failed"
    if trial.status == "TERMINATED" and metrics.get("epoch", 0) >= epochs and \
            "test/accuracy" in metrics:
        return "complete"
    return "unfinished"


def load_runs(final_dir: Path) -> list[dict]:
    """The final runs recorded by :func:`run_final_stage`."""
    return json.loads((final_dir / "runs.json").read_text())
