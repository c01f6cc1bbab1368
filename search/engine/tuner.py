"""The one place a Ray Tune ``Tuner`` of extune trials is built: a search's (searcher,
scheduler, budgets) and a study's final runs (a grid of whole configs) alike, so that both run
:func:`~extune.search.engine.trainable.train_trial` with the same resources, storage, failure
rule, checkpoints and restore.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

from extune.search.engine.resources import ResourcePlan

__all__ = ["trial_tuner", "keep_latest_checkpoints", "CHECKPOINTS_KEPT"]

CHECKPOINTS_KEPT = 2
"""Checkpoints Ray keeps per running trial. Ray forces a snapshot of the whole experiment
whenever a trial has saved this many since the last one (so that no snapshot names a deleted
checkpoint), and a snapshot writes every trial's state (about 40 KB of JSON each: 84 MB and
0.2 s at 2,000 trials). With 1 that was a snapshot per epoch of every trial, O(trials²) over a
search; with 2, one per two epochs, none for one-epoch trials. An ended trial keeps its latest
only (:func:`keep_latest_checkpoints`), so the disk a search leaves is that of one per trial."""

_CHECKPOINT_FOLDER = re.compile(r"checkpoint_(\d+)")


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
                checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT)))
    return RayLoggersOff(tuner) if files else tuner


def keep_latest_checkpoints(trials: Sequence[Any]) -> int:
    """Delete every checkpoint but the latest of each ended trial (Ray ``Trial`` objects of
    a saved experiment, on any storage pyarrow reaches); returns how many were deleted.

    Call it once Ray's last snapshot of the experiment is written (after ``Tuner.fit``): the
    snapshot names the latest checkpoint of an ended trial, and an ended trial is never
    restored. Running, pending and failed trials keep theirs (a resume or a retry needs them).
    """
    deleted = 0
    for trial in trials:
        latest = trial.checkpoint
        if trial.status != "TERMINATED" or latest is None:
            continue
        folder, _, name = latest.path.rstrip("/").rpartition("/")
        index = _checkpoint_index(name)
        if index:  # None: not Ray's folder name; 0: the trial's first, nothing older
            deleted += _delete_older_checkpoints(latest.filesystem, folder, index)
    return deleted


def _delete_older_checkpoints(filesystem: Any, folder: str, index: int) -> int:
    """Delete the checkpoint folders of ``folder`` numbered below ``index``; how many."""
    import pyarrow.fs

    try:
        entries = filesystem.get_file_info(pyarrow.fs.FileSelector(folder))
    except OSError:  # moved or gone: nothing to tidy
        return 0
    deleted = 0
    for entry in entries:
        older = _checkpoint_index(entry.base_name)
        if older is not None and older < index and entry.type == pyarrow.fs.FileType.Directory:
            with contextlib.suppress(OSError):
                filesystem.delete_dir(entry.path)
                deleted += 1
    return deleted


def _checkpoint_index(name: str) -> int | None:
    """``checkpoint_000003`` -> 3 (Ray's name of a trial's checkpoint folder); else ``None``."""
    found = _CHECKPOINT_FOLDER.fullmatch(name)
    return int(found.group(1)) if found else None
