"""``run_study``: a fair, seeded comparison of methods (DESIGN.md, Study).

For each method: a search of its built-in space with the same budget (trials, epochs,
scheduler, sampler and seed), selected on the validation split; then every method's chosen
config is retrained with K seeds at the final epoch count, as Ray trials of one Tune experiment
(a cluster runs them in parallel), and evaluated on the test split; then the report
(:mod:`extune.search.study_report`).

.. code-block:: text

    <out>/<name>/
      study.json           settings, study id, MLflow parent run, status, stage times
      base_config.yaml     the config every search starts from
      searches/<method>/   one search folder per method (as ``extune search`` writes)
      final/configs/<method>.yaml   the config each final run of a method trains
      final/trials/        Ray Tune's experiment of the final runs (unless --storage)
      final/runs.json      every final run: method, seed, state, metrics
      report.md, results.json, plots/*.png

Everything is resumable: a finished search is read, an unfinished one resumed; the final runs'
Tune experiment is restored, so nothing is trained twice. MLflow: one parent run for the study
(``extune.role=study``) whose children are the searches' parent runs (``extune.stage=search``)
and the final runs (``extune.stage=final``), all tagged with ``extune.method``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from extune.errors import ConfigError
from extune.search.settings import (
    SearchSettings,
    check_name,
    parse_objectives,
    require,
)
from extune.search.store import SearchDir, chosen_trial
from extune.search.writer import bounded_http_client
from extune.train.config import Config
from extune.train.methods import METHODS

__all__ = ["StudySettings", "StudyDir", "StudyResult", "run_study", "chosen_trial",
           "QUICK_STUDY", "STUDY_BASE", "DEFAULT_METHODS"]

DEFAULT_METHODS = tuple(METHODS)
"""Every registered method, in registration order (``ce, supcon, excon, edda,
random_occlusion``): the methods a study compares by default, in the report's order."""
STUDY_META = "study.json"

STUDY_BASE: dict[str, Any] = {
    "data.train_size": 3000,
    "data.image_size": 32,
    "model.backbone": "tiny_cnn",
    "optim.epochs": 4,
    "eval.explain_samples": 64,
    "eval.grid_images": 8,
}
"""Base overrides of a study started without ``--config`` (the searches' former quick base,
kept for studies: five methods' searches must stay affordable, and docs/results.md used it)."""

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
"""Base overrides of ``--quick``: a study of every method in a minute or two on a 2-core CPU
(2 trials per search, 2 seeds of 2 epochs); numbers that show the tool works, not the methods."""


@dataclass
class StudySettings:
    """What ``extune study`` takes.

    Attributes:
        methods: the methods compared (each searched with its built-in space).
        seeds: final runs per method (K); seeds ``runtime.seed + 1 .. + K`` (the searches use
            ``runtime.seed``), the same for every method so that differences pair by seed.
        final_epochs: epochs of a final run; ``None``: the search epochs.
        trials: trials of each method's search (the same budget for every method).
        epochs: epochs of a search trial (``optim.epochs`` of the base); ``None``: the base's.
        sampler, seed, scheduler, objective: as ``extune search`` (the same for every method).
        fixed: searched parameters held at a value in every search (``explain.explainer``).
        eval_explainer: explainer of the explanation metrics of every final run, so that
            methods trained with different explainers are measured alike; ``None``: the base
            config's ``explain.explainer``.
        config, overrides: base config file and ``--set`` overrides; with neither, the quick
            study base (:data:`STUDY_BASE`).
        quick: the tiny preset (:data:`QUICK_STUDY`, 2 trials, 2 seeds, 2 final epochs) unless
            those are given.
        cpus_per_trial, gpus_per_trial, max_concurrent, address, storage, tracking_uri,
        experiment, out, live: as ``extune search``.
        name: study name; ``None``: ``study-<date>-<time>``.
        confidence: level of the intervals.
    """

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: int = 3
    final_epochs: int | None = None
    trials: int = 8
    epochs: int | None = None
    sampler: str = "tpe"
    seed: int = 0
    scheduler: str = "auto"
    objective: str = "accuracy"
    fixed: dict[str, Any] = field(default_factory=dict)
    eval_explainer: str | None = None
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    quick: bool = False
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    address: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    experiment: str = "extune"
    name: str | None = None
    out: str = "runs"
    live: bool = True
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
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
        require(0.5 <= self.confidence < 1, "the confidence level must be in [0.5, 1)")
        require(len(parse_objectives(self.objective)) == 1,
               "a study selects each method's config on one objective, e.g. accuracy")
        if self.name is not None:
            check_name(self.name)
        for method in self.methods:  # bad trials, sampler, objective... fail before anything
            self.search_settings(method, out=".", parent_run=None, study_id="")

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

    def final_config(self, best: Config, seed: int) -> Config:
        """A method's chosen config as a final run trains it: the final epochs, a seed, the
        test split, the common evaluation explainer, validation metrics at the end only."""
        epochs = self.final_epochs or best.optim.epochs
        return best.with_overrides({
            "optim.epochs": epochs, "runtime.seed": seed, "runtime.progress": False,
            "eval.test": True, "eval.every": epochs,
            "eval.explainer": self.eval_explainer or self.base_config().explain.explainer})

    def final_seeds(self) -> list[int]:
        base_seed = self.base_config().runtime.seed
        return [base_seed + 1 + i for i in range(self.seeds)]

    def search_settings(self, method: str, *, out: str, parent_run: str | None,
                        study_id: str, base_file: str | None = None) -> SearchSettings:
        """The search of ``method``: its built-in space and the budget every method shares."""
        tags = {"extune.study_id": study_id, "extune.stage": "search", "extune.method": method}
        if parent_run:
            tags["mlflow.parentRunId"] = parent_run
        return SearchSettings(
            space=method, config=base_file, trials=self.trials, max_concurrent=self.max_concurrent,
            cpus_per_trial=self.cpus_per_trial, gpus_per_trial=self.gpus_per_trial,
            sampler=self.sampler, seed=self.seed, scheduler=self.scheduler,
            objective=[self.objective], address=self.address,
            storage=f"{self.storage.rstrip('/')}/searches" if self.storage else None,
            tracking_uri=self.tracking_uri, experiment=self.experiment, name=method, out=out,
            live=self.live, fixed=dict(self.fixed), start_at_base=False, run_tags=tags)

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
            given = {"trials": 2, "seeds": 2, "final_epochs": 2, **given}
        return cls(quick=quick, **given)


