"""Re-score the final runs' saved checkpoints under other evaluation protocols (no retraining).

A verdict about explanations depends on how they are scored: the explainer, and for Grad-CAM
the layer. The sensitivity section of a study's report takes each final run's checkpoint, scores
its explanation metrics on the same test images under every protocol of ``protocols``
(:data:`~extune.study.settings.DEFAULT_PROTOCOLS`) and says, per claim, whether the verdict
is the same under all of them. Scores are kept in ``final/sensitivity.json`` by checkpoint and
protocol, and their per-image values in ``final/sensitivity/`` (the report resamples the test
images under every protocol alike), so a resumed study or a rewritten report scores nothing
twice.

The audit stage (:func:`audit_stage`) does the same for the explanation audit
(:mod:`extune.evaluate.audit`): every audit metric under the main protocol (the final runs'
own, where their test evaluation measured them; else re-scored) and the randomisation test
under every other protocol, kept in ``final/audit.json`` and ``final/audit/``. The report
gives no verdict to the explanation rows of a protocol whose explainer fails the randomisation
test on the study's models.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extune.files import atomic_write_text
from extune.study.protocols import Protocol, main_protocol, parse_protocol
from extune.train.progress import QuietClock

__all__ = ["rescore_stage", "audit_stage", "randomisation_test", "SENSITIVITY_FILE",
           "AUDIT_FILE"]

SENSITIVITY_FILE = "sensitivity.json"
AUDIT_FILE = "audit.json"
AUDIT_FOLDER = "audit"
"""``final/audit/``: the per-image scores of the checkpoints the audit stage re-scored."""


def rescore_stage(sdir: Any, runs: list[dict], console: Any = None) -> dict[str, Any]:
    """Score every complete final run under every protocol; returns what the report needs.

    Returns:
        ``{"main": protocol, "protocols": [protocol, ...], "scores": {protocol text: {label:
        {metric: value}}}, "per_image": {protocol text: {label: npz path}}}``; a protocol is
        ``{"text", "explainer", "layer", "steps", "description"}``. The main protocol's scores
        are the final runs' own test metrics (their per-image outputs, their own file).
    """
    base, last_stage, main, others = _protocols(sdir)
    steps = base.eval.steps
    cache_file = sdir.final_dir / SENSITIVITY_FILE
    cache = _read(cache_file)
    complete = [r for r in runs if r["state"] == "complete" and r.get("checkpoint")]
    todo = [(r, p) for p in others for r in complete
            if p.text not in cache.get(r["checkpoint"], {})
            or not _per_image_file(sdir, r, p).is_file()]
    if todo and console is not None:
        console.print(f"study {sdir.name}: scoring {len(complete)} checkpoints under "
                      f"{len(others)} more protocol(s): {', '.join(p.text for p in others)}",
                      highlight=False, markup=False)
    data = _TestData.load(base)
    jobs = [_Job("score", run, protocol, _resolved(protocol, last_stage)[1],
                 _per_image_file(sdir, run, protocol)) for run, protocol in todo]
    for job, metrics in _score_all(sdir, data, jobs, console, f"study {sdir.name}: scored"):
        cache.setdefault(job.run["checkpoint"], {})[job.protocol.text] = metrics
        atomic_write_text(cache_file, json.dumps(cache, indent=2))
    scores = {main.text: {r["label"]: _explanation_metrics(r["metrics"]) for r in complete}}
    per_image = {main.text: {r["label"]: r.get("per_image") for r in complete}}
    for protocol in others:
        scores[protocol.text] = {r["label"]: cache[r["checkpoint"]][protocol.text]
                                 for r in complete}
        per_image[protocol.text] = {r["label"]: str(_per_image_file(sdir, r, protocol))
                                    for r in complete}
    return {"main": _describe(main, last_stage, steps),
            "protocols": [_describe(p, last_stage, steps) for p in (main, *others)],
            "scores": scores, "per_image": per_image, "num_classes": data.num_classes,
            "test_images": len(data.test) if data.test is not None else None,
            "explain_samples": min(base.eval.explain_samples, len(data.test))
            if data.test is not None else base.eval.explain_samples}


def audit_stage(sdir: Any, runs: list[dict], console: Any = None) -> dict[str, Any]:
    """The explanation audit of every complete final run's checkpoint: every audit metric under
    the main protocol (the run's own test metrics where its evaluation measured them, else
    re-scored), the randomisation test under every other protocol; cached by checkpoint and
    protocol in ``final/audit.json``, per-image scores in ``final/audit/``.

    Returns:
        ``{"threshold": float, "protocols": [protocol text, ...], "scores": {protocol text:
        {label: {"test/randomisation_similarity": ..., "test/randomisation_pass": ..., and
        under the main protocol every other audit metric}}}, "per_image": {protocol text:
        {label: npz path (re-scored) or None (the run's own per-image file holds them)}}}``.
    """
    from extune.evaluate.audit import RANDOMISATION_THRESHOLD

    base, last_stage, main, others = _protocols(sdir)
    cache_file = sdir.final_dir / AUDIT_FILE
    cache = _read(cache_file)
    complete = [r for r in runs if r["state"] == "complete" and r.get("checkpoint")]
    own = {r["label"] for r in complete if _has_audit(r["metrics"])}
    todo = [(r, p) for p in (main, *others) for r in complete
            if not (p == main and r["label"] in own)
            and (p.text not in cache.get(r["checkpoint"], {})
                 or not _per_image_file(sdir, r, p, AUDIT_FOLDER).is_file())]
    if todo and console is not None:
        console.print(f"study {sdir.name}: auditing the explainer of {len(complete)} "
                      f"checkpoints under {len({p.text for _, p in todo})} protocol(s)",
                      highlight=False, markup=False)
    jobs = [_Job("audit", run, protocol, _resolved(protocol, last_stage)[1],
                 _per_image_file(sdir, run, protocol, AUDIT_FOLDER), every_metric=protocol == main)
            for run, protocol in todo]
    data = _TestData.load(base) if jobs else None
    for job, metrics in _score_all(sdir, data, jobs, console, f"study {sdir.name}: audited"):
        cache.setdefault(job.run["checkpoint"], {})[job.protocol.text] = metrics
        atomic_write_text(cache_file, json.dumps(cache, indent=2))
    scores: dict[str, dict[str, dict[str, float]]] = {}
    per_image: dict[str, dict[str, str | None]] = {}
    for protocol in (main, *others):
        scores[protocol.text], per_image[protocol.text] = {}, {}
        for r in complete:
            mine = protocol == main and r["label"] in own
            scores[protocol.text][r["label"]] = _audit_metrics(r["metrics"]) if mine \
                else cache[r["checkpoint"]][protocol.text]
            per_image[protocol.text][r["label"]] = None if mine else str(
                _per_image_file(sdir, r, protocol, AUDIT_FOLDER))
    return {"threshold": RANDOMISATION_THRESHOLD, "protocols": [main.text] + [
        p.text for p in others], "scores": scores, "per_image": per_image}


class _Said:
    """Where a long stage stands, one line when the log has been quiet for a while
    (:class:`~extune.train.progress.QuietClock`) while checkpoints are scored."""

    def __init__(self, console: Any, what: str, total: int) -> None:
        self.console, self.what, self.total = console, what, total
        self.quiet = QuietClock()

    def maybe(self, done: int, now: str) -> None:
        if self.console is None or not self.quiet.due():
            return
        self.console.print(f"{self.what} {done} of {self.total}; now {now}", highlight=False,
                           markup=False)
        self.quiet.said()


def _protocols(sdir: Any) -> tuple[Any, str, Protocol, list[Protocol]]:
    """``(the final runs' base config, the backbone's last stage, the main protocol, the other
    protocols)``; a protocol that resolves to the main one is left out."""
    from extune.train.config import Config
    from extune.train.methods import config_model

    settings = sdir.settings
    base = settings.final_config(Config.load(sdir.base_file), settings.final_seeds()[0])
    last_stage = config_model(base, 2).default_layer
    main = main_protocol(settings.eval_explainer, settings.eval_layer)
    others = [p for p in map(parse_protocol, settings.protocols)
              if _resolved(p, last_stage) != _resolved(main, last_stage)]
    return base, last_stage, main, others


def _has_audit(metrics: dict[str, float]) -> bool:
    """Whether a run's own test evaluation measured the audit (its verdict is always a number;
    a metric that was NaN, e.g. the sensitivity of all-zero maps, is not among the metrics)."""
    return "test/randomisation_pass" in metrics


def _audit_metrics(metrics: dict[str, float]) -> dict[str, float]:
    from extune.evaluate.audit import AUDIT_SUMMARY

    names = {f"test/{m}" for m in AUDIT_SUMMARY}
    return {k: v for k, v in metrics.items() if k in names}


def _per_image_file(sdir: Any, run: dict, protocol: Protocol, folder: str = "sensitivity"
                    ) -> Path:
    """``final/<folder>/<label>-<hash>.npz``: a checkpoint's per-image scores under a
    protocol (the hash of both: a resumed study with new runs scores those anew)."""
    digest = hashlib.sha256(f"{run['checkpoint']}|{protocol.text}".encode()).hexdigest()[:10]
    return sdir.final_dir / folder / f"{run['label']}-{digest}.npz"


def _resolved(protocol: Protocol, last_stage: str) -> tuple[str, str | None]:
    return protocol.explainer, protocol.resolved_layer(last_stage)


def _describe(protocol: Protocol, last_stage: str, steps: int) -> dict[str, Any]:
    explainer, layer = _resolved(protocol, last_stage)
    return {"text": protocol.text, "explainer": explainer, "layer": layer,
            "steps": steps if explainer == "integrated_gradients" else None,
            "description": protocol.describe(last_stage, steps)}


def _explanation_metrics(metrics: dict[str, float]) -> dict[str, float]:
    from extune.evaluate.explanations import EXPLANATION_METRICS, LOCALISATION_METRICS

    names = {f"test/{m}" for m in (*EXPLANATION_METRICS, *LOCALISATION_METRICS)}
    return {k: v for k, v in metrics.items() if k in names}


def _read(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class _TestData:
    """The test split of the final runs' data (``ImageSet``) and what scoring it needs; loaded
    once by the study and shipped to every scoring task."""

    test: Any
    mean: Any
    std: Any
    num_classes: int

    @classmethod
    def load(cls, base: Any) -> _TestData:
        from extune.train.data import load_data

        splits = load_data(base.data)
        return cls(splits.test, splits.mean, splits.std, splits.num_classes)


@dataclass
class _Job:
    """One checkpoint scored under one protocol: its explanation metrics (``score``) or its
    explanation audit (``audit``: every metric with ``every_metric``, else the randomisation
    test); the per-image values go to ``per_image_file``."""

    kind: str
    run: dict
    protocol: Protocol
    layer: str | None
    per_image_file: Path
    every_metric: bool = False


def _score_all(sdir: Any, data: _TestData | None, jobs: list[_Job], console: Any, what: str
               ) -> Iterator[tuple[_Job, dict[str, float]]]:
    """Score ``jobs``, yielding each with its metrics as it ends (its per-image file written):
    as Ray tasks where the Ray cluster has GPUs or more nodes than the driver's (each task with
    a trial's CPUs and GPUs; their places recorded in ``study.json`` under ``scored_on``), else
    here one after another (on one CPU machine a task would only add a worker's start and
    imports, 3-4 s each, measured). Ctrl-C cancels the tasks still running (the scores yielded
    are kept)."""
    import ray

    if not jobs:
        return
    said = _Said(console, what, len(jobs))
    if not _elsewhere():
        scorer = _Scorer(data)
        for done, job in enumerate(jobs):
            said.maybe(done, f"{job.run['label']} under {job.protocol.text}")
            metrics, per_image = scorer.run(job)
            _write_per_image(job.per_image_file, per_image)
            yield job, metrics
        return
    task = ray.remote(_scoring_task).options(**_task_resources(sdir.settings, len(jobs)))
    shared = ray.put(data)
    pending = {task.remote(shared, job): job for job in jobs}
    places = sdir.meta.setdefault("scored_on", {}).setdefault(jobs[0].kind, [])
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            said.maybe(len(jobs) - len(pending) - 1, f"{job.run['label']} under "
                       f"{job.protocol.text}")
            metrics, per_image, place = ray.get(ready[0])
            _write_per_image(job.per_image_file, per_image)
            places.append({"label": job.run["label"], "protocol": job.protocol.text, **place})
            sdir.save()
            yield job, metrics
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def _elsewhere() -> bool:
    """Whether the connected Ray cluster has somewhere to score that this process is not:
    GPUs, or nodes besides one."""
    import ray

    if not ray.is_initialized():
        return False
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return ray.cluster_resources().get("GPU", 0) > 0 or len(alive) > 1


def _task_resources(settings: Any, jobs: int) -> dict[str, float]:
    """A scoring task's Ray resources: a trial's (``cpus_per_trial``; ``gpus_per_trial``, by
    default one GPU where the cluster has GPUs)."""
    from extune.search import cluster_plan

    plan = cluster_plan(cpus_per_trial=settings.cpus_per_trial,
                        gpus_per_trial=settings.gpus_per_trial, max_concurrent=None,
                        trials=jobs)
    return {"num_cpus": plan.cpus_per_trial, "num_gpus": plan.gpus_per_trial}


def _scoring_task(data: _TestData, job: _Job) -> tuple[dict[str, float], dict[str, Any],
                                                       dict[str, Any]]:
    """A Ray task: ``job`` scored on the GPU Ray gave it (else the CPU, with as many torch
    threads as its CPUs); returns the metrics, the per-image values and where it ran."""
    import os

    import ray
    import torch

    gpus = ray.get_gpu_ids()
    device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    metrics, per_image = _Scorer(data, device).run(job)
    place = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
             "gpu_ids": [str(g) for g in gpus], "device": device}
    return metrics, per_image, place


def _write_per_image(path: Path, per_image: dict[str, Any]) -> None:
    import numpy as np

    from extune.files import atomic_writer

    with atomic_writer(path) as f:
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in per_image.items()})


class _Scorer:
    """Scores checkpoints on the test split of the final runs' data, on ``device``."""

    def __init__(self, data: _TestData, device: str = "cpu") -> None:
        self.data, self.device = data, device

    def run(self, job: _Job) -> tuple[dict[str, float], dict[str, Any]]:
        if job.kind == "score":
            return self.score(job.run["checkpoint"], job.protocol.explainer, job.layer)
        return self.audit(job.run["checkpoint"], job.protocol.explainer, job.layer,
                          job.every_metric)

    def _model(self, checkpoint: str, explainer: str, layer: str | None) -> tuple[Any, Any]:
        from extune.train.checkpoint_eval import load_model

        with _local_folder(checkpoint) as folder:
            model, cfg = load_model(Path(folder) / "checkpoint.pt")
        cfg = cfg.with_overrides({"eval.explainer": explainer, "eval.layer": layer})
        return model.to(self.device).eval(), cfg

    def score(self, checkpoint: str, explainer: str, layer: str | None
              ) -> tuple[dict[str, float], dict[str, Any]]:
        """The explanation metrics (``test/...``) of one checkpoint under one protocol, and
        their per-image values (numpy)."""
        from extune.evaluate import evaluate_split
        from extune.train.methods import evaluation_explainer

        model, cfg = self._model(checkpoint, explainer, layer)
        per_image: dict[str, Any] = {}
        metrics = evaluate_split(
            model, self.data.test, mean=self.data.mean, std=self.data.std,
            num_classes=self.data.num_classes, cfg=cfg.eval,
            explainer=evaluation_explainer(cfg), prefix="test", full=False,
            metrics=["test/alignment"], per_image=per_image)
        return _explanation_metrics(metrics), {k: _numpy(v) for k, v in per_image.items()}

    def audit(self, checkpoint: str, explainer: str, layer: str | None, every_metric: bool
              ) -> tuple[dict[str, float], dict[str, Any]]:
        """The explanation audit (``test/...``) of one checkpoint under one protocol, on the
        explanation images of its test evaluation: every audit metric (``every_metric``: the
        suite's audit group), else the randomisation test only; and the per-image values."""
        import numpy as np

        from extune.evaluate import evaluate_split
        from extune.evaluate.audit import RANDOMISATION_THRESHOLD
        from extune.train.methods import evaluation_explainer

        model, cfg = self._model(checkpoint, explainer, layer)
        test, kw = self.data.test, {"mean": self.data.mean, "std": self.data.std}
        if every_metric:
            per_image: dict[str, Any] = {}
            metrics = evaluate_split(model, test, num_classes=self.data.num_classes,
                                     cfg=cfg.eval, explainer=evaluation_explainer(cfg),
                                     prefix="test", full=False, audit=True,
                                     per_image=per_image, **kw)
            found = _audit_metrics(metrics)
        else:
            per_image = randomisation_test(model, test, evaluation_explainer(cfg), cfg.eval, **kw)
            similarity = float(np.nanmean(per_image["test/randomisation_similarity"]))
            found = {"test/randomisation_similarity": similarity,
                     "test/randomisation_pass": float(similarity < RANDOMISATION_THRESHOLD)}
        return found, {k: _numpy(v) for k, v in per_image.items()}


def _numpy(value: Any) -> Any:
    """A per-image value as numpy (tensors leave their device)."""
    import numpy as np

    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def randomisation_test(model: Any, split: Any, explainer: Any, cfg: Any, *, mean: Any,
                       std: Any) -> dict[str, Any]:
    """The randomisation test alone (the audit's costly part left to the main protocol), on the
    explanation images of :func:`~extune.evaluate.evaluate_split` (``cfg.explain_samples``,
    the same subset and seed), for the predicted class.

    Returns:
        ``{"test/explain_index": int64 [n], "test/randomisation_similarity": float32 [n]}``
        (numpy).
    """
    from extune.evaluate.audit import randomisation_cascade
    from extune.evaluate.explanations import compute_saliency, explanation_subset

    index = explanation_subset(len(split.images), cfg.explain_samples, seed=0)
    images = split.images[index]
    saliency, target = compute_saliency(model, explainer, images, mean=mean, std=std,
                                        batch_size=cfg.batch_size)
    _, similarity = randomisation_cascade(model, explainer, images, saliency, target, mean=mean,
                                          std=std, seed=0, cascade=False,
                                          batch_size=cfg.batch_size)
    return {"test/explain_index": index.numpy(),
            "test/randomisation_similarity": similarity[-1].cpu().numpy()}


class _local_folder:
    """A checkpoint folder on this machine: the path itself, or a download of a URI."""

    def __init__(self, path: str) -> None:
        self.path, self._tmp = path, None

    def __enter__(self) -> str:
        if "://" not in self.path:
            return self.path
        from ray.tune import Checkpoint

        self._tmp = tempfile.TemporaryDirectory(prefix="extune-rescore-")
        return Checkpoint(self.path).to_directory(self._tmp.name)

    def __exit__(self, *exc: Any) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
