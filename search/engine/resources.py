"""What each trial gets from the Ray cluster (CPUs, GPUs) and how many trials run at once.

The GPU rule: ``--gpus-per-trial`` not given (``None``) means **one GPU per trial where the
cluster has GPUs**, none where it has none. Ray (checked with 2.60) no longer hides GPUs from a
task that asked for none (``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO``), so a trial given no GPU is
kept off them here (:func:`hide_unassigned_gpus`): with ``runtime.device=auto`` it would
otherwise put every trial on ``cuda:0`` without Ray counting it, as many at once as there are
CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from extune.errors import ConfigError
from extune.train.config import Config

__all__ = ["ResourcePlan", "plan_resources", "hide_unassigned_gpus", "GPU_RULE"]

GPU_RULE = "one GPU per trial where the cluster has GPUs (--gpus-per-trial to change)"


@dataclass(frozen=True)
class ResourcePlan:
    """Resources of one trial, trials at once, and the cluster they were planned on."""

    cpus_per_trial: float
    gpus_per_trial: float
    concurrency: int
    cluster_cpus: float
    cluster_gpus: float
    gpus_by_default: bool

    def text(self) -> str:
        """``Ray: 16 CPUs, 2 GPUs; 2 trials at once, each 1 CPU + 1 GPU (...)``."""
        gpu = f" + {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ", no GPU"
        rule = f" ({GPU_RULE})" if self.gpus_by_default and self.cluster_gpus else ""
        return (f"Ray: {self.cluster_cpus:g} CPUs, {self.cluster_gpus:g} GPUs; "
                f"{self.concurrency} trial{'s' if self.concurrency != 1 else ''} at once, each "
                f"{self.cpus_per_trial:g} CPU{gpu}{rule}")


def plan_resources(cpus: float, gpus: float, *, cpus_per_trial: float,
                   gpus_per_trial: float | None, max_concurrent: int | None,
                   trials: int) -> ResourcePlan:
    """Resolve the GPU default, refuse impossible requests, count the trials that fit.

    Args:
        cpus, gpus: the cluster's totals (``ray.cluster_resources()``).
        cpus_per_trial, gpus_per_trial: what the user asked (``gpus_per_trial=None``: the rule
            of this module).
        max_concurrent: trials at once if given; else as many as the CPUs and GPUs hold.
        trials: trials in all (no more run at once).

    Raises:
        ConfigError: a trial would need more CPUs or GPUs than the whole cluster has.
    """
    by_default = gpus_per_trial is None
    if by_default:
        gpus_per_trial = min(1.0, gpus) if gpus > 0 else 0.0
    if cpus_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial {cpus_per_trial:g} is more than the Ray cluster has "
                          f"({cpus:g} CPUs)")
    if gpus_per_trial > gpus:
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} but the Ray cluster has {gpus:g} "
                          "GPUs; use --gpus-per-trial 0 on a CPU machine")
    if max_concurrent is not None:
        concurrency = max_concurrent
    else:
        fits = cpus // cpus_per_trial
        if gpus_per_trial:
            fits = min(fits, gpus // gpus_per_trial)
        concurrency = int(max(1, min(fits, trials)))
    return ResourcePlan(cpus_per_trial, gpus_per_trial, concurrency, cpus, gpus, by_default)


def cluster_plan(*, cpus_per_trial: float, gpus_per_trial: float | None,
                 max_concurrent: int | None, trials: int) -> ResourcePlan:
    """:func:`plan_resources` on the connected Ray cluster."""
    import ray

    resources = ray.cluster_resources()
    return plan_resources(resources.get("CPU", 0.0), resources.get("GPU", 0.0),
                          cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                          max_concurrent=max_concurrent, trials=trials)


def hide_unassigned_gpus(cfg: Config, gpu_ids: list) -> Config:
    """The config a trial trains, kept off GPUs that Ray did not give it.

    With no GPU assigned, CUDA is hidden from this process (``CUDA_VISIBLE_DEVICES=""``, set
    before torch initialises CUDA) and ``runtime.device=auto`` becomes ``cpu``.

    Raises:
        ConfigError: ``runtime.device=cuda`` for a trial that was given no GPU.
    """
    if gpu_ids:
        return cfg
    if cfg.runtime.device == "cuda":
        raise ConfigError("runtime.device=cuda but this trial was given no GPU; pass "
                          "--gpus-per-trial (e.g. 1 or 0.25) or use runtime.device=auto")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return cfg.with_overrides({"runtime.device": "cpu"})
