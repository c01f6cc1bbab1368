"""``StudySettings``: what ``extune study`` takes, and the presets of its base config.

docs/study.md describes every setting; what a setting changes in the numbers is recorded in the
study's ``results.json`` so that its report never reads today's defaults.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from extune.defaults import SEARCH, STUDY
from extune.search import SearchSettings, TrialPlace, check_name, parse_objectives, require
from extune.train.config import Config
from extune.train.methods import METHODS

__all__ = ["StudySettings", "QUICK_STUDY", "STUDY_BASE", "DEFAULT_METHODS", "DEFAULT_MARGINS",
           "DEFAULT_PROTOCOLS", "CORRECTIONS", "TESTS", "MIN_EXPLAIN_SAMPLES"]

DEFAULT_METHODS = tuple(METHODS)
"""Every registered method, in registration order (``ce, supcon, excon, edda,
random_occlusion``): the methods a study compares by default, in the report's order."""

STUDY_BASE: dict[str, Any] = {
    "data.train_size": 3000,
    "data.image_size": 32,
    "model.backbone": "tiny_cnn",
    "optim.epochs": 4,
    "eval.explain_samples": 64,
    "eval.grid_images": 8,
}
"""Base overrides of a study started without ``--config``: five methods' searches must stay
affordable on a CPU."""

QUICK_STUDY: dict[str, Any] = {
    "data.train_size": 400,
    "data.test_size": 200,
    "data.image_size": 16,
    "model.backbone": "tiny_cnn",
    "optim.epochs": 1,
    "optim.batch_size": 64,
    "eval.explain_samples": 32,
    "eval.deletion_steps": 4,
    "eval.grid_images": 4,
}
"""Base overrides of ``--quick``: a smoke test of every method in a few minutes on a 2-core CPU
(2 trials per search, 2 seeds of 2 epochs); numbers that show the tool works, not the methods."""

MIN_EXPLAIN_SAMPLES = 500
"""Test images of every final run's explanation metrics (all of them where the split has
fewer): fewer images make the metrics' own sampling noise a visible share of a difference."""

DEFAULT_MARGINS: dict[str, float] = {
    "accuracy": 0.02, "shift_accuracy": 0.02, "fgsm_accuracy": 0.02, "ece": 0.01,
    "shift_ece": 0.01, "alignment": 0.02, "avg_drop": 0.02, "increase_confidence": 0.02,
    "deletion_auc": 0.02, "insertion_auc": 0.02, "pointing_game": 0.02,
    "saliency_in_mask": 0.02,
    # the explanation audit: 2% of a correlation's range [-1, 1], of the Gini index's [0, 1),
    # a relative change of 0.02 of the map, 20 pixels (2% of a 32 px image)
    "randomisation_similarity": 0.04, "random_logit_similarity": 0.04,
    "faithfulness_correlation": 0.04, "max_sensitivity": 0.02, "avg_sensitivity": 0.02,
    "sparseness": 0.02, "effective_complexity": 20.0,
}
"""Equivalence margins: a difference within ``±margin`` counts as none when two one-sided tests
show it (``--margin accuracy=0.01`` changes one)."""

DEFAULT_PROTOCOLS = STUDY.protocols
"""Evaluation protocols of the sensitivity section: ``explainer[:layer]``; ``previous`` is the
stage before the backbone's last (Grad-CAM one stage earlier)."""

CORRECTIONS = ("holm", "bh", "none")
"""Multiplicity corrections across a study's claims: Holm (family-wise error, the default),
Benjamini-Hochberg (false discovery rate), none."""

TESTS = ("welch", "permutation", "paired")
"""How two methods' seeds are compared: Welch's unpaired t test (default), an exact
permutation test of the mean difference (unpaired), or a paired t test by seed index."""


