"""``SearchSettings``: everything ``extune search`` takes, validated before Ray starts."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extune.defaults import SEARCH
from extune.errors import ConfigError
from extune.evaluate.objectives import OBJECTIVES, Objective, parse_objectives
from extune.tracking.store import resolve_tracking_uri
from extune.train.config import Config

__all__ = [
    "SearchSettings",
    "TrialPlace",
    "Objective",
    "OBJECTIVES",
    "SAMPLERS",
    "SCHEDULERS",
    "FULL_EVAL",
    "QUICK_BASE",
    "QUICK_FIXED",
    "parse_objectives",
    "make_sampler",
    "default_startup_trials",
    "absolute_data_paths",
    "GIVEN_KEYS",
]

SAMPLERS = ("tpe", "random", "cmaes", "nsga2", "qmc")
SCHEDULERS = ("auto", "asha", "none")
FULL_EVAL = ("end", "milestones", "every")
"""When a trial runs the full evaluation suite (``--full-eval``); the objectives run every
epoch whatever the choice."""

QUICK_BASE: dict[str, Any] = {
    "optim.epochs": 3,
    "eval.explain_samples": 64,
    "eval.grid_images": 8,
}
"""Base overrides of a search started without ``--config``: ``extune train``'s defaults
(resnet_mini, 6000 synthetic images) for 3 epochs, so that the exported config is one worth
training (a smaller base finds configs worse than ``extune train``'s default); see
docs/performance.md for its wall time."""

QUICK_FIXED: dict[str, Any] = {"explain.explainer": "gradcam"}
"""Held fixed in a search of a built-in space started without ``--config`` (unless ``--fix``
says otherwise):
Grad-CAM costs ExCon one gradient to one layer, where integrated gradients cost ``steps``
forwards and backwards per batch and would make single trials of the quick search take
longer than the rest together. Its layer is still searched."""


@dataclass
class TrialPlace:
    """Where trials run and where their records go: what a search and a study share (each
    study search gets its study's).

    Attributes:
        cpus_per_trial, gpus_per_trial: Ray resources of one trial (GPUs may be fractional);
            ``gpus_per_trial=None``: one GPU per trial where the cluster has GPUs, else none
            (:mod:`extune.search.engine.resources`).
        max_concurrent: trials running at once; ``None``: as many as the Ray cluster's CPUs
            and GPUs hold (``CPUs // cpus_per_trial``, ``GPUs // gpus_per_trial``).
        address: Ray cluster to join; ``None`` starts Ray on this machine.
        storage: Ray storage for trial results/checkpoints (shared path or bucket URI);
            ``None``: inside the search folder.
        tracking_uri: MLflow tracking URI; ``None``:
            :data:`~extune.defaults.DEFAULT_TRACKING_URI` (``mlflow.db`` in the working
            folder).
        experiment: MLflow experiment name.
        out: folder that holds the search (or study) folder (``<out>/<name>``).
        live: show the live table (else one line per finished trial).
    """

    cpus_per_trial: float = SEARCH.cpus_per_trial
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    address: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    experiment: str = SEARCH.experiment
    out: str = SEARCH.out
    live: bool = True


@dataclass
class SearchSettings(TrialPlace):
    """The settings of one search (what ``extune search`` takes), besides where its trials run
    (:class:`TrialPlace`).

    Attributes:
        space: a built-in space name (``excon``, ``edda``, ``random_occlusion``, ``supcon``,
            ``ce``) or a YAML path.
        config: base config YAML; ``None``: defaults with :data:`QUICK_BASE` (a quick search).
        overrides: dotted-key overrides of the base (``--set``).
        trials: number of trials.
        time_budget_s: stop the whole search after this many seconds.
        epoch_budget: stop the whole search once its trials trained this many epochs in all
            (:class:`~extune.search.engine.budget.EpochBudget`); ``trials`` is then a cap.
        seconds_budget: stop the whole search once its trials ran this many seconds in all
            (:class:`~extune.search.engine.budget.SecondsBudget`: compute, not wall time).
        sampler: ``tpe`` (default), ``random``, ``cmaes``, ``nsga2`` or ``qmc``; seeded.
        startup_trials: TPE's random start-up trials; ``None``:
            :func:`default_startup_trials` of ``trials``.
        seed: sampler seed.
        scheduler: ``asha`` (early stopping on the first objective), ``none``, or ``auto``:
            ASHA with one objective, none with several (ASHA ranks trials by the first objective
            only, so it would pre-filter the Pareto front toward it).
        objective: objective names (see :data:`OBJECTIVES`); several give a Pareto front.
        max_failures: retries of a failing trial from its last checkpoint.
        name: search name; ``None``: ``<space>-<date>-<time>``.
        reduction_factor, grace_period: ASHA settings (``grace_period`` in epochs).
        full_eval: when a trial runs the full evaluation suite (corruptions, FGSM,
            explanation metrics); its objectives are evaluated after every epoch in any case.
            ``end``: after its last epoch only; ``milestones``: also at the ASHA milestones
            (grace period x reduction factor^k); ``every``: as its config's ``eval.every`` says.
        fixed: searched parameters held at a value (dotted key -> value): the space still asks
            for them and is answered with the value (``HeldSpace``, in or out of the space's
            range); its conditional parameters follow (``explain.explainer=gradcam`` searches
            only Grad-CAM's layer).
        log_checkpoints: log each trial's final checkpoint to its MLflow run (large: off by
            default; the checkpoints stay in the Ray storage either way).
        start_at_base: the first trial is the base config itself (the space's parameters at
            the base's values, :func:`extune.spaces.base_point`; skipped where the base lies
            outside the space), so the search never exports a config worse than its base.
        run_tags: more tags of the search's MLflow parent run (a study nests its searches under
            its own run with ``mlflow.parentRunId``).
    """

    space: str = SEARCH.space
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    trials: int = SEARCH.trials
    time_budget_s: float | None = None
    epoch_budget: int | None = None
    seconds_budget: float | None = None
    sampler: str = SEARCH.sampler
    startup_trials: int | None = None
    seed: int = SEARCH.seed
    scheduler: str = SEARCH.scheduler
    objective: list[str] = field(default_factory=lambda: [SEARCH.objective])
    max_failures: int = SEARCH.max_failures
    name: str | None = None
    reduction_factor: float = 3.0
    grace_period: int = 1
    full_eval: str = SEARCH.full_eval
    fixed: dict[str, Any] = field(default_factory=dict)
    log_checkpoints: bool = False
    start_at_base: bool = True
    run_tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.objective, str):
            self.objective = [o.strip() for o in self.objective.split(",") if o.strip()]
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every setting.

        Raises:
            ConfigError: the first bad setting, in one line.
        """
        require(self.trials >= 1, f"--trials must be >= 1, got {self.trials}")
        require(self.trials <= TRIALS_MAX, f"--trials must be <= {TRIALS_MAX}, got "
                f"{self.trials}")
        require(0 <= self.seed <= SAMPLER_SEED_MAX, f"--seed must be in [0, "
                f"{SAMPLER_SEED_MAX}] (Optuna's samplers take 32-bit seeds), got {self.seed}")
        require(self.max_concurrent is None or self.max_concurrent >= 1,
               f"--max-concurrent must be >= 1, got {self.max_concurrent}")
        require(self.cpus_per_trial > 0, f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        require(self.gpus_per_trial is None or self.gpus_per_trial >= 0,
               f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        require(self.time_budget_s is None or self.time_budget_s > 0,
               f"--time-budget must be > 0 seconds, got {self.time_budget_s}")
        require(self.epoch_budget is None or self.epoch_budget >= 1,
               f"the epoch budget must be >= 1 trial-epoch, got {self.epoch_budget}")
        require(self.seconds_budget is None or self.seconds_budget > 0,
               f"the seconds budget must be > 0 trial-seconds, got {self.seconds_budget}")
        require(self.startup_trials is None or self.startup_trials >= 1,
               f"--startup-trials must be >= 1, got {self.startup_trials}")
        require(self.sampler in SAMPLERS, f"unknown sampler '{self.sampler}'; use one of "
               f"{', '.join(SAMPLERS)}")
        require(self.scheduler in SCHEDULERS, f"unknown scheduler '{self.scheduler}'; use auto, "
               "asha or none")
        require(self.max_failures >= 0, f"--max-failures must be >= 0, got {self.max_failures}")
        require(self.reduction_factor > 1, "the ASHA reduction factor must be > 1")
        require(self.grace_period >= 1, "the ASHA grace period must be >= 1 epoch")
        require(self.full_eval in FULL_EVAL, f"unknown --full-eval '{self.full_eval}'; use "
               f"{', '.join(FULL_EVAL)}")
        from extune.train.validate import validate_config  # imports the registries (torch)

        bad = [k for k in self.fixed if k not in Config.keys()]
        require(not bad, f"--fix names unknown config key(s) {', '.join(bad)}")
        validate_config(Config().with_overrides(self.fixed))  # bad types, ranges, names
        objectives = parse_objectives(self.objective)
        require(not (self.sampler == "cmaes" and len(objectives) > 1),
               "the cmaes sampler optimises one objective; use tpe or nsga2 for several")
        if self.name is not None:
            check_name(self.name)

    @property
    def objectives(self) -> list[Objective]:
        return parse_objectives(self.objective)

    @property
    def resolved_fixed(self) -> dict[str, Any]:
        """``fixed``, plus :data:`QUICK_FIXED` for a built-in space on the quick base (no
        ``--config``); a YAML space is searched as it is written."""
        quick = self.config is None and not self.space.endswith((".yaml", ".yml"))
        return {**QUICK_FIXED, **self.fixed} if quick else dict(self.fixed)

    @property
    def resolved_scheduler(self) -> str:
        """``asha`` or ``none`` (``auto``: ASHA for one objective, none for several)."""
        if self.scheduler != "auto":
            return self.scheduler
        return "asha" if len(self.objectives) == 1 else "none"

    def scheduler_text(self) -> str:
        """The early-stopping rule in words (the search's first line)."""
        if self.resolved_scheduler == "none":
            why = " (several objectives: no early stopping, so the Pareto front is not biased)" \
                if self.scheduler == "auto" else ""
            return f"no early stopping{why}"
        first = self.objectives[0].metric
        bias = "; it ranks by the first objective only" if len(self.objectives) > 1 else ""
        return (f"ASHA on {first} (grace {self.grace_period} epoch, reduction "
                f"{self.reduction_factor:g}){bias}")

    # ------------------------------------------------------------------ derived
    def full_epochs(self, max_epochs: int) -> tuple[int, ...] | None:
        """Epochs (1-based) after which a trial runs the full suite besides its last
        (``fit(full_epochs=...)``); ``None``: its config's ``eval.every``."""
        if self.full_eval == "every":
            return None
        if self.full_eval == "end" or self.resolved_scheduler != "asha":
            return ()
        rungs, t = [], float(min(self.grace_period, max_epochs))
        while t < max_epochs:  # ASHA's milestones: grace * rf^k below max_t
            rungs.append(round(t))
            t *= self.reduction_factor
        return tuple(rungs)

    def given_config(self) -> Config:
        """The base config as the user gave it: the file (or the quick defaults), then the
        overrides; data paths as written, ``runtime.progress`` as set."""
        if self.config is not None:
            base = Config.load(self.config)
        else:
            base = Config().with_overrides(QUICK_BASE)
        return base.with_overrides(self.overrides)

    def base_config(self) -> Config:
        """The config every trial starts from: :meth:`given_config` with the data paths made
        absolute (see :func:`absolute_data_paths`) and no progress bar (the keys of
        :data:`GIVEN_KEYS`)."""
        return absolute_data_paths(self.given_config().with_overrides(
            {"runtime.progress": False}))

    def resolved_name(self) -> str:
        if self.name:
            return self.name
        stem = Path(self.space).stem if self.space.endswith((".yaml", ".yml")) else self.space
        stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", stem)
        return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"

    def resolved_tracking_uri(self) -> str:
        """The tracking URI with a relative SQLite path made absolute (resume from anywhere):
        :func:`extune.search.connections.resolve_tracking_uri`."""
        return resolve_tracking_uri(self.tracking_uri)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


TRIALS_MAX = 100_000
"""Most trials of one search: a bound of typing mistakes (Ray Tune keeps every trial in the
driver's memory, about 0.3 MB each: docs/reliability.md, "Load")."""

SAMPLER_SEED_MAX = 2**32 - 1
"""Largest ``--seed``: Optuna's samplers seed NumPy's legacy generator, which takes 32 bits."""

GIVEN_KEYS = ("data.root", "data.cache_dir", "runtime.progress")
"""The keys a search's base config changes for its trials (:meth:`SearchSettings.base_config`);
the search folder keeps them as given, so that an export writes them back as the user would."""


def absolute_data_paths(cfg: Config) -> Config:
    """``data.root`` and ``data.cache_dir`` resolved against the folder the search starts in.

    A trial whose space changes a ``data.*`` key loads its own data inside the folder Ray
    switched into, where ``./data`` means something else; a resumed search may start elsewhere.
    """
    data = cfg.data
    paths = {"data.root": str(Path(data.root).expanduser().resolve())}
    if data.cache_dir:
        paths["data.cache_dir"] = str(Path(data.cache_dir).expanduser().resolve())
    return cfg.with_overrides(paths)


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok`` (one bad setting, one line)."""
    if not ok:
        raise ConfigError(message)


NAME_MAX = 100
"""Longest search or study name: folder names of the trials and studies append to it."""


def check_name(name: str) -> None:
    """A search or study name is also a folder name and an MLflow run name.

    Raises:
        ConfigError: characters other than letters, digits, ``.``, ``_`` and ``-``.
    """
    require(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name)),
            f"--name '{name}' may only use letters, digits, '.', '_' and '-'")
    require(len(name) <= NAME_MAX, f"--name has {len(name)} characters; use at most {NAME_MAX} "
            "(it names a folder and an MLflow run)")


def default_startup_trials(trials: int) -> int:
    """TPE's random start-up trials for a search of ``trials``: ``max(2, min(10, trials //
    4))`` (Optuna's default of 10 would leave a small search purely random)."""
    return max(2, min(10, trials // 4))


def make_sampler(name: str, seed: int, trials: int, n_objectives: int,
                 startup_trials: int | None = None) -> Any:
    """An Optuna sampler by name, seeded (held parameters never reach it: see
    :class:`extune.search.engine.held_settings.HeldSpace`).

    TPE starts from ``startup_trials`` random trials (default :func:`default_startup_trials`),
    models parameters jointly (``multivariate``, ``group`` for conditional spaces) and uses the
    constant-liar strategy so that concurrent trials do not all get the same suggestion.

    Raises:
        ConfigError: a sampler whose package is missing (``cmaes``).
    """
    import warnings

    import optuna

    with warnings.catch_warnings():  # several options are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(optuna.samplers, name, seed, trials, startup_trials)


def _sampler(samplers: Any, name: str, seed: int, trials: int,
             startup_trials: int | None = None) -> Any:
    if name == "tpe":
        startup = startup_trials or default_startup_trials(trials)
        return samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                   multivariate=True, group=True, constant_liar=True)
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return samplers.QMCSampler(seed=seed, scramble=True, warn_asynchronous_seeding=False)
    if name == "nsga2":
        return samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 2)))
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError("the cmaes sampler needs the 'cmaes' package: pip install cmaes"
                              ) from None
        return samplers.CmaEsSampler(seed=seed)
    raise ConfigError(f"unknown sampler '{name}'; use one of {', '.join(SAMPLERS)}")