@dataclass
class StudyDir:
    """A study folder and its ``study.json``."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def create(cls, settings: StudySettings) -> StudyDir:
        """Make ``<out>/<name>`` with the settings and the base config.

        Raises:
            ConfigError: the folder already holds a study (use ``--resume``).
        """
        name = settings.resolved_name()
        path = (Path(settings.out) / name).resolve()
        if (path / STUDY_META).exists():
            raise ConfigError(f"{path} already holds a study; pass --resume {path} to continue "
                              "it or choose another --name")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the study folder {path}: {e.strerror}") from None
        settings.base_config().save(path / "base_config.yaml")
        meta = {"name": name, "study_id": uuid.uuid4().hex,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "status": "created",
                "settings": settings.to_dict(), "stage_seconds": {}}
        found = cls(path, meta)
        found.save()
        return found

    @classmethod
    def load(cls, path: str | Path) -> StudyDir:
        """Open an existing study folder.

        Raises:
            ConfigError: no readable ``study.json`` there.
        """
        path = Path(path).resolve()
        try:
            meta = json.loads((path / STUDY_META).read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{path} is not a study folder (no readable {STUDY_META}); pass "
                              "the folder `extune study` printed") from None
        return cls(path, meta)

    def save(self) -> None:
        (self.path / STUDY_META).write_text(json.dumps(self.meta, indent=2, default=str))

    def update(self, **values: Any) -> None:
        self.meta.update(values)
        self.save()

    def add_seconds(self, stage: str, seconds: float) -> None:
        times = self.meta.setdefault("stage_seconds", {})
        times[stage] = times.get(stage, 0.0) + seconds
        self.save()

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def study_id(self) -> str:
        return self.meta["study_id"]

    @property
    def settings(self) -> StudySettings:
        return StudySettings.from_dict(self.meta["settings"])

    @property
    def base_file(self) -> Path:
        return self.path / "base_config.yaml"

    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    def search_dir(self, method: str) -> Path:
        return self.path / "searches" / method

    def final_experiment_path(self) -> str:
        storage = self.settings.storage
        if storage:
            from extune.search.store import storage_root

            return f"{storage_root(storage)}/{self.name}/final"
        return str(self.final_dir / "trials")


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


def run_study(settings: StudySettings | None = None, *,
              resume: str | Path | None = None) -> StudyResult:
    """Run a study (or finish an interrupted one): searches, final runs, report.

    Raises:
        ExtuneError: bad settings or spaces, unreachable Ray cluster or tracking server,
            missing data.
    """
    import ray

    from extune.search.services import (
        check_tracking_uri,
        connect_ray,
        quiet_ray_env,
        resolve_tracking_uri,
    )
    from extune.search.study_final import run_final_stage
    from extune.search.study_report import write_report

    start = time.time()
    quiet_ray_env()
    bounded_http_client()
    console = Console()
    if resume is not None:
        sdir = StudyDir.load(resume)
        settings = sdir.settings
    else:
        settings = settings or StudySettings()
        _validate_spaces(settings)
    uri = resolve_tracking_uri(settings.tracking_uri)
    check_tracking_uri(uri)
    if resume is None:
        sdir = StudyDir.create(settings)
    tracker = _study_tracker(sdir, uri)
    started = connect_ray(settings.address)
    try:
        sdir.update(status="running")
        best = {}
        for i, method in enumerate(settings.methods, 1):
            console.print(f"study {sdir.name}: search {i}/{len(settings.methods)}: {method}",
                          highlight=False, markup=False)
            best[method] = _search_stage(sdir, method, tracker.parent_run())
        console.print(f"study {sdir.name}: final runs ({len(best)} methods x "
                      f"{settings.seeds} seeds)", highlight=False, markup=False)
        t0 = time.time()
        runs = run_final_stage(sdir, best, tracker)
        sdir.add_seconds("final", time.time() - t0)
        if any(r["state"] in ("unfinished", "missing") for r in runs):
            raise KeyboardInterrupt  # Ctrl-C during the final runs: resume trains the rest
        results, files = write_report(sdir, runs, best)
        _log_study(tracker, results, files)
        incomplete = any(r["state"] != "complete" for r in runs)
        sdir.update(status="finished" if not incomplete else "finished with failures")
        tracker.end(tracker.parent_run(), "FINISHED")
    except BaseException:
        sdir.update(status="interrupted")
        tracker.end(tracker.parent_run(), "KILLED")
        raise
    finally:
        if started:
            ray.shutdown()
    return StudyResult(sdir.name, sdir.path, files, results, tracker.parent_run(), uri,
                       time.time() - start)


def _validate_spaces(settings: StudySettings) -> None:
    """Every method's space against the base, and the final runs' settings (``--eval-explainer``),
    before any folder or run exists."""
    from extune.spaces import get_space, validate_space
    from extune.train.validate import validate_config

    base = settings.base_config()
    validate_config(settings.final_config(base, settings.final_seeds()[0]))
    for method in settings.methods:
        validate_space(get_space(method), base, name=method, seed=settings.seed)


def _study_tracker(sdir: StudyDir, uri: str) -> Any:
    from extune.search.tracking import MlflowTracker

    s = sdir.settings
    tracker = MlflowTracker(uri, s.experiment, sdir.study_id, sdir.name, role="study",
                            tags={"extune.study_id": sdir.study_id})
    tracker.check()
    params = {"methods": ",".join(s.methods), "seeds": s.seeds, "final_seeds":
              ",".join(map(str, s.final_seeds())), "trials_per_method": s.trials,
              "search_epochs": s.base_config().optim.epochs,
              "final_epochs": s.final_epochs or s.base_config().optim.epochs,
              "sampler": s.sampler, "seed": s.seed, "scheduler": s.scheduler,
              "objective": s.objective, "fixed": json.dumps(s.fixed) if s.fixed else "none",
              "eval_explainer": s.eval_explainer or s.base_config().explain.explainer,
              "data": s.base_config().data.name, "study_dir": str(sdir.path)}
    run_id = tracker.parent_run(params=params)
    if sdir.meta.get("parent_run_id") != run_id:
        sdir.update(parent_run_id=run_id, tracking_uri=uri)
        tracker.log_artifact(run_id, sdir.base_file)
    return tracker


def _search_stage(sdir: StudyDir, method: str, parent_run: str) -> dict[str, Any]:
    """Run (or finish, or read) the search of ``method``; returns its chosen trial.

    Returns:
        ``{"config": Path of best_config.yaml or None, "trial": name, "value": objective,
        "counts": {state: n}, "search_dir": str, "parent_run_id": str}``.
    """
    from extune.search.tuner import run_search

    folder = sdir.search_dir(method)
    t0 = time.time()
    result = None
    if (folder / "search.json").is_file():
        if SearchDir.load(folder).meta.get("status") != "finished":
            result = run_search(resume=folder)
    else:
        settings = sdir.settings.search_settings(
            method, out=str(folder.parent), parent_run=parent_run, study_id=sdir.study_id,
            base_file=str(sdir.base_file))
        result = run_search(settings)
    sdir.add_seconds(f"search/{method}", time.time() - t0)
    if result is not None and result.interrupted:  # Ctrl-C: Tune returns, the study stops
        raise KeyboardInterrupt
    return chosen_trial(SearchDir.load(folder))


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
    verdicts = {f"extune.claim.{c['a']}-{c['b']}.{c['metric']}": c["verdict"]
                for c in results["comparisons"]}
    tracker.set_tags(parent, verdicts)