@dataclass
class StudySettings(TrialPlace):
    """What ``extune study`` takes, besides where its trials run (:class:`TrialPlace`, as
    ``extune search``).

    Attributes:
        methods: the methods compared (each searched with its built-in space); ``None``: the
            plan file's methods, else every registered method.
        seeds: final runs per method (K); seeds ``runtime.seed + 1 .. + K`` (the searches use
            ``runtime.seed``), the same for every method and control arm.
        final_epochs: epochs of a final run; ``None``: the search epochs.
        trials: trials of each search (a cap when ``budget_epochs`` is set).
        budget_epochs: each search stops once its trials consumed this many trial-epochs (an
            epoch of one trial is one), so that every method consumes the same; ``None``: the
            budget is ``trials``.
        budget_seconds: each search stops once its trials ran this many seconds in all
            (compute-matched budgets: an ExCon epoch costs more than a CE epoch).
        startup_trials: TPE's random start-up trials; ``None``: the search's rule.
        search_seeds: each method's search is repeated with sampler seeds ``seed .. seed + S -
            1``; final run ``i`` trains the config of search ``i mod S``, so the intervals
            include the search's own variance.
        searches_at_once: the method searches run at the same time, each in a driver process
            of its own on the study's Ray (:mod:`extune.study.searches`); ``None``: as many as
            the cluster holds with every search's trials at once (one on a machine that one
            search fills); the same settings, budgets and seeds either way.
        epochs: epochs of a search trial (``optim.epochs`` of the base); ``None``: the base's.
        sampler, seed, scheduler, objective: as ``extune search`` (the same for every method).
        fixed: searched parameters held at a value in every search (``explain.explainer``).
        eval_explainer, eval_layer: the evaluation protocol of every final run's explanation
            metrics (``eval.explainer``, ``eval.layer``; the layer ``None`` is the backbone's
            last stage), whatever each method trained with.
        protocols: the sensitivity section's protocols (:data:`DEFAULT_PROTOCOLS`); ``[]``:
            none.
        test: :data:`TESTS`; correction: :data:`CORRECTIONS`.
        margins: equivalence margins by metric name (over the plan file's, over
            :data:`DEFAULT_MARGINS`).
        plan: a plan file's content (:func:`~extune.study.plan.parse_plan`): the claims
            instead of the built-in ones, margins, ``min_driven_share``, ``controls``.
        min_driven_share: below this share of driven training images a method is "weakly
            tested"; ``None``: the plan file's, else
            :data:`~extune.study.plan.DEFAULT_MIN_DRIVEN_SHARE`.
        controls: train the switched-off arms of the explanation-driven methods; ``None``:
            the plan file's, else yes.
        config, overrides: base config file and ``--set`` overrides; with neither, the study
            base (:data:`STUDY_BASE`).
        quick: the tiny preset (:data:`QUICK_STUDY`, 2 trials, 2 seeds, 2 final epochs) unless
            those are given.
        name: study name; ``None``: ``study-<date>-<time>``.
        confidence: level of the intervals; ``1 - confidence`` is the family-wise error rate.
    """

    methods: list[str] | None = None
    seeds: int = STUDY.seeds
    final_epochs: int | None = None
    trials: int = STUDY.trials
    budget_epochs: int | None = None
    budget_seconds: float | None = None
    startup_trials: int | None = None
    search_seeds: int = STUDY.search_seeds
    searches_at_once: int | None = None
    epochs: int | None = None
    sampler: str = SEARCH.sampler
    seed: int = SEARCH.seed
    scheduler: str = SEARCH.scheduler
    objective: str = SEARCH.objective
    fixed: dict[str, Any] = field(default_factory=dict)
    eval_explainer: str = STUDY.eval_explainer
    eval_layer: str | None = None
    protocols: list[str] = field(default_factory=lambda: list(DEFAULT_PROTOCOLS))
    test: str = STUDY.test
    correction: str = STUDY.correction
    margins: dict[str, float] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    min_driven_share: float | None = None
    controls: bool | None = None
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    quick: bool = False
    name: str | None = None
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if self.methods is None:
            self.methods = _plan_methods(self.plan) if self.plan else list(DEFAULT_METHODS)
        if isinstance(self.protocols, str):
            self.protocols = [p.strip() for p in self.protocols.split(",") if p.strip()]
        self.validate()

    def validate(self) -> None:
        """Check every setting (the searches' own settings are checked when built).

        Raises:
            ConfigError: the first bad setting, in one line.
        """
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"unknown method(s) {', '.join(unknown)} in --methods; use "
               f"{', '.join(METHODS.names())}")
        require(len(self.methods) >= 1 and len(set(self.methods)) == len(self.methods),
               "--methods needs one or more different methods, e.g. ce,excon")
        require(self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}")
        require(self.final_epochs is None or self.final_epochs >= 1,
               f"--final-epochs must be >= 1, got {self.final_epochs}")
        require(self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1, got "
               f"{self.epochs}")
        require(self.budget_epochs is None or self.budget_epochs >= 1,
               f"--budget-epochs must be >= 1, got {self.budget_epochs}")
        require(self.search_seeds >= 1, f"--search-seeds must be >= 1, got {self.search_seeds}")
        require(self.searches_at_once is None or self.searches_at_once >= 1,
               f"--searches-at-once must be >= 1, got {self.searches_at_once}")
        require(self.budget_seconds is None or self.budget_seconds > 0,
               f"--budget-seconds must be > 0, got {self.budget_seconds}")
        require(self.min_driven_share is None or 0 <= self.min_driven_share <= 1,
               f"--min-driven-share must be in [0, 1], got {self.min_driven_share}")
        if self.plan:
            outside = [f"{c['a']} vs {c['b']}" for c in self.plan["claims"]
                       if c["a"] not in self.methods or c["b"] not in self.methods]
            require(not outside, f"the plan's claim {outside[0] if outside else ''} names a "
                   f"method not in --methods ({','.join(self.methods)}); add it or leave "
                   "--methods out (the plan's methods)")
        require(0.5 <= self.confidence < 1, "the confidence level must be in [0.5, 1)")
        require(self.test in TESTS, f"unknown --test '{self.test}'; use {', '.join(TESTS)}")
        require(self.correction in CORRECTIONS, f"unknown --correction '{self.correction}'; "
               f"use {', '.join(CORRECTIONS)}")
        bad = [k for k, v in self.margins.items()
               if k not in DEFAULT_MARGINS or not isinstance(v, (int, float)) or v <= 0]
        require(not bad, f"--margin {', '.join(bad)}: give METRIC=VALUE with VALUE > 0 and "
               f"METRIC one of {', '.join(DEFAULT_MARGINS)}")
        require(len(parse_objectives(self.objective)) == 1,
               "a study selects each method's config on one objective, e.g. accuracy")
        if self.name is not None:
            check_name(self.name)
        from extune.study.protocols import parse_protocol  # the explainer registry: torch

        for text in self.protocols:
            parse_protocol(text)
        for method in self.methods:  # bad trials, sampler, objective... fail before anything
            self.search_settings(method, 0, out=".", parent_run=None, study_id="")

    # ------------------------------------------------------------------ derived
    def base_config(self) -> Config:
        """The config every search starts from."""
        if self.config is not None:
            base = Config.load(self.config)
        else:
            base = Config().with_overrides(QUICK_STUDY if self.quick else STUDY_BASE)
        base = base.with_overrides(self.overrides)
        if self.epochs is not None:
            base = base.with_overrides({"optim.epochs": self.epochs})
        return base

    def resolved_final_epochs(self) -> int:
        return self.final_epochs or self.base_config().optim.epochs

    def final_config(self, chosen: Config, seed: int) -> Config:
        """A method's chosen config as a final run trains it: the final epochs, a seed, the
        test split, the study's evaluation protocol on at least :data:`MIN_EXPLAIN_SAMPLES`
        images, the full suite at the end only (the cheap validation metrics every epoch)."""
        epochs = self.resolved_final_epochs()
        return chosen.with_overrides({
            "optim.epochs": epochs, "runtime.seed": seed, "runtime.progress": False,
            "eval.test": True, "eval.per_image": True, "eval.every": epochs,
            "eval.explainer": self.eval_explainer, "eval.layer": self.eval_layer,
            "eval.explain_samples": max(chosen.eval.explain_samples, MIN_EXPLAIN_SAMPLES)})

    def final_seeds(self) -> list[int]:
        base_seed = self.base_config().runtime.seed
        return [base_seed + 1 + i for i in range(self.seeds)]

    def margin(self, metric: str) -> float:
        """The equivalence margin of ``metric``: ``--margin``, else the plan file's, else
        :data:`DEFAULT_MARGINS`."""
        planned = (self.plan or {}).get("margins", {})
        return float(self.margins.get(metric, planned.get(metric, DEFAULT_MARGINS[metric])))

    def resolved_min_driven_share(self) -> float:
        from extune.study.plan import DEFAULT_MIN_DRIVEN_SHARE

        if self.min_driven_share is not None:
            return float(self.min_driven_share)
        return float((self.plan or {}).get("min_driven_share", DEFAULT_MIN_DRIVEN_SHARE))

    def resolved_controls(self) -> bool:
        if self.controls is not None:
            return bool(self.controls)
        return bool((self.plan or {}).get("controls", True))

    def search_name(self, method: str, index: int) -> str:
        """The folder and MLflow name of ``method``'s search number ``index`` (0-based)."""
        return method if index == 0 else f"{method}-search{index + 1}"

    def search_settings(self, method: str, index: int, *, out: str, parent_run: str | None,
                        study_id: str, base_file: str | None = None,
                        held: dict[str, Any] | None = None) -> SearchSettings:
        """Search ``index`` of ``method``: its built-in space and the budget every method
        shares; sampler seed ``seed + index``; ``held``: settings the plan holds for every
        method (key -> value), with ``--fix``."""
        tags = {"extune.study_id": study_id, "extune.stage": "search", "extune.method": method}
        if parent_run:
            tags["mlflow.parentRunId"] = parent_run
        return SearchSettings(
            space=method, config=base_file, trials=self.trials, max_concurrent=self.max_concurrent,
            cpus_per_trial=self.cpus_per_trial, gpus_per_trial=self.gpus_per_trial,
            sampler=self.sampler, seed=self.seed + index, scheduler=self.scheduler,
            objective=[self.objective], address=self.address,
            storage=f"{self.storage.rstrip('/')}/searches" if self.storage else None,
            tracking_uri=self.tracking_uri, experiment=self.experiment,
            name=self.search_name(method, index), out=out, live=self.live,
            fixed={**(held or {}), **self.fixed}, start_at_base=False, run_tags=tags,
            epoch_budget=self.budget_epochs, seconds_budget=self.budget_seconds,
            startup_trials=self.startup_trials)

    def resolved_name(self) -> str:
        return self.name or f"study-{time.strftime('%Y%m%d-%H%M%S')}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def preset(cls, quick: bool, **given: Any) -> StudySettings:
        """Settings from the options given; ``quick`` fills in the tiny budget's defaults."""
        if quick:
            given = {"trials": STUDY.quick_trials, "seeds": STUDY.quick_seeds,
                     "final_epochs": STUDY.quick_final_epochs, **given}
        return cls(quick=quick, **given)


def _plan_methods(plan: dict[str, Any]) -> list[str]:
    """The methods of a plan's claims, in registration order."""
    named = {m for c in plan["claims"] for m in (c["a"], c["b"])}
    return [m for m, _ in METHODS.items() if m in named]
