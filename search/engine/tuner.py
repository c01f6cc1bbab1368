"""The one place a Ray Tune ``Tuner`` of extune trials is built: a search's (searcher,
scheduler, budgets) and a study's final runs (a grid of whole configs) alike, so that both run
:func:`~extune.search.engine.trainable.train_trial` with the same resources, storage, failure
rule, checkpoints and restore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from extune.search.engine.resources import ResourcePlan

__all__ = ["trial_tuner"]


def trial_tuner(path: str, *, base: dict[str, Any], data: Any, plan: ResourcePlan,
                cpus_per_trial: float, objectives: Sequence[str], callbacks: Sequence[Any],
                tune_config: dict[str, Any], param_space: dict[str, Any] | None = None,
                stop: Any = None, max_failures: int = 1,
                full_epochs: tuple[int, ...] | None = None, restore: bool = True,
                restore_then: str | None = None) -> Any:
    """A Tune ``Tuner`` of :func:`~extune.search.engine.trainable.train_trial` over ``base``.

    Args:
        path: the experiment's storage path or URI (a search's experiment folder, a study's
            final experiment).
        base: the base config as a dict; data: the decoded data set (one copy, through Ray's
            object store).
        plan: CPUs, GPUs and concurrency of each trial
            (:func:`~extune.search.engine.resources.cluster_plan`); cpus_per_trial: the torch
            threads of a trial.
        objectives: metrics a trial must report (it fails with their names otherwise).
        callbacks: Tune callbacks (MLflow, the live console, the disk guard...).
        tune_config: ``TuneConfig`` arguments (searcher, scheduler, samples, concurrency).
        param_space: the Tune parameter space (a study's grid of runs); ``None``: the searcher's.
        stop: a Tune stopper (budgets); max_failures: retries of a failing trial.
        full_epochs: epochs after which the full evaluation suite runs besides the last.
        restore: restore the experiment at ``path`` when Ray saved one (a resumed search, an
            interrupted final stage); restore_then: what is left to do, for the one-line error
            when Ray cannot restore it.
    """
    from ray import tune

    from extune.search.engine.disk import ray_storage, restore_tuner
    from extune.search.engine.result_files import RayLoggersOff, result_file_callbacks
    from extune.search.engine.trainable import train_trial

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base, data=data, cpus=cpus_per_trial,
                             objectives=tuple(objectives), storage=path,
                             full_epochs=full_epochs),
        {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})
    files = result_file_callbacks(path)  # a restored Tuner's callbacks are Ray's saved ones
    if restore and tune.Tuner.can_restore(path):
        tuner = restore_tuner(path, trainable) if restore_then is None else restore_tuner(
            path, trainable, then=restore_then)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(**tune_config, max_concurrent_trials=plan.concurrency,
                                        reuse_actors=True),
            param_space=param_space,
            run_config=tune.RunConfig(
                **ray_storage(path), verbose=0, stop=stop,
                callbacks=[*callbacks, *files],
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    return RayLoggersOff(tuner) if files else tuner
